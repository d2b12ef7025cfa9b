package chaos

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/sluicemq/sluice/devices"
)

// probe is a well-behaved MQTT 5 client that does QoS 1 round trips (publish to its own topic,
// wait for the message to come back) every interval, and records their latency.
type probe struct {
	c    *devices.Client
	recv chan string
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex
	hist  *hdrhistogram.Histogram // microseconds
	fails []string                // round trips that failed or timed out
}

// startProbe connects the probe and starts its loop; stopProbe ends it.
func startProbe(t testing.TB, addr string, interval time.Duration) *probe {
	t.Helper()
	p := &probe{recv: make(chan string, 64), stop: make(chan struct{}), done: make(chan struct{}),
		hist: hdrhistogram.New(1, 60_000_000, 3)}
	p.c = mustDevice(t, addr, devices.ClientOptions{ClientID: "probe", CleanSession: true, OnMessage: func(m devices.Message) {
		select {
		case p.recv <- string(m.Payload):
		default:
		}
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.c.Subscribe(ctx, "probe/rt", 1); err != nil {
		t.Fatalf("probe subscribe: %v", err)
	}
	go p.loop(interval)
	t.Cleanup(p.halt)
	return p
}

func (p *probe) loop(interval time.Duration) {
	defer close(p.done)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		if err := p.roundTrip(strconv.Itoa(seq)); err != nil {
			p.mu.Lock()
			p.fails = append(p.fails, fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err))
			p.mu.Unlock()
			select {
			case <-p.c.Done(): // the connection is gone: nothing more to measure
				return
			default:
			}
		}
	}
}

func (p *probe) roundTrip(payload string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := p.c.Publish(ctx, devices.Message{Topic: "probe/rt", QoS: 1, Payload: []byte(payload)}); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	for {
		select {
		case got := <-p.recv:
			if got != payload {
				continue // a late echo of an earlier round trip
			}
			p.mu.Lock()
			_ = p.hist.RecordValue(time.Since(start).Microseconds())
			p.mu.Unlock()
			return nil
		case <-ctx.Done():
			return fmt.Errorf("no echo within 10s")
		}
	}
}

func (p *probe) halt() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// probeStats are the probe's figures.
type probeStats struct {
	n             int64
	p50, p99, max time.Duration
	fails         []string
}

func (p *probe) stats() probeStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	return probeStats{n: p.hist.TotalCount(), p50: us(p.hist.ValueAtQuantile(50)), p99: us(p.hist.ValueAtQuantile(99)),
		max: us(p.hist.Max()), fails: append([]string(nil), p.fails...)}
}

func (s probeStats) String() string {
	return fmt.Sprintf("probe QoS 1 round trips %d, p50 %v, p99 %v, max %v, failed %d", s.n,
		s.p50.Round(10*time.Microsecond), s.p99.Round(10*time.Microsecond), s.max.Round(10*time.Microsecond), len(s.fails))
}
