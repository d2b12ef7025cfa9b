package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/sluicemq/sluice/queue"
	"github.com/sluicemq/sluice/queue/queuetest"
	"github.com/sluicemq/sluice/wal"
)

func TestMain(m *testing.M) {
	if os.Getenv(killWorkerEnv) != "" {
		os.Exit(killWorker())
	}
	if os.Getenv(recoverChildEnv) != "" {
		os.Exit(recoverChildMain())
	}
	goleak.VerifyTestMain(m)
}

const qn = "jobs"

// env is an open Manager on a temp dir with a manual clock and one queue, qn.
type env struct {
	t     testing.TB
	dir   string
	clock *queuetest.Clock
	opts  queue.Options
	m     *queue.Manager
}

func newEnv(t testing.TB, cfg queue.Config) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), clock: queuetest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}
	e.opts = queue.Options{Clock: e.clock.Now, Queues: map[string]queue.Config{qn: cfg}}
	e.open()
	return e
}

func (e *env) open() {
	e.t.Helper()
	m, err := queue.Open(e.dir, e.opts)
	if err != nil {
		e.t.Fatalf("Open: %v", err)
	}
	e.m = m
	e.t.Cleanup(func() { _ = m.Close() })
}

func (e *env) reopen() {
	e.t.Helper()
	if err := e.m.Close(); err != nil {
		e.t.Fatalf("Close: %v", err)
	}
	e.open()
}

func msg(s string) queue.Message {
	return queue.Message{Topic: "devices/d1/telemetry", ClientID: "d1", QoS: 1, Payload: []byte(s)}
}

func (e *env) enqueue(payloads ...string) []string {
	e.t.Helper()
	msgs := make([]queue.Message, len(payloads))
	for i, p := range payloads {
		msgs[i] = msg(p)
	}
	ids, err := e.m.Enqueue(context.Background(), qn, msgs)
	if err != nil {
		e.t.Fatalf("Enqueue: %v", err)
	}
	return ids
}

// receive returns what Receive gets within a short wait (nothing ready → empty).
func (e *env) receive(max int, lease time.Duration) []queue.Delivery {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	ds, err := e.m.Receive(ctx, qn, max, lease)
	if err != nil {
		e.t.Fatalf("Receive: %v", err)
	}
	return ds
}

func payloads(ds []queue.Delivery) string {
	var s []string
	for _, d := range ds {
		s = append(s, string(d.Payload))
	}
	return strings.Join(s, ",")
}

func receipts(ds []queue.Delivery) []string {
	var r []string
	for _, d := range ds {
		r = append(r, d.Receipt)
	}
	return r
}

func (e *env) settle(op string, rs []string, wantErr error) {
	e.t.Helper()
	var res []error
	var err error
	switch op {
	case "ack":
		res, err = e.m.Ack(qn, rs)
	case "nack":
		res, err = e.m.Nack(qn, rs, 0)
	}
	if err != nil {
		e.t.Fatalf("%s: %v", op, err)
	}
	for i, r := range res {
		if !errors.Is(r, wantErr) && !(wantErr == nil && r == nil) {
			e.t.Fatalf("%s receipt %d: got %v, want %v", op, i, r, wantErr)
		}
	}
}

func (e *env) stats() queue.Stats {
	e.t.Helper()
	s, err := e.m.Stats(qn)
	if err != nil {
		e.t.Fatalf("Stats: %v", err)
	}
	return s
}

func TestEnqueueReceiveAck(t *testing.T) {
	e := newEnv(t, queue.Config{})
	props := queue.Properties{ContentType: "text/plain", CorrelationData: []byte{1, 2}, ResponseTopic: "r",
		UserProperties: []queue.UserProperty{{Key: "k", Value: "v"}}}
	pf, exp := byte(1), uint32(60)
	props.PayloadFormat, props.MessageExpiry = &pf, &exp
	in := queue.Message{Topic: "t/1", ClientID: "c", Username: "u", QoS: 2, Retain: true, Properties: props, Payload: []byte("hello")}
	ids, err := e.m.Enqueue(context.Background(), qn, []queue.Message{in, msg("b"), msg("c")})
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 3 || !(ids[0] < ids[1] && ids[1] < ids[2]) {
		t.Fatalf("ids not increasing: %v", ids)
	}
	ds := e.receive(2, 0)
	if payloads(ds) != "hello,b" {
		t.Fatalf("got %q, want FIFO hello,b", payloads(ds))
	}
	d := ds[0]
	if d.ID != ids[0] || d.Attempt != 1 || !d.EnqueuedAt.Equal(e.clock.Now()) {
		t.Fatalf("delivery %+v", d)
	}
	got := d.Message
	if got.Topic != in.Topic || got.ClientID != "c" || got.Username != "u" || got.QoS != 2 || !got.Retain ||
		got.Properties.ContentType != "text/plain" || !bytes.Equal(got.Properties.CorrelationData, []byte{1, 2}) ||
		*got.Properties.PayloadFormat != 1 || *got.Properties.MessageExpiry != 60 || got.Properties.UserProperties[0] != (queue.UserProperty{Key: "k", Value: "v"}) ||
		got.ReceivedAt.IsZero() {
		t.Fatalf("message not kept: %+v", got)
	}
	if s := e.stats(); s.Ready != 1 || s.Leased != 2 || s.Enqueued != 3 {
		t.Fatalf("stats %+v", s)
	}
	e.clock.Advance(5 * time.Second)
	if s := e.stats(); s.OldestAge != 5*time.Second || s.Bytes <= 3*5 {
		t.Fatalf("oldest age / bytes: %+v", s)
	}
	e.settle("ack", receipts(ds), nil)
	e.settle("ack", receipts(ds), queue.ErrStaleReceipt) // second ack: settled
	if s := e.stats(); s.Ready != 1 || s.Leased != 0 || s.Acked != 2 {
		t.Fatalf("stats after ack %+v", s)
	}
	e.reopen()
	ds = e.receive(10, 0)
	if payloads(ds) != "c" || ds[0].ID != ids[2] {
		t.Fatalf("after reopen got %q", payloads(ds))
	}
}

// Add is Enqueue without ids: the same records (each with its own id, in order), the same
// all-or-nothing refusal of a batch with a message over MaxMessageSize.
func TestAdd(t *testing.T) {
	e := newEnv(t, queue.Config{MaxMessageSize: 200})
	in := queue.Message{Topic: "t/1", ClientID: "c", Properties: queue.Properties{ContentType: "text/plain"}, Payload: []byte("a")}
	if err := e.m.Add(context.Background(), qn, []queue.Message{in, msg("b"), msg("c")}); err != nil {
		t.Fatal(err)
	}
	big := msg(strings.Repeat("x", 300))
	if err := e.m.Add(context.Background(), qn, []queue.Message{msg("d"), big}); !errors.Is(err, queue.ErrTooLarge) {
		t.Fatalf("batch with a message over the limit: %v", err)
	}
	ds := e.receive(10, 0)
	if payloads(ds) != "a,b,c" {
		t.Fatalf("got %q, want a,b,c (and nothing of the refused batch)", payloads(ds))
	}
	if ds[0].Message.Topic != "t/1" || ds[0].Message.Properties.ContentType != "text/plain" || ds[0].Message.ReceivedAt.IsZero() {
		t.Fatalf("message not kept: %+v", ds[0].Message)
	}
	if !(ds[0].ID < ds[1].ID && ds[1].ID < ds[2].ID) {
		t.Fatalf("ids not increasing: %s %s %s", ds[0].ID, ds[1].ID, ds[2].ID)
	}
	if s := e.stats(); s.Enqueued != 3 {
		t.Fatalf("stats %+v", s)
	}
}

// AddAsync returns before the records are durable and calls done once they are (then they can
// be received, in order); a batch the limits refuse is refused at once, done not called.
func TestAddAsync(t *testing.T) {
	e := newEnv(t, queue.Config{MaxMessages: 4})
	done := make(chan error, 2)
	for _, batch := range [][]queue.Message{{msg("a"), msg("b")}, {msg("c")}} {
		if err := e.m.AddAsync(qn, batch, func(err error) { done <- err }); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("done: %v", err)
		}
	}
	if err := e.m.AddAsync(qn, []queue.Message{msg("d"), msg("e")}, func(error) { t.Error("done called for a refused batch") }); !errors.Is(err, queue.ErrFull) {
		t.Fatalf("batch over the limit: %v, want ErrFull", err)
	}
	if err := e.m.AddAsync("nope", []queue.Message{msg("x")}, func(error) { t.Error("done called for an unknown queue") }); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("unknown queue: %v", err)
	}
	if got := payloads(e.receive(10, 0)); got != "a,b,c" {
		t.Fatalf("got %q, want a,b,c", got)
	}
	if s := e.stats(); s.Enqueued != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestReceiveLongPoll(t *testing.T) {
	e := newEnv(t, queue.Config{})
	done, cancel := context.WithCancel(context.Background())
	cancel()
	e.enqueue("now")
	if ds, err := e.m.Receive(done, qn, 1, 0); err != nil || payloads(ds) != "now" {
		t.Fatalf("poll with a done ctx: %q, %v; want the ready message", payloads(ds), err)
	}
	if ds, err := e.m.Receive(done, qn, 1, 0); err != nil || ds != nil {
		t.Fatalf("poll of an empty queue: %v, %v; want nil, nil", ds, err)
	}
	got := make(chan []queue.Delivery)
	go func() {
		ds, _ := e.m.Receive(context.Background(), qn, 1, 0)
		got <- ds
	}()
	e.enqueue("x")
	select {
	case ds := <-got:
		if payloads(ds) != "x" {
			t.Fatalf("got %q", payloads(ds))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("long poll not woken by enqueue")
	}
	// Close wakes a waiting Receive (or one that starts after it) with ErrClosed.
	errc := make(chan error)
	go func() {
		_, err := e.m.Receive(context.Background(), qn, 1, 0)
		errc <- err
	}()
	if err := e.m.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("Receive after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake Receive")
	}
	if err := e.m.Close(); !errors.Is(err, queue.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := e.m.Enqueue(context.Background(), qn, []queue.Message{msg("y")}); !errors.Is(err, queue.ErrClosed) {
		t.Fatalf("Enqueue after Close: %v", err)
	}
}

func TestLeaseExpiryAndStaleReceipt(t *testing.T) {
	e := newEnv(t, queue.Config{VisibilityTimeout: 10 * time.Second, Backoff: queue.Backoff{Initial: time.Second, Jitter: -1}})
	e.enqueue("a")
	first := e.receive(1, 0)
	if len(e.receive(1, 0)) != 0 {
		t.Fatal("leased message delivered twice")
	}
	e.clock.Advance(10 * time.Second) // lease ends; backoff 1s
	if len(e.receive(1, 0)) != 0 {
		t.Fatal("delivered before backoff")
	}
	e.clock.Advance(time.Second)
	second := e.receive(1, 0)
	if len(second) != 1 || second[0].Attempt != 2 || second[0].ID != first[0].ID {
		t.Fatalf("redelivery %+v", second)
	}
	e.settle("ack", receipts(first), queue.ErrStaleReceipt) // old receipt cannot ack the new delivery
	e.settle("ack", receipts(second), nil)
	// Extend keeps a lease alive past its first deadline.
	e.enqueue("b")
	d := e.receive(1, 5*time.Second)
	e.clock.Advance(4 * time.Second)
	if res, err := e.m.Extend(qn, receipts(d), 10*time.Second); err != nil || res[0] != nil {
		t.Fatalf("Extend: %v %v", res, err)
	}
	e.clock.Advance(8 * time.Second)
	if len(e.receive(1, 0)) != 0 {
		t.Fatal("extended lease expired early")
	}
	e.settle("ack", receipts(d), nil)
	if _, err := e.m.Extend(qn, receipts(d), 0); !errors.Is(err, queue.ErrInvalidLease) {
		t.Fatalf("Extend 0: %v", err)
	}
	if _, err := e.m.Receive(context.Background(), qn, 1, -time.Second); !errors.Is(err, queue.ErrInvalidLease) {
		t.Fatalf("Receive negative lease: %v", err)
	}
}

func TestNackDelayAndBackoffGrowth(t *testing.T) {
	e := newEnv(t, queue.Config{MaxAttempts: 10, Backoff: queue.Backoff{Initial: time.Second, Multiplier: 2, Max: 5 * time.Second, Jitter: -1}})
	e.enqueue("a")
	// Explicit delay.
	d := e.receive(1, 0)
	if res, err := e.m.Nack(qn, receipts(d), 3*time.Second); err != nil || res[0] != nil {
		t.Fatalf("Nack: %v %v", res, err)
	}
	e.clock.Advance(3*time.Second - 1)
	if len(e.receive(1, 0)) != 0 {
		t.Fatal("delivered before nack delay")
	}
	e.clock.Advance(1)
	d = e.receive(1, 0)
	if len(d) != 1 || d[0].Attempt != 2 {
		t.Fatalf("after delay: %+v", d)
	}
	// Backoff for attempts 2, 3, 4, 5: 2s, 4s, 5s (capped), 5s.
	for _, want := range []time.Duration{2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		e.settle("nack", receipts(d), nil)
		e.clock.Advance(want - 1)
		if len(e.receive(1, 0)) != 0 {
			t.Fatalf("attempt %d: delivered before backoff %v", d[0].Attempt, want)
		}
		e.clock.Advance(1)
		d = e.receive(1, 0)
		if len(d) != 1 {
			t.Fatalf("not delivered after backoff %v", want)
		}
	}
	if _, err := e.m.Nack(qn, receipts(d), -time.Second); !errors.Is(err, queue.ErrInvalidDelay) {
		t.Fatalf("negative delay: %v", err)
	}
	if s := e.stats(); s.Nacked != 5 {
		t.Fatalf("stats %+v", s)
	}
}

func TestBackoffJitterBounds(t *testing.T) {
	e := newEnv(t, queue.Config{Backoff: queue.Backoff{Initial: 10 * time.Second, Jitter: 0.5}})
	e.enqueue("a")
	d := e.receive(1, 0)
	e.settle("nack", receipts(d), nil)
	e.clock.Advance(5*time.Second - 1) // below 10s × (1 − 0.5)
	if len(e.receive(1, 0)) != 0 {
		t.Fatal("delivered before the smallest jittered backoff")
	}
	e.clock.Advance(10 * time.Second) // past 10s × (1 + 0.5)
	if len(e.receive(1, 0)) != 1 {
		t.Fatal("not delivered after the largest jittered backoff")
	}
}

func TestDeadLetterAndRedrive(t *testing.T) {
	e := newEnv(t, queue.Config{MaxAttempts: 2, VisibilityTimeout: time.Second, Backoff: queue.Backoff{Initial: time.Second, Jitter: -1}})
	ids := e.enqueue("a", "b", "c")
	for attempt := 1; attempt <= 2; attempt++ {
		d := e.receive(3, 0)
		if len(d) != 3 {
			t.Fatalf("attempt %d: got %d", attempt, len(d))
		}
		// a: nacked; b: lease expires; c: acked on the last attempt.
		slices.SortFunc(d, func(x, y queue.Delivery) int { return strings.Compare(string(x.Payload), string(y.Payload)) })
		e.settle("nack", receipts(d[:1]), nil)
		if attempt == 2 {
			e.settle("ack", receipts(d[2:]), nil)
		} else {
			e.settle("nack", receipts(d[2:]), nil)
		}
		e.clock.Advance(2 * time.Second)
	}
	e.stats() // runs due timers
	var dead []queue.DeadLetter
	waitFor(t, func() bool {
		var err error
		dead, err = e.m.PeekDead(qn, 10)
		return err == nil && len(dead) == 2
	})
	reasons := map[string]string{}
	for _, d := range dead {
		reasons[string(d.Payload)] = d.Reason
		if d.Attempts != 2 || d.DeadAt.IsZero() || d.EnqueuedAt.IsZero() {
			t.Fatalf("dead letter %+v", d)
		}
	}
	if !strings.Contains(reasons["a"], "nack") || !strings.Contains(reasons["b"], "lease") {
		t.Fatalf("reasons %v", reasons)
	}
	if s := e.stats(); s.Dead != 2 || s.DeadLettered != 2 || s.Ready+s.Leased+s.Delayed != 0 {
		t.Fatalf("stats %+v", s)
	}
	e.reopen()
	if dead, _ = e.m.PeekDead(qn, 10); len(dead) != 2 {
		t.Fatalf("dead letters after reopen: %d", len(dead))
	}
	// Redrive by id, then all.
	if n, err := e.m.Redrive(context.Background(), qn, []string{ids[1]}); err != nil || n != 1 {
		t.Fatalf("Redrive(b) = %d, %v", n, err)
	}
	d := e.receive(10, 0)
	if payloads(d) != "b" || d[0].ID != ids[1] || d[0].Attempt != 1 {
		t.Fatalf("redriven %+v", d)
	}
	e.settle("ack", receipts(d), nil)
	if n, err := e.m.Redrive(context.Background(), qn, nil); err != nil || n != 1 {
		t.Fatalf("Redrive(all) = %d, %v", n, err)
	}
	if s := e.stats(); s.Dead != 0 || s.Ready != 1 {
		t.Fatalf("stats after redrive %+v", s)
	}
	e.reopen()
	if s := e.stats(); s.Dead != 0 || s.Ready != 1 {
		t.Fatalf("stats after redrive and reopen %+v", s)
	}
}

func TestRedriveFull(t *testing.T) {
	e := newEnv(t, queue.Config{MaxAttempts: 1, MaxMessages: 2})
	e.enqueue("a", "b")
	e.settle("nack", receipts(e.receive(2, 0)), nil)
	e.enqueue("c")
	n, err := e.m.Redrive(context.Background(), qn, nil)
	if !errors.Is(err, queue.ErrFull) || n != 0 {
		t.Fatalf("Redrive into a full queue = %d, %v; want 0, ErrFull", n, err)
	}
	if s := e.stats(); s.Dead != 2 || s.Ready != 1 {
		t.Fatalf("stats %+v: dead letters must stay", s)
	}
}

func TestDeadLetterOff(t *testing.T) {
	off := false
	e := newEnv(t, queue.Config{MaxAttempts: 1, DeadLetter: &off})
	e.enqueue("a")
	e.settle("nack", receipts(e.receive(1, 0)), nil)
	if s := e.stats(); s.Dead != 0 || s.Dropped != 1 || s.Ready+s.Delayed != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestPurge(t *testing.T) {
	e := newEnv(t, queue.Config{})
	e.enqueue("a", "b", "c", "d")
	d := e.receive(1, 0)
	n, err := e.m.Purge(context.Background(), qn)
	if err != nil || n != 4 {
		t.Fatalf("Purge = %d, %v", n, err)
	}
	e.settle("ack", receipts(d), queue.ErrStaleReceipt)
	e.enqueue("e")
	e.reopen()
	if got := payloads(e.receive(10, 0)); got != "e" {
		t.Fatalf("after purge and reopen: %q", got)
	}
}

func TestLimits(t *testing.T) {
	tests := []struct {
		name     string
		cfg      queue.Config
		enqueue  []string
		wantErr  []bool
		wantLeft string
	}{
		{"reject/messages", queue.Config{MaxMessages: 2}, []string{"a", "b", "c"}, []bool{false, false, true}, "a,b"},
		{"reject/bytes", queue.Config{MaxBytes: 150}, []string{"a", "b", "c"}, []bool{false, false, true}, "a,b"},
		{"drop_oldest/messages", queue.Config{MaxMessages: 2, Overflow: queue.OverflowDropOldest}, []string{"a", "b", "c", "d"}, []bool{false, false, false, false}, "c,d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, tt.cfg)
			for i, p := range tt.enqueue {
				_, err := e.m.Enqueue(context.Background(), qn, []queue.Message{msg(p)})
				if tt.wantErr[i] != (err != nil) || (err != nil && !errors.Is(err, queue.ErrFull)) {
					t.Fatalf("enqueue %s: %v", p, err)
				}
			}
			if got := payloads(e.receive(10, 0)); got != tt.wantLeft {
				t.Fatalf("left %q, want %q", got, tt.wantLeft)
			}
		})
	}
	// A batch bigger than the limit is refused even with drop_oldest.
	e := newEnv(t, queue.Config{MaxMessages: 2, Overflow: queue.OverflowDropOldest})
	if _, err := e.m.Enqueue(context.Background(), qn, []queue.Message{msg("a"), msg("b"), msg("c")}); !errors.Is(err, queue.ErrFull) {
		t.Fatalf("oversized batch: %v", err)
	}
}

func TestMaxAge(t *testing.T) {
	for _, onExpire := range []string{queue.ExpireDeadLetter, queue.ExpireDrop} {
		t.Run("on_expire="+onExpire, func(t *testing.T) {
			e := newEnv(t, queue.Config{MaxAge: time.Minute, OnExpire: onExpire, Backoff: queue.Backoff{Initial: time.Second, Jitter: -1}})
			e.enqueue("old1", "old2")
			d := e.receive(1, 2*time.Minute) // old1 leased; expires when it is nacked
			e.clock.Advance(30 * time.Second)
			e.enqueue("young")
			e.clock.Advance(31 * time.Second)
			e.settle("nack", receipts(d), nil)
			got := e.receive(10, 0)
			if payloads(got) != "young" {
				t.Fatalf("got %q, want only young", payloads(got))
			}
			s := e.stats()
			if s.Expired != 2 {
				t.Fatalf("stats %+v", s)
			}
			if onExpire == queue.ExpireDeadLetter {
				waitFor(t, func() bool { dl, _ := e.m.PeekDead(qn, 10); return len(dl) == 2 })
				if dl, _ := e.m.PeekDead(qn, 10); !strings.Contains(dl[0].Reason, "expired") {
					t.Fatalf("reason %q", dl[0].Reason)
				}
			} else if s.Dead != 0 {
				t.Fatalf("dropped messages dead-lettered: %+v", s)
			}
		})
	}
}

func TestReceipts(t *testing.T) {
	e := newEnv(t, queue.Config{})
	if err := e.m.Declare("other", queue.Config{}); err != nil {
		t.Fatal(err)
	}
	e.enqueue("a")
	if _, err := e.m.Enqueue(context.Background(), "other", []queue.Message{msg("x")}); err != nil {
		t.Fatal(err)
	}
	od, err := e.m.Receive(context.Background(), "other", 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := e.receive(1, 0)
	good := d[0].Receipt
	flipped := []byte(good)
	flipped[10] ^= 1
	tests := []struct {
		name, receipt string
		want          error
	}{
		{"garbage", "not-a-receipt", queue.ErrInvalidReceipt},
		{"empty", "", queue.ErrInvalidReceipt},
		{"bit flip", string(flipped), queue.ErrInvalidReceipt},
		{"foreign queue", od[0].Receipt, queue.ErrInvalidReceipt},
		{"valid", good, nil},
		{"settled", good, queue.ErrStaleReceipt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := e.m.Ack(qn, []string{tt.receipt})
			if err != nil {
				t.Fatal(err)
			}
			if !errors.Is(res[0], tt.want) || (tt.want == nil) != (res[0] == nil) {
				t.Fatalf("got %v, want %v", res[0], tt.want)
			}
		})
	}
	// A receipt from before a restart is stale.
	e.enqueue("b")
	d = e.receive(1, 0)
	e.reopen()
	e.settle("ack", receipts(d), queue.ErrStaleReceipt)
	if _, err := e.m.Ack("nope", receipts(d)); !errors.Is(err, queue.ErrNotFound) {
		t.Fatalf("unknown queue: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, queue.Config{MaxMessageSize: 1000})
	for _, name := range []string{"", "..", ".", ".hidden", "a/b", `a\b`, "a b", "ü", strings.Repeat("x", 129), "../etc"} {
		if err := e.m.Declare(name, queue.Config{}); !errors.Is(err, queue.ErrInvalidName) {
			t.Errorf("Declare(%q): %v", name, err)
		}
	}
	for _, name := range []string{strings.Repeat("x", 128), "LOCK", "dead", "a.dlq", "A-b_c.9"} {
		if err := e.m.Declare(name, queue.Config{}); err != nil {
			t.Errorf("Declare(%q): %v", name, err)
		}
	}
	if err := e.m.Declare(strings.Repeat("x", 128), queue.Config{}); err != nil {
		t.Errorf("128-character name: %v", err)
	}
	for _, cfg := range []queue.Config{{Overflow: "spill"}, {Sync: "sometimes"}, {OnExpire: "keep"}, {MaxAttempts: -1}, {VisibilityTimeout: -time.Second}, {MaxBytes: -1}} {
		if err := e.m.Declare("bad", cfg); !errors.Is(err, queue.ErrInvalidConfig) {
			t.Errorf("Declare(%+v): %v", cfg, err)
		}
	}
	if _, err := e.m.Enqueue(context.Background(), "missing", []queue.Message{msg("a")}); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("unknown queue: %v", err)
	}
	big := queue.Message{Payload: make([]byte, 1000)}
	if _, err := e.m.Enqueue(context.Background(), qn, []queue.Message{msg("ok"), big}); !errors.Is(err, queue.ErrTooLarge) {
		t.Errorf("oversized: %v", err)
	}
	if s := e.stats(); s.Enqueued != 0 {
		t.Errorf("oversized batch partly stored: %+v", s)
	}
	if _, err := queue.Open(t.TempDir(), queue.Options{Queues: map[string]queue.Config{"a/b": {}}}); !errors.Is(err, queue.ErrInvalidName) {
		t.Errorf("Open with bad name: %v", err)
	}
}

func TestLocked(t *testing.T) {
	e := newEnv(t, queue.Config{})
	_, err := queue.Open(e.dir, queue.Options{})
	if !errors.Is(err, queue.ErrLocked) || !strings.Contains(err.Error(), e.dir) {
		t.Fatalf("second Open: %v", err)
	}
	e.reopen() // the lock is released by Close
}

func TestNotWritable(t *testing.T) {
	parent := t.TempDir()
	file := filepath.Join(parent, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.Open(filepath.Join(file, "data"), queue.Options{}); !errors.Is(err, queue.ErrNotWritable) {
		t.Fatalf("dir under a file: %v", err)
	}
	if os.Geteuid() != 0 { // root ignores permissions; the case above covers it
		ro := filepath.Join(parent, "ro")
		if err := os.Mkdir(ro, 0o500); err != nil {
			t.Fatal(err)
		}
		if _, err := queue.Open(ro, queue.Options{}); !errors.Is(err, queue.ErrNotWritable) {
			t.Fatalf("read-only dir: %v", err)
		}
	}
}

func TestCorruption(t *testing.T) {
	tests := []struct {
		name    string
		corrupt func(t *testing.T, qdir string)
		wantErr bool // else: recovery is safe and exact
	}{
		{"checkpoint bit flip", func(t *testing.T, qdir string) { flipByte(t, filepath.Join(qdir, "checkpoint"), 20) }, true},
		{"checkpoint crc flip", func(t *testing.T, qdir string) { flipByte(t, filepath.Join(qdir, "checkpoint"), -1) }, true},
		{"checkpoint truncated", func(t *testing.T, qdir string) {
			if err := os.Truncate(filepath.Join(qdir, "checkpoint"), 7); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"checkpoint missing, ack log complete", func(t *testing.T, qdir string) {
			if err := os.Remove(filepath.Join(qdir, "checkpoint")); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"checkpoint missing, ack log torn tail", func(t *testing.T, qdir string) {
			if err := os.Remove(filepath.Join(qdir, "checkpoint")); err != nil {
				t.Fatal(err)
			}
			segs, _ := filepath.Glob(filepath.Join(qdir, "acks", "0*"))
			last := segs[len(segs)-1]
			fi, err := os.Stat(last)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(last, fi.Size()-3); err != nil {
				t.Fatal(err)
			}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, queue.Config{MaxAttempts: 1})
			for i := 0; i < 20; i++ {
				e.enqueue(fmt.Sprint(i))
				e.settle("ack", receipts(e.receive(1, 0)), nil)
			}
			e.enqueue("dead")
			e.settle("nack", receipts(e.receive(1, 0)), nil)
			e.enqueue("kept")
			if err := e.m.Close(); err != nil {
				t.Fatal(err)
			}
			qdir := filepath.Join(e.dir, qn)
			tt.corrupt(t, qdir)
			after := snapshotDir(t, qdir)
			m, err := queue.Open(e.dir, e.opts)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				e.m = m
				t.Cleanup(func() { _ = m.Close() })
				// A lost ack-state record may bring back the message it settled ("dead":
				// its dead letter was written first); nothing acked earlier, nothing lost.
				if got := payloads(e.receive(10, 0)); got != "kept" && got != "dead,kept" {
					t.Fatalf("recovered %q, want kept", got)
				}
				if dl, _ := e.m.PeekDead(qn, 10); len(dl) != 1 {
					t.Fatalf("dead letters %d, want 1", len(dl))
				}
				return
			}
			var ce *queue.CorruptError
			if !errors.As(err, &ce) || !errors.Is(err, queue.ErrCorrupt) {
				if err == nil {
					_ = m.Close()
				}
				t.Fatalf("Open: %v, want *CorruptError", err)
			}
			if got := snapshotDir(t, qdir); !equalMaps(got, after) {
				t.Fatal("a failed Open changed the files")
			}
		})
	}
}

// fillAcks writes n ack-log records (extends of one leased message) so that the ack log spans
// several segments and a checkpoint truncates it.
func fillAcks(t *testing.T, e *env, n int) {
	t.Helper()
	e.enqueue("lease")
	d := e.receive(1, time.Hour)
	for i := 0; i < n; i++ {
		if _, err := e.m.Extend(qn, receipts(d), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += int64(len(b))
	}
	b[off%int64(len(b))] ^= 0x40
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		out[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestCorruptAckLogMiddle(t *testing.T) {
	e := newEnv(t, queue.Config{})
	e.enqueue("a", "b")
	fillAcks(t, e, 100)
	if err := e.m.Close(); err != nil {
		t.Fatal(err)
	}
	// Flip a byte early in the first ack segment: mid-log corruption, not a torn tail.
	segs, _ := filepath.Glob(filepath.Join(e.dir, qn, "acks", "0*"))
	if len(segs) == 0 {
		t.Fatal("no ack segments")
	}
	flipByte(t, segs[0], 40)
	_, err := queue.Open(e.dir, e.opts)
	if err != nil && !errors.Is(err, queue.ErrCorrupt) {
		t.Fatalf("Open: %v, want nil (repaired) or ErrCorrupt", err)
	}
	if err == nil {
		t.Fatal("mid-log ack corruption went unnoticed")
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	e := &env{t: t, dir: t.TempDir(), clock: queuetest.NewClock(time.Unix(1000, 0))}
	e.opts = queue.Options{Clock: e.clock.Now, Registerer: reg, Queues: map[string]queue.Config{qn: {}}}
	e.open()
	e.enqueue("a", "b")
	e.receive(1, 0)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name, queueLabel := mf.GetName(), ""
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "queue":
					queueLabel = l.GetValue()
				case "log": // per log of the queue
					name += "/" + l.GetValue()
				default:
					t.Fatalf("%s: unexpected label %v", mf.GetName(), l)
				}
			}
			if queueLabel != qn {
				t.Fatalf("%s: labels %v", mf.GetName(), m.GetLabel())
			}
			got[name] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	for name, want := range map[string]float64{"sluice_queue_ready": 1, "sluice_queue_leased": 1, "sluice_queue_enqueued_total": 2, "sluice_queue_dead": 0,
		"sluice_queue_committed_records_total/messages": 2} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	// One enqueue call of two messages is one group commit with one fsync (sync always).
	if c, f := got["sluice_queue_commits_total/messages"], got["sluice_queue_fsyncs_total/messages"]; c != 1 || f != 1 {
		t.Errorf("messages log: %v commits and %v fsyncs for one enqueue, want 1 and 1", c, f)
	}
	if got["sluice_queue_fsync_seconds_total/messages"] <= 0 {
		t.Errorf("fsync time not counted")
	}
	e.reopen() // unregisters and registers again
}

func TestQueuesAndDeclare(t *testing.T) {
	e := newEnv(t, queue.Config{})
	if err := e.m.Declare("b-queue", queue.Config{MaxAttempts: 3}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(e.m.Queues(), ","); got != "b-queue,jobs" {
		t.Fatalf("Queues = %s", got)
	}
	e.opts.Queues = nil // undeclared queues found on disk are opened with the defaults
	e.reopen()
	if got := strings.Join(e.m.Queues(), ","); got != "b-queue,jobs" {
		t.Fatalf("Queues after reopen = %s", got)
	}
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCheckpointAndReclaim acks enough messages one by one that the background loop writes a
// checkpoint, truncates the ack log and drops the message-log segments below the oldest live
// message; the state after a reopen is exact.
func TestCheckpointAndReclaim(t *testing.T) {
	e := newEnv(t, queue.Config{Sync: queue.SyncNone})
	logDir := filepath.Join(e.dir, qn, "log")
	payload := strings.Repeat("x", 1024)
	const n = 5000 // 5 MB of records: more than one 4 MiB segment
	for i := 0; i < n; i += 100 {
		ps := make([]string, 100)
		for k := range ps {
			ps[k] = payload
		}
		e.enqueue(ps...)
	}
	segsBefore, _ := os.ReadDir(logDir)
	if len(segsBefore) < 2 {
		t.Fatalf("want ≥ 2 log segments, have %d", len(segsBefore))
	}
	for i := 0; i < n; i++ {
		d := e.receive(1, 0)
		if len(d) != 1 {
			t.Fatalf("message %d not delivered", i)
		}
		e.settle("ack", receipts(d), nil)
	}
	e.enqueue("kept")
	waitFor(t, func() bool {
		segs, _ := os.ReadDir(logDir)
		_, err := os.Stat(filepath.Join(e.dir, qn, "checkpoint"))
		return err == nil && len(segs) < len(segsBefore)
	})
	e.reopen()
	if got := payloads(e.receive(10, 0)); got != "kept" {
		t.Fatalf("after reclaim and reopen: %q", got)
	}
}

// TestConcurrent runs producers and consumers that ack, nack, extend or abandon deliveries, with
// the real clock and short leases, until every message is acked: each exactly once (a stale
// receipt can never settle a later delivery), none lost.
func TestConcurrent(t *testing.T) {
	m, err := queue.Open(t.TempDir(), queue.Options{Queues: map[string]queue.Config{qn: {
		MaxAttempts: 1000, Backoff: queue.Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const producers, perProducer, consumers = 4, 300, 4
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	enqueued, acked := map[string]bool{}, map[string]int{}
	var wg sync.WaitGroup
	for p := 0; p < producers; p++ {
		wg.Go(func() {
			for i := 0; i < perProducer; i += 10 {
				ids, err := m.Enqueue(ctx, qn, batchOf(10))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, id := range ids {
					enqueued[id] = true
				}
				mu.Unlock()
			}
		})
	}
	for c := 0; c < consumers; c++ {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			for {
				mu.Lock()
				done := len(acked) == producers*perProducer
				mu.Unlock()
				if done || ctx.Err() != nil {
					return
				}
				rctx, rcancel := context.WithTimeout(ctx, 50*time.Millisecond)
				ds, err := m.Receive(rctx, qn, 1+rng.IntN(10), 20*time.Millisecond)
				rcancel()
				if err != nil {
					t.Error(err)
					return
				}
				for _, d := range ds {
					switch r := rng.IntN(10); {
					case r < 6:
						res, err := m.Ack(qn, []string{d.Receipt})
						if err != nil {
							t.Error(err)
							return
						}
						if res[0] == nil {
							mu.Lock()
							acked[d.ID]++
							mu.Unlock()
						} else if !errors.Is(res[0], queue.ErrStaleReceipt) {
							t.Errorf("ack: %v", res[0])
						}
					case r < 8:
						if _, err := m.Nack(qn, []string{d.Receipt}, 0); err != nil {
							t.Error(err)
						}
					case r < 9:
						if _, err := m.Extend(qn, []string{d.Receipt}, 10*time.Millisecond); err != nil {
							t.Error(err)
						}
					} // else: abandoned, the lease expires
				}
			}
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("not all messages acked in time: %d of %d", len(acked), producers*perProducer)
	}
	for id := range enqueued {
		if acked[id] != 1 {
			t.Errorf("message %s acked %d times", id, acked[id])
		}
	}
	s, err := m.Stats(qn)
	if err != nil {
		t.Fatal(err)
	}
	if s.Ready+s.Leased+s.Delayed+s.Dead != 0 || s.Acked != producers*perProducer || s.Bytes != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func batchOf(n int) []queue.Message {
	msgs := make([]queue.Message, n)
	for i := range msgs {
		msgs[i] = msg(fmt.Sprint(i))
	}
	return msgs
}

// TestLostLogTail simulates a power loss under sync "none": the message log loses its tail while the
// ack log still has events for the lost indexes. Those events must not settle the new messages
// that reuse the indexes, neither now nor after another restart.
func TestLostLogTail(t *testing.T) {
	e := newEnv(t, queue.Config{Sync: queue.SyncNone})
	e.enqueue("1", "2", "3", "4", "5")
	big := strings.Repeat("x", 100_000)
	e.enqueue(big, big, big, big, big)
	ds := e.receive(10, 0)
	if len(ds) != 10 {
		t.Fatalf("got %d", len(ds))
	}
	e.settle("ack", receipts(ds[5:]), nil) // acks of the records that will be lost
	// A crash image: copy the files while the Manager is open (no checkpoint was written yet).
	crash := t.TempDir()
	if err := os.CopyFS(crash, os.DirFS(e.dir)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(crash, qn, "checkpoint")); err == nil {
		t.Fatal("a checkpoint was written; the test needs the ack log to carry the events")
	}
	os.Remove(filepath.Join(crash, ".lock"))
	segs, _ := filepath.Glob(filepath.Join(crash, qn, "log", "0*"))
	last := segs[len(segs)-1]
	fi, err := os.Stat(last)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(last, fi.Size()-450_000); err != nil { // inside record 6
		t.Fatal(err)
	}
	c := &env{t: t, dir: crash, clock: e.clock, opts: e.opts}
	c.open()
	c.enqueue("n6", "n7")
	c.reopen()
	c.clock.Advance(time.Hour) // past the leases of 1..5
	got := payloads(c.receive(10, 0))
	if got != "1,2,3,4,5,n6,n7" && got != "n6,n7,1,2,3,4,5" {
		t.Fatalf("after lost tail: %q, want 1..5 and n6, n7", got)
	}
}

// TestStatsRates: rates are the counters' growth per second over the last window, on the queue's clock.
func TestStatsRates(t *testing.T) {
	e := newEnv(t, queue.Config{})
	for range 4 {
		e.enqueue("a", "b", "c", "d", "e")
	}
	e.clock.Advance(10 * time.Second)
	st, err := e.m.Stats(qn)
	if err != nil {
		t.Fatal(err)
	}
	if st.EnqueueRate != 2 || st.AckRate != 0 {
		t.Fatalf("after 20 enqueued in 10s: enqueue rate %v, ack rate %v; want 2 and 0", st.EnqueueRate, st.AckRate)
	}
	e.clock.Advance(10 * time.Second)
	if st, err = e.m.Stats(qn); err != nil {
		t.Fatal(err)
	}
	if st.EnqueueRate != 0 {
		t.Fatalf("10s without enqueues: enqueue rate %v, want 0", st.EnqueueRate)
	}
}

// TestReceiveDamagedRecord: a message record damaged on disk after Open fails the receive that
// reaches it with the log's corruption error naming its index, also when it is read in a run of
// consecutive records; a receive that does not reach it returns its records intact.
func TestReceiveDamagedRecord(t *testing.T) {
	e := newEnv(t, queue.Config{})
	e.enqueue("m-one", "m-two", "m-three", "m-four")
	seg := filepath.Join(e.dir, qn, "log", "00000000000000000001")
	data, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(data, []byte("m-three"))
	if at < 0 {
		t.Fatal("record m-three not found in the segment")
	}
	f, err := os.OpenFile(seg, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("X"), int64(at)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := payloads(e.receive(2, time.Minute)); got != "m-one,m-two" {
		t.Fatalf("receive before the damage: %q", got)
	}
	ds, err := e.m.Receive(context.Background(), qn, 10, time.Minute)
	var cerr *wal.CorruptionError
	if !errors.As(err, &cerr) || cerr.Index != 3 || ds != nil {
		t.Fatalf("receive over the damaged record: %d deliveries, %v; want a corruption error at index 3", len(ds), err)
	}
}
