package queue

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/queue/queuetest"
	"github.com/sluicemq/sluice/wal"
	"github.com/sluicemq/sluice/wal/waltest"
)

// faultEnv is a Manager with queues "q" (its logs behind fault-injecting filesystems) and
// "other" (no faults), on a manual clock.
type faultEnv struct {
	t            *testing.T
	m            *Manager
	clock        *queuetest.Clock
	reg          *prometheus.Registry
	msgFS, ackFS *waltest.FaultFS
	acked        map[string]string // id → payload of every message whose Enqueue succeeded
	ctx          context.Context
	maybe        map[string]bool // payloads whose Enqueue failed but which may have been written
	logs         waltest.LogBuffer
}

// logLine returns the first JSON line in logs that contains every part, or "".
func logLine(logs *waltest.LogBuffer, parts ...string) string {
	for ln := range strings.Lines(logs.String()) {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(ln, p) }) {
			return ln
		}
	}
	return ""
}

func newFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	e := &faultEnv{
		t: t, clock: queuetest.NewClock(time.Unix(1e9, 0)), reg: prometheus.NewRegistry(),
		msgFS: &waltest.FaultFS{}, ackFS: &waltest.FaultFS{},
		acked: map[string]string{}, maybe: map[string]bool{}, ctx: context.Background(),
	}
	opts := Options{Clock: e.clock.Now, Registerer: e.reg, Logger: zerolog.New(&e.logs),
		Queues: map[string]Config{"q": {}, "other": {}}}
	opts.walFS = func(p string) wal.FS {
		switch {
		case strings.HasSuffix(p, filepath.Join("q", logDir)):
			return e.msgFS
		case strings.HasSuffix(p, filepath.Join("q", acksDir)):
			return e.ackFS
		}
		return nil
	}
	m, err := Open(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
	t.Cleanup(func() { _ = m.Close() })
	return e
}

// enqueue enqueues one message with payload p to queue q and records it when it succeeds.
func (e *faultEnv) enqueue(q, p string) error {
	ids, err := e.m.Enqueue(e.ctx, q, []Message{{Topic: "t", Payload: []byte(p)}})
	if err == nil && q == "q" {
		e.acked[ids[0]] = p
	}
	return err
}

// mustFail checks that an enqueue to "q" fails with an error wrapping wal.ErrFailed and the
// injected cause, not ErrFull.
func (e *faultEnv) mustFail(p string) {
	e.t.Helper()
	err := e.enqueue("q", p)
	if !errors.Is(err, wal.ErrFailed) || !errors.Is(err, waltest.ErrInjected) || errors.Is(err, ErrFull) {
		e.t.Fatalf("Enqueue(%s) on a failed queue: %v; want an error wrapping wal.ErrFailed and the cause", p, err)
	}
	e.maybe[p] = true
}

// downWithFailingReopen stores "a" in "q", then makes its writes fail ("x" fails) and any reopen
// fail too (wal.Open's directory fsync).
func (e *faultEnv) downWithFailingReopen() {
	e.t.Helper()
	if err := e.enqueue("q", "a"); err != nil {
		e.t.Fatal(err)
	}
	e.msgFS.FailWrites(waltest.ErrInjected)
	e.msgFS.FailDirSyncs(waltest.ErrInjected)
	e.mustFail("x")
}

// drain receives everything that is ready in "q" and checks it against what was acknowledged.
func (e *faultEnv) drain() []Delivery {
	e.t.Helper()
	done, cancel := context.WithCancel(e.ctx)
	cancel() // a non-blocking poll
	var all []Delivery
	for {
		ds, err := e.m.Receive(done, "q", 100, time.Minute)
		if err != nil {
			e.t.Fatalf("Receive: %v", err)
		}
		if len(ds) == 0 {
			break
		}
		all = append(all, ds...)
	}
	seen := map[string]bool{}
	for _, d := range all {
		p := string(d.Payload)
		if seen[d.ID] {
			e.t.Errorf("message %s (%s) received twice in one drain", d.ID, p)
		}
		seen[d.ID] = true
		if want, ok := e.acked[d.ID]; ok {
			if want != p {
				e.t.Errorf("message %s: payload %q, want %q", d.ID, p, want)
			}
		} else if !e.maybe[p] {
			e.t.Errorf("message %s (%q) was never enqueued", d.ID, p)
		}
	}
	for id, p := range e.acked {
		if !seen[id] {
			e.t.Errorf("acknowledged message %s (%q) lost", id, p)
		}
	}
	return all
}

func (e *faultEnv) recoveries() float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sluice_queue_recoveries_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			if mt.GetLabel()[0].GetValue() == "q" {
				return mt.GetCounter().GetValue()
			}
		}
	}
	e.t.Fatal("no sluice_queue_recoveries_total{queue=\"q\"}")
	return 0
}

// TestRecoverAfterFailure fails a write or an fsync of queue q's message log or ack log: enqueues
// fail with the cause (other queues work), and once the fault is gone the queue is reopened by the
// first operation after the retry interval: every acknowledged message is there and receivable,
// receipts from before are stale, leases from before become redeliveries.
func TestRecoverAfterFailure(t *testing.T) {
	tests := []struct {
		name string
		// fault turns the fault on (err) or off (nil) and then makes q's write hit it.
		fault func(e *faultEnv, err error)
		acks  bool // the ack log fails: an Ack, not the enqueue, hits it
	}{
		{name: "message log write", fault: func(e *faultEnv, err error) { e.msgFS.FailWrites(err) }},
		{name: "message log fsync", fault: func(e *faultEnv, err error) { e.msgFS.FailSyncs(err) }},
		{name: "ack log write", fault: func(e *faultEnv, err error) { e.ackFS.FailWrites(err) }, acks: true},
		{name: "ack log fsync", fault: func(e *faultEnv, err error) { e.ackFS.FailSyncs(err) }, acks: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newFaultEnv(t)
			for _, p := range []string{"a", "b", "c", "d"} {
				if err := e.enqueue("q", p); err != nil {
					t.Fatal(err)
				}
			}
			held, err := e.m.Receive(e.ctx, "q", 2, time.Minute) // a, b: leases held over the failure
			if err != nil || len(held) != 2 {
				t.Fatalf("Receive: %d, %v", len(held), err)
			}
			tt.fault(e, waltest.ErrInjected)
			if tt.acks {
				res, err := e.m.Ack("q", []string{held[0].Receipt})
				if !errors.Is(err, wal.ErrFailed) || !errors.Is(err, waltest.ErrInjected) {
					t.Fatalf("Ack on a failed ack log: %v, %v", res, err)
				}
				if res[0] == nil {
					delete(e.acked, held[0].ID) // validated, not durable: may come back
					e.maybe[string(held[0].Payload)] = true
				}
			}
			if tt.acks { // enqueues do not write the ack log; settles do
				if err := e.enqueue("q", "x"); err != nil {
					t.Fatalf("Enqueue with a failed ack log: %v", err)
				}
				e.mustFailSettle(held[1].Receipt)
			} else {
				e.mustFail("x")
			}
			if err := e.enqueue("other", "o"); err != nil {
				t.Fatalf("another queue fails with q: %v", err)
			}
			tt.fault(e, nil)
			if tt.acks { // the retry interval has not passed: no reopen yet
				e.mustFailSettle(held[1].Receipt)
			} else {
				e.mustFail("y")
			}
			e.clock.Advance(recoverEvery)
			if err := e.enqueue("q", "z"); err != nil {
				t.Fatalf("Enqueue after the fault is gone and the retry interval passed: %v", err)
			}
			if got := e.recoveries(); got != 1 {
				t.Errorf("sluice_queue_recoveries_total = %v, want 1", got)
			}
			for _, want := range [][]string{
				{`"level":"error"`, `"component":"queue"`, `"queue":"q"`, `"error":"wal: failed: `, "injected fault", "queue refuses writes until it is reopened"},
				{`"level":"info"`, `"component":"queue"`, `"queue":"q"`, `"cause":"wal: failed: `, `"recoveries":1`, "queue reopened after a failed write"},
			} {
				if logLine(&e.logs, want...) == "" {
					t.Errorf("no log line with %q", want)
				}
			}
			if st := e.mustStats(); st.Enqueued < 5 {
				t.Errorf("Stats.Enqueued after the reopen = %d, want the count to continue (≥ 5)", st.Enqueued)
			}
			res, err := e.m.Ack("q", []string{held[1].Receipt})
			if err != nil || !errors.Is(res[0], ErrStaleReceipt) {
				t.Errorf("Ack with a receipt from before the reopen: %v, %v; want ErrStaleReceipt", res, err)
			}
			e.clock.Advance(2 * time.Minute) // past the leases taken before the failure
			all := e.drain()
			var rs []string
			for _, d := range all {
				if p := string(d.Payload); (p == "a" || p == "b") && d.Attempt < 2 {
					t.Errorf("%s: attempt %d, want a redelivery (≥ 2)", p, d.Attempt)
				}
				rs = append(rs, d.Receipt)
			}
			res, err = e.m.Ack("q", rs)
			if err != nil {
				t.Fatal(err)
			}
			for k, r := range res {
				if r != nil {
					t.Errorf("Ack %s after the reopen: %v", all[k].Payload, r)
				}
			}
			if st := e.mustStats(); st.Ready+st.Leased+st.Delayed != 0 {
				t.Errorf("after acking everything: %+v", st)
			}
		})
	}
}

// mustFailSettle checks that an Extend on "q" fails with an error wrapping wal.ErrFailed.
func (e *faultEnv) mustFailSettle(receipt string) {
	e.t.Helper()
	if _, err := e.m.Extend("q", []string{receipt}, time.Minute); !errors.Is(err, wal.ErrFailed) || !errors.Is(err, waltest.ErrInjected) {
		e.t.Fatalf("Extend on a failed ack log: %v; want an error wrapping wal.ErrFailed and the cause", err)
	}
}

func (e *faultEnv) mustStats() Stats {
	e.t.Helper()
	st, err := e.m.Stats("q")
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// TestRecoverRetryInterval: while the disk keeps failing, the queue is reopened at most once per
// retry interval, and every enqueue in between fails.
func TestRecoverRetryInterval(t *testing.T) {
	e := newFaultEnv(t)
	if err := e.enqueue("q", "a"); err != nil {
		t.Fatal(err)
	}
	e.msgFS.FailWrites(waltest.ErrInjected)
	for round := range 3 {
		for k := range 5 {
			e.mustFail(fmt.Sprintf("x%d.%d", round, k))
		}
		if got := e.recoveries(); got != float64(round) {
			t.Fatalf("round %d: %v recoveries, want %d", round, got, round)
		}
		e.clock.Advance(recoverEvery / 2)
		e.mustFail(fmt.Sprintf("half%d", round))
		e.clock.Advance(recoverEvery / 2)
	}
	e.msgFS.FailWrites(nil)
	if err := e.enqueue("q", "b"); err != nil {
		t.Fatalf("after the fault: %v", err)
	}
	e.drain()
}

// TestRecoverReopenFails: when the reopen itself fails (here wal.Open's directory fsync), the
// queue's operations fail with an error wrapping the write error and the reopen's, not ErrClosed;
// the reopen is tried again once per retry interval, and succeeds once the fault is gone.
func TestRecoverReopenFails(t *testing.T) {
	e := newFaultEnv(t)
	e.downWithFailingReopen()
	tries := func() int { _, _, n := e.msgFS.Counts(); return n }
	for round := range 2 {
		e.clock.Advance(recoverEvery)
		before := tries()
		e.mustFail(fmt.Sprintf("y%d", round)) // the reopen fails
		if tries() == before || e.recoveries() != 0 {
			t.Fatalf("round %d: want a reopen tried and failed (%d directory fsyncs, %v recoveries)", round, tries()-before, e.recoveries())
		}
		before = tries()
		e.mustFail(fmt.Sprintf("z%d", round))
		_, rerr := e.m.Receive(e.ctx, "q", 1, 0)
		_, serr := e.m.Stats("q")
		for _, err := range []error{rerr, serr} {
			if !errors.Is(err, waltest.ErrInjected) || errors.Is(err, ErrClosed) {
				t.Errorf("round %d: an operation on a queue whose reopen failed: %v", round, err)
			}
		}
		if tries() != before {
			t.Fatalf("round %d: reopen tried again before the retry interval", round)
		}
	}
	e.msgFS.FailWrites(nil)
	e.msgFS.FailDirSyncs(nil)
	e.clock.Advance(recoverEvery)
	if err := e.enqueue("q", "b"); err != nil {
		t.Fatalf("after the fault: %v", err)
	}
	if got := e.recoveries(); got != 1 {
		t.Errorf("%v recoveries, want 1", got)
	}
	e.drain()
}

// TestCloseWhileDown closes a Manager whose queue waits for its next reopen try: Close returns,
// nothing leaks (goleak), and the data opens again.
func TestCloseWhileDown(t *testing.T) {
	e := newFaultEnv(t)
	e.downWithFailingReopen()
	e.clock.Advance(recoverEvery)
	e.mustFail("y")
	_ = e.m.Close() // reports the failure
	if err := e.m.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	if _, err := e.m.Enqueue(e.ctx, "q", []Message{{Payload: []byte("z")}}); !errors.Is(err, ErrClosed) {
		t.Errorf("Enqueue after Close: %v", err)
	}
}

// TestRecoverConcurrent reopens a queue while producers, a long poll and settles run on it
// (run with -race): they succeed or fail with an error, never panic or see ErrClosed; the long
// poll continues on the reopened queue; nothing acknowledged is lost.
func TestRecoverConcurrent(t *testing.T) {
	e := newFaultEnv(t)
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()

	poll := make(chan []Delivery, 1)
	pollErr := make(chan error, 1)
	go func() { // long poll on the empty queue: woken by the reopen, it must keep waiting
		ds, err := e.m.Receive(ctx, "q", 1, time.Minute)
		pollErr <- err
		poll <- ds
	}()

	waitFor(t, func() bool { // the long poll waits on the queue that is about to be reopened
		q := e.queue("q")
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.waiters > 0
	})

	const producers, perProducer = 4, 50
	var (
		mu    sync.Mutex
		acked = map[string]string{}
		wg    sync.WaitGroup
		bad   = make(chan error, producers*perProducer)
	)
	e.msgFS.FailWrites(waltest.ErrInjected)
	for w := range producers {
		wg.Go(func() {
			for k := range perProducer {
				p := fmt.Sprintf("w%d.%d", w, k)
				ids, err := e.m.Enqueue(ctx, "q", []Message{{Topic: "t", Payload: []byte(p)}})
				switch {
				case err == nil:
					mu.Lock()
					acked[ids[0]] = p
					mu.Unlock()
				case errors.Is(err, ErrClosed) || errors.Is(err, errReopening) || errors.Is(err, ErrFull):
					bad <- fmt.Errorf("Enqueue(%s): %w", p, err)
				}
				if w == 0 && k == perProducer/2 {
					e.msgFS.FailWrites(nil)
				}
				if w == 0 {
					e.clock.Advance(recoverEvery / 4)
				}
				if _, err := e.m.Stats("q"); err != nil && (errors.Is(err, ErrClosed) || errors.Is(err, errReopening)) {
					bad <- fmt.Errorf("Stats: %w", err)
				}
			}
		})
	}
	wg.Wait()
	close(bad)
	for err := range bad {
		t.Error(err)
	}
	if e.recoveries() < 1 {
		t.Fatal("no recovery")
	}
	if err := e.enqueue("q", "last"); err != nil {
		t.Fatalf("Enqueue after the fault: %v", err)
	}
	if err := <-pollErr; err != nil {
		t.Fatalf("long poll across the reopen: %v", err)
	}
	ds := <-poll
	if len(ds) != 1 {
		t.Fatalf("long poll across the reopen got %d messages", len(ds))
	}
	mu.Lock()
	maps.Copy(e.acked, acked)
	mu.Unlock()
	// The long poll's message may be from before the reopen (its lease was then lost) or after:
	// past its lease, drain receives it again with everything else.
	e.clock.Advance(2 * time.Minute)
	e.drain()
}

func (e *faultEnv) queue(name string) *queue {
	e.m.mu.RLock()
	defer e.m.mu.RUnlock()
	return e.m.queues[name]
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkReopenAfterFailure measures how long a queue with a backlog of 256-byte messages is
// down for its reopen after a failed write: one op is one failed write, then the enqueue that
// reopens the queue and succeeds.
func BenchmarkReopenAfterFailure(b *testing.B) {
	for _, backlog := range []int{1000, 100000} {
		b.Run(fmt.Sprintf("backlog=%d", backlog), func(b *testing.B) {
			clock := queuetest.NewClock(time.Unix(1e9, 0))
			fsys := &waltest.FaultFS{}
			opts := Options{Clock: clock.Now, Queues: map[string]Config{"q": {}}}
			opts.walFS = func(p string) wal.FS {
				if strings.HasSuffix(p, filepath.Join("q", logDir)) {
					return fsys
				}
				return nil
			}
			m, err := Open(b.TempDir(), opts)
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			ctx := context.Background()
			msgs := make([]Message, 1000)
			for k := range msgs {
				msgs[k] = Message{Topic: "t", Payload: make([]byte, 256)}
			}
			for n := 0; n < backlog; n += len(msgs) {
				if _, err := m.Enqueue(ctx, "q", msgs); err != nil {
					b.Fatal(err)
				}
			}
			one := msgs[:1]
			b.ReportAllocs()
			for b.Loop() {
				fsys.FailWrites(waltest.ErrInjected)
				if _, err := m.Enqueue(ctx, "q", one); err == nil {
					b.Fatal("enqueue did not fail")
				}
				fsys.FailWrites(nil)
				clock.Advance(recoverEvery)
				if _, err := m.Enqueue(ctx, "q", one); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
