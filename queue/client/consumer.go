package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Handler processes one message. Returning nil acks it; returning an error nacks it, and it is
// delivered again after the Consumer's backoff. The context is cancelled when the consumer gives
// up on the message (its Grace after shutdown ran out); it is not cancelled merely because Run's
// context ended.
type Handler func(ctx context.Context, m Message) error

// Consumer receives messages of one queue in batches and runs Handler on a pool of workers.
// It acks on success, nacks with backoff on error, extends the leases of messages whose handler
// is still running, and on ctx end stops receiving, lets running handlers finish, acks them,
// and returns. Delivery is at-least-once: a handler may see a message again (same ID) after a
// crash, a lost ack or an expired lease.
type Consumer struct {
	Client  *Client
	Queue   string
	Handler Handler

	Workers   int           // concurrent handlers; 0 → 4
	BatchSize int           // messages per receive, at most; 0 → 2 × Workers (≤ 1000)
	Lease     time.Duration // lease asked for each message, renewed while its handler runs; 0 → 30s
	Wait      time.Duration // long-poll time of a receive; 0 → 20s
	// Backoff returns the nack delay of a failed message from its attempt number (1 for the first);
	// nil → 1s × 2^(attempt−1), capped at 5 minutes.
	Backoff func(attempt int) time.Duration
	// Grace bounds how long running handlers may go on after ctx ends; 0 → no bound.
	Grace time.Duration
	// AckBatch is the largest number of receipts acked in one call; 0 → 100. Acks are sent as soon
	// as the previous ack call returns, so under load they batch themselves.
	AckBatch int
	Logger   zerolog.Logger
}

// ErrConsumerConfig is wrapped by Run's error for an unusable Consumer.
var ErrConsumerConfig = errors.New("client: bad consumer configuration")

func defaultBackoff(attempt int) time.Duration {
	d := time.Second
	for i := 1; i < attempt && d < 5*time.Minute; i++ {
		d *= 2
	}
	return min(d, 5*time.Minute)
}

// inflight tracks the receipts whose handlers run, for lease extension.
type inflight struct {
	mu       sync.Mutex
	receipts map[string]time.Time // receipt → lease end we asked for
}

// Run consumes until ctx ends, then drains as described on Consumer. It returns nil after a
// graceful stop, or the error that made it stop (a bad configuration, an authorization error,
// an unknown queue).
func (c *Consumer) Run(ctx context.Context) error {
	if c.Client == nil || c.Queue == "" || c.Handler == nil {
		return fmt.Errorf("%w: Client, Queue and Handler are required", ErrConsumerConfig)
	}
	workers := c.Workers
	if workers <= 0 {
		workers = 4
	}
	batch := c.BatchSize
	if batch <= 0 {
		batch = 2 * workers
	}
	batch = min(batch, MaxReceive)
	lease := c.Lease
	if lease <= 0 {
		lease = 30 * time.Second
	}
	wait := c.Wait
	if wait <= 0 || wait > MaxWait {
		wait = MaxWait
	}
	backoff := c.Backoff
	if backoff == nil {
		backoff = defaultBackoff
	}
	ackBatch := c.AckBatch
	if ackBatch <= 0 {
		ackBatch = 100
	}
	log := c.Logger.With().Str("component", "consumer").Str("queue", c.Queue).Logger()

	// Handlers and acks outlive ctx: they get handlerCtx, cancelled only when Grace runs out.
	handlerCtx, cancelHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHandlers()
	if c.Grace > 0 {
		var mu sync.Mutex
		var grace *time.Timer
		stop := context.AfterFunc(ctx, func() {
			mu.Lock()
			grace = time.AfterFunc(c.Grace, cancelHandlers)
			mu.Unlock()
		})
		defer func() {
			stop()
			mu.Lock()
			if grace != nil {
				grace.Stop()
			}
			mu.Unlock()
		}()
	}

	fl := &inflight{receipts: make(map[string]time.Time)}
	jobs := make(chan Message)
	acks := make(chan string, ackBatch*4)
	slots := make(chan struct{}, workers) // a token per idle worker

	var fatal error
	var fatalOnce sync.Once
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	fail := func(err error) {
		fatalOnce.Do(func() { fatal = err; stopRun() })
	}

	// Workers.
	var workersWG sync.WaitGroup
	for range workers {
		slots <- struct{}{}
		workersWG.Add(1)
		go func() {
			defer workersWG.Done()
			for m := range jobs {
				err := c.safeHandle(handlerCtx, m)
				fl.mu.Lock()
				delete(fl.receipts, m.Receipt)
				fl.mu.Unlock()
				if err == nil {
					acks <- m.Receipt
				} else {
					nctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
					if _, nerr := c.Client.Nack(nctx, c.Queue, []string{m.Receipt}, backoff(m.Attempt)); nerr != nil {
						log.Warn().Err(nerr).Str("id", m.ID).Msg("nack failed; the message comes back when its lease ends")
					}
					cancel()
				}
				slots <- struct{}{}
			}
		}()
	}

	// Acker: sends what has accumulated, one call at a time.
	var ackerWG sync.WaitGroup
	ackerWG.Add(1)
	go func() {
		defer ackerWG.Done()
		buf := make([]string, 0, ackBatch)
		for r := range acks {
			buf = append(buf[:0], r)
		fill:
			for len(buf) < ackBatch {
				select {
				case r, ok := <-acks:
					if !ok {
						break fill
					}
					buf = append(buf, r)
				default:
					break fill
				}
			}
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			errs, err := c.Client.Ack(actx, c.Queue, buf)
			cancel()
			if err != nil {
				log.Warn().Err(err).Int("count", len(buf)).Msg("ack failed; the messages come back when their leases end")
				continue
			}
			for i, e := range errs {
				if e != nil {
					log.Debug().Err(e).Str("receipt", buf[i]).Msg("ack refused")
				}
			}
		}
	}()

	// Extender: renews the leases of running handlers when half of the lease is left.
	extendDone := make(chan struct{})
	var extWG sync.WaitGroup
	extWG.Add(1)
	go func() {
		defer extWG.Done()
		t := time.NewTicker(max(lease/10, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-extendDone:
				return
			case now := <-t.C:
				var due []string
				fl.mu.Lock()
				for r, end := range fl.receipts {
					if end.Sub(now) < lease/2 {
						due = append(due, r)
						fl.receipts[r] = now.Add(lease)
					}
				}
				fl.mu.Unlock()
				for len(due) > 0 {
					n := min(len(due), MaxBatch)
					ectx, cancel := context.WithTimeout(handlerCtx, lease/2)
					_, err := c.Client.Extend(ectx, c.Queue, due[:n], lease)
					cancel()
					if err != nil {
						log.Warn().Err(err).Int("count", n).Msg("extend failed")
					}
					due = due[n:]
				}
			}
		}
	}()

	// Receiver: asks for as many messages as there are idle workers (up to batch).
	for runCtx.Err() == nil {
		select {
		case <-slots:
		case <-runCtx.Done():
			continue
		}
		n := 1
	more:
		for n < batch {
			select {
			case <-slots:
				n++
			default:
				break more
			}
		}
		asked := time.Now() // the server's leases start after this: count from here
		msgs, err := c.Client.Receive(runCtx, c.Queue, ReceiveOptions{Max: n, Wait: wait, Lease: lease})
		if err != nil && runCtx.Err() == nil {
			var apiErr *Error
			if errors.As(err, &apiErr) && apiErr.Status/100 == 4 && apiErr.Status != 429 {
				fail(fmt.Errorf("client: consumer of %q: %w", c.Queue, err))
			} else {
				log.Warn().Err(err).Msg("receive failed; retrying")
				select {
				case <-runCtx.Done():
				case <-time.After(time.Second):
				}
			}
		}
		fl.mu.Lock()
		for _, m := range msgs {
			fl.receipts[m.Receipt] = asked.Add(lease)
		}
		fl.mu.Unlock()
		for _, m := range msgs {
			jobs <- m // a slot is held for it, so a worker is free
		}
		for range n - len(msgs) {
			slots <- struct{}{}
		}
	}

	close(jobs)
	workersWG.Wait()
	close(extendDone)
	extWG.Wait()
	close(acks)
	ackerWG.Wait()
	return fatal
}

// safeHandle runs the handler, turning a panic into an error (the message is nacked).
func (c *Consumer) safeHandle(ctx context.Context, m Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler panicked: %v", p)
		}
	}()
	return c.Handler(ctx, m)
}

// Producer sends messages to one queue.
type Producer struct {
	Client *Client
	Queue  string
}

// Send enqueues msgs, in calls of at most MaxBatch messages, and returns their ids in order.
// On error the ids of the calls that succeeded are returned with it: those messages are stored.
func (p *Producer) Send(ctx context.Context, msgs []NewMessage) ([]string, error) {
	ids := make([]string, 0, len(msgs))
	for len(msgs) > 0 {
		n := min(len(msgs), MaxBatch)
		got, err := p.Client.Send(ctx, p.Queue, msgs[:n])
		if err != nil {
			return ids, err
		}
		ids = append(ids, got...)
		msgs = msgs[n:]
	}
	return ids, nil
}
