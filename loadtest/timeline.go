package loadtest

import (
	"context"
	"sync"
	"time"
)

// timeline samples the run's counters for the report's throughput chart and reports progress.
type timeline struct {
	r         *run
	connected func() int64
	cancel    context.CancelFunc
	done      chan struct{}

	mu      sync.Mutex
	phase   string
	samples []Sample
}

func (r *run) startTimeline(connected func() int64) *timeline {
	ctx, cancel := context.WithCancel(context.Background())
	tl := &timeline{r: r, connected: connected, cancel: cancel, done: make(chan struct{}), phase: "run"}
	tl.samples = append(tl.samples, Sample{T: time.Since(r.start).Seconds(), Sent: r.sent.Load(), Received: r.received.Load(), Connected: connected()})
	go tl.loop(ctx)
	return tl
}

func (tl *timeline) setPhase(p string) {
	tl.mu.Lock()
	tl.phase = p
	tl.mu.Unlock()
}

func (tl *timeline) loop(ctx context.Context) {
	defer close(tl.done)
	onTicks(ctx, tl.r.opts.SampleEvery, tl.sample)
}

// onTicks calls f every interval until ctx ends.
func onTicks(ctx context.Context, interval time.Duration, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

func (tl *timeline) sample() {
	r := tl.r
	now := time.Now()
	s := Sample{
		T: now.Sub(r.start).Seconds(), Sent: r.sent.Load(), Received: r.received.Load(),
		Errors: r.pubErrs.Load(), Connected: tl.connected(),
	}
	tl.mu.Lock()
	tl.samples = append(tl.samples, s)
	phase := tl.phase
	tl.mu.Unlock()
	if r.opts.Progress != nil {
		r.opts.Progress(Progress{
			Phase: phase, Elapsed: now.Sub(r.start), Total: time.Duration(r.sc.Duration),
			Sent: s.Sent, Received: s.Received, Errors: s.Errors, Connected: s.Connected,
		})
	}
}

// stop ends sampling, takes a last sample and returns them all.
func (tl *timeline) stop() []Sample {
	tl.cancel()
	<-tl.done
	tl.sample()
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.samples
}
