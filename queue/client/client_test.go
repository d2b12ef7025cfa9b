package client_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sluicemq/sluice/queue"
	"github.com/sluicemq/sluice/queue/client"
	"github.com/sluicemq/sluice/queue/httpapi"
	"github.com/sluicemq/sluice/queue/httpapi/httpapitest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server runs the real queue API over real queues on 127.0.0.1.
func server(t testing.TB, queues map[string]queue.Config, keys ...httpapi.Key) (*client.Client, *queue.Manager) {
	t.Helper()
	m, err := queue.Open(t.TempDir(), queue.Options{Queues: queues})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close queues: %v", err)
		}
	})
	_, srv := httpapitest.Serve(t, m, httpapi.Options{Keys: keys})
	return &client.Client{BaseURL: srv.URL, HTTPClient: srv.Client()}, m
}

func fastRetry(maxAttempts int) queue.Config {
	return queue.Config{
		VisibilityTimeout: 30 * time.Second,
		MaxAttempts:       maxAttempts,
		Backoff:           queue.Backoff{Initial: 5 * time.Millisecond, Multiplier: 1, Max: 5 * time.Millisecond},
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestClientCalls(t *testing.T) {
	c, _ := server(t, map[string]queue.Config{"jobs": fastRetry(2)})
	ctx := ctxT(t)
	pf := byte(1)
	ids, err := c.Send(ctx, "jobs", []client.NewMessage{
		{Topic: "a/b", Payload: []byte("one"), Properties: client.Properties{ContentType: "text/plain", PayloadFormat: &pf,
			UserProperties: []client.UserProperty{{Key: "k", Value: "v"}}}},
		{Payload: []byte{0, 1, 2}},
	})
	if err != nil || len(ids) != 2 {
		t.Fatalf("Send: %v %v", ids, err)
	}
	st, err := c.Stats(ctx, "jobs")
	if err != nil || st.Ready != 2 || st.Name != "jobs" {
		t.Fatalf("Stats: %+v %v", st, err)
	}
	all, err := c.Queues(ctx)
	if err != nil || len(all) != 1 || all[0].Name != "jobs" {
		t.Fatalf("Queues: %+v %v", all, err)
	}
	msgs, err := c.Receive(ctx, "jobs", client.ReceiveOptions{Max: 10, Lease: time.Minute})
	if err != nil || len(msgs) != 2 {
		t.Fatalf("Receive: %d %v", len(msgs), err)
	}
	m := msgs[0]
	if m.ID != ids[0] || m.Topic != "a/b" || string(m.Payload) != "one" || m.Attempt != 1 ||
		m.Properties.ContentType != "text/plain" || m.Properties.PayloadFormat == nil || len(m.Properties.UserProperties) != 1 {
		t.Errorf("message %+v", m)
	}
	if string(msgs[1].Payload) != "\x00\x01\x02" {
		t.Errorf("binary payload %q", msgs[1].Payload)
	}
	errs, err := c.Extend(ctx, "jobs", []string{m.Receipt}, time.Minute)
	if err != nil || errs[0] != nil {
		t.Fatalf("Extend: %v %v", errs, err)
	}
	errs, err = c.Ack(ctx, "jobs", []string{m.Receipt, "garbage"})
	if err != nil || errs[0] != nil || !errors.Is(errs[1], client.ErrInvalidReceipt) {
		t.Fatalf("Ack: %v %v", errs, err)
	}
	// All stale: 409 still answers per receipt.
	errs, err = c.Ack(ctx, "jobs", []string{m.Receipt})
	if err != nil || !errors.Is(errs[0], client.ErrStaleReceipt) {
		t.Fatalf("second Ack: %v %v", errs, err)
	}
	errs, err = c.Nack(ctx, "jobs", []string{msgs[1].Receipt}, time.Millisecond)
	if err != nil || errs[0] != nil {
		t.Fatalf("Nack: %v %v", errs, err)
	}
	again, err := c.Receive(ctx, "jobs", client.ReceiveOptions{Max: 1, Wait: 10 * time.Second})
	if err != nil || len(again) != 1 || again[0].ID != msgs[1].ID || again[0].Attempt != 2 {
		t.Fatalf("redelivery after nack: %+v %v", again, err)
	}
	// Second failure with MaxAttempts 2: dead letter.
	if _, err := c.Nack(ctx, "jobs", []string{again[0].Receipt}, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	var dead []client.DeadLetter
	for deadline := time.Now().Add(10 * time.Second); len(dead) == 0 && time.Now().Before(deadline); {
		if dead, err = c.Dead(ctx, "jobs", 10); err != nil {
			t.Fatal(err)
		}
	}
	if len(dead) != 1 || dead[0].ID != msgs[1].ID || dead[0].Attempts != 2 {
		t.Fatalf("Dead: %+v", dead)
	}
	n, err := c.Redrive(ctx, "jobs", nil)
	if err != nil || n != 1 {
		t.Fatalf("Redrive: %d %v", n, err)
	}
	back, err := c.Receive(ctx, "jobs", client.ReceiveOptions{Max: 1, Wait: 10 * time.Second})
	if err != nil || len(back) != 1 || back[0].ID != msgs[1].ID {
		t.Fatalf("after redrive: %+v %v", back, err)
	}
	if _, err := c.Send(ctx, "jobs", []client.NewMessage{{Payload: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	n, err = c.Purge(ctx, "jobs")
	if err != nil || n < 1 {
		t.Fatalf("Purge: %d %v", n, err)
	}
	if _, err := c.Stats(ctx, "nope"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("Stats of an unknown queue: %v", err)
	}
}

func TestLeaseExpiry(t *testing.T) {
	c, _ := server(t, map[string]queue.Config{"jobs": fastRetry(5)})
	ctx := ctxT(t)
	if _, err := c.Send(ctx, "jobs", []client.NewMessage{{Payload: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	first, err := c.Receive(ctx, "jobs", client.ReceiveOptions{Lease: 50 * time.Millisecond})
	if err != nil || len(first) != 1 {
		t.Fatalf("%v %v", first, err)
	}
	// Not acked: after the lease (and backoff) it comes back with attempt 2.
	second, err := c.Receive(ctx, "jobs", client.ReceiveOptions{Wait: 10 * time.Second, Lease: time.Minute})
	if err != nil || len(second) != 1 || second[0].ID != first[0].ID || second[0].Attempt != 2 {
		t.Fatalf("after lease expiry: %+v %v", second, err)
	}
	errs, err := c.Ack(ctx, "jobs", []string{first[0].Receipt})
	if err != nil || !errors.Is(errs[0], client.ErrStaleReceipt) {
		t.Fatalf("ack with the expired receipt: %v %v", errs, err)
	}
}

func TestAuth(t *testing.T) {
	c, _ := server(t, map[string]queue.Config{"jobs": {}},
		httpapi.Key{Name: "k", SHA256: httpapi.HashToken("s3cret"), Queues: map[string]httpapi.Rights{"jobs": httpapi.Consume}})
	ctx := ctxT(t)
	if _, err := c.Stats(ctx, "jobs"); !errors.Is(err, client.ErrUnauthorized) {
		t.Fatalf("no key: %v", err)
	}
	c.APIKey = "s3cret"
	if _, err := c.Stats(ctx, "jobs"); err != nil {
		t.Fatalf("with key: %v", err)
	}
	if _, err := c.Send(ctx, "jobs", []client.NewMessage{{}}); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("consume key sending: %v", err)
	}
}

func TestProducerSplitsBatches(t *testing.T) {
	c, m := server(t, map[string]queue.Config{"jobs": {}})
	msgs := make([]client.NewMessage, 2500)
	for i := range msgs {
		msgs[i].Payload = fmt.Appendf(nil, "%d", i)
	}
	ids, err := (&client.Producer{Client: c, Queue: "jobs"}).Send(ctxT(t), msgs)
	if err != nil || len(ids) != 2500 {
		t.Fatalf("%d ids, %v", len(ids), err)
	}
	if st, _ := m.Stats("jobs"); st.Ready != 2500 {
		t.Fatalf("ready %d", st.Ready)
	}
}

func TestConsumerAcksRetriesAndDeadLetters(t *testing.T) {
	c, m := server(t, map[string]queue.Config{"jobs": fastRetry(3)})
	ctx := ctxT(t)
	const n = 300
	msgs := make([]client.NewMessage, n)
	for i := range msgs {
		msgs[i].Payload = fmt.Appendf(nil, "%d", i)
	}
	if _, err := (&client.Producer{Client: c, Queue: "jobs"}).Send(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	done := map[string]bool{}
	attempts := map[string]int{}
	runCtx, stop := context.WithCancel(ctx)
	cons := &client.Consumer{Client: c, Queue: "jobs", Workers: 8, BatchSize: 50, Lease: 5 * time.Second,
		Backoff: func(int) time.Duration { return time.Millisecond },
		Handler: func(ctx context.Context, m client.Message) error {
			mu.Lock()
			defer mu.Unlock()
			attempts[string(m.Payload)] = max(attempts[string(m.Payload)], m.Attempt)
			var i int
			fmt.Sscan(string(m.Payload), &i)
			switch {
			case i%10 == 0:
				return errors.New("poison") // always fails: dead-lettered after 3 attempts
			case i%3 == 0 && m.Attempt == 1:
				return errors.New("transient") // succeeds on retry
			case i == 7 && m.Attempt == 1:
				panic("handler bug") // a panic is a nack
			}
			done[string(m.Payload)] = true
			return nil
		}}
	runErr := make(chan error, 1)
	go func() { runErr <- cons.Run(runCtx) }()
	const poison = n / 10
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := m.Stats("jobs")
		if err != nil {
			t.Fatal(err)
		}
		if st.Acked == n-poison && st.Dead == poison {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, want %d acked and %d dead", st, n-poison, poison)
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(done) != n-poison {
		t.Errorf("%d messages handled, want %d", len(done), n-poison)
	}
	if attempts["3"] != 2 || attempts["7"] != 2 || attempts["10"] != 3 || attempts["1"] != 1 {
		t.Errorf("attempts: 3→%d 7→%d 10→%d 1→%d, want 2 2 3 1", attempts["3"], attempts["7"], attempts["10"], attempts["1"])
	}
}

func TestConsumerExtendsLeaseAndStopsGracefully(t *testing.T) {
	c, m := server(t, map[string]queue.Config{"jobs": fastRetry(5)})
	ctx := ctxT(t)
	if _, err := c.Send(ctx, "jobs", []client.NewMessage{{Payload: []byte("slow")}}); err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	runCtx, stop := context.WithCancel(ctx)
	cons := &client.Consumer{Client: c, Queue: "jobs", Workers: 2, Lease: time.Second, Wait: time.Second,
		Handler: func(ctx context.Context, m client.Message) error {
			if calls.Add(1) == 1 {
				close(started)
			}
			<-release
			return nil
		}}
	runErr := make(chan error, 1)
	go func() { runErr <- cons.Run(runCtx) }()
	<-started
	// While the handler runs for several lease lengths, the lease is extended: the message is never
	// delivered again, and stays leased.
	for range 30 {
		st, err := m.Stats("jobs")
		if err != nil {
			t.Fatal(err)
		}
		if st.Leased != 1 || st.Ready != 0 {
			t.Fatalf("while handling: %+v", st)
		}
		time.Sleep(100 * time.Millisecond) // let leases expire if they were not extended
	}
	// Stop: Run must wait for the running handler, then ack it.
	stop()
	select {
	case err := <-runErr:
		t.Fatalf("Run returned (%v) while a handler was running", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
	st, err := m.Stats("jobs")
	if err != nil {
		t.Fatal(err)
	}
	if st.Acked != 1 || calls.Load() != 1 {
		t.Fatalf("after graceful stop: %+v, %d handler calls; want 1 acked, 1 call", st, calls.Load())
	}
}

func TestConsumerStopsOnUnknownQueue(t *testing.T) {
	c, _ := server(t, map[string]queue.Config{"jobs": {}})
	cons := &client.Consumer{Client: c, Queue: "nope", Handler: func(context.Context, client.Message) error { return nil }}
	if err := cons.Run(ctxT(t)); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("Run on an unknown queue: %v", err)
	}
}

// BenchmarkHTTPConsume measures consuming with ack over HTTP on loopback (client and server in one
// process, sync "always"): each op is one receive of a batch and one ack of it; msgs/s is the figure.
func BenchmarkHTTPConsume(b *testing.B) {
	for _, batch := range []int{100} {
		for _, consumers := range []int{1, 4} {
			b.Run(fmt.Sprintf("batch=%d/consumers=%d", batch, consumers), func(b *testing.B) {
				c, m := server(b, map[string]queue.Config{"jobs": {}})
				c.HTTPClient.Transport.(*http.Transport).MaxIdleConnsPerHost = 16 // the default 2 would reconnect
				payload := make([]byte, 256)
				stock := 0
				refill := func(n int) {
					msgs := make([]queue.Message, 1000)
					for i := range msgs {
						msgs[i].Payload = payload
					}
					for ; n > 0; n -= len(msgs) {
						if _, err := m.Enqueue(context.Background(), "jobs", msgs); err != nil {
							b.Fatal(err)
						}
						stock += len(msgs)
					}
				}
				ctx := context.Background()
				total := 0
				var errMu sync.Mutex
				var firstErr error
				for b.Loop() {
					if stock < batch*consumers {
						b.StopTimer()
						refill(200_000)
						b.StartTimer()
					}
					var wg sync.WaitGroup
					for range consumers {
						wg.Go(func() {
							msgs, err := c.Receive(ctx, "jobs", client.ReceiveOptions{Max: batch, Lease: time.Minute})
							if err == nil {
								rs := make([]string, len(msgs))
								for i, m := range msgs {
									rs[i] = m.Receipt
								}
								_, err = c.Ack(ctx, "jobs", rs)
							}
							if err != nil || len(msgs) != batch {
								errMu.Lock()
								firstErr = cmp.Or(firstErr, err, fmt.Errorf("received %d of %d", len(msgs), batch))
								errMu.Unlock()
							}
						})
					}
					wg.Wait()
					if firstErr != nil {
						b.Fatal(firstErr)
					}
					stock -= batch * consumers
					total += batch * consumers
				}
				b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}
