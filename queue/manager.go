package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/wal"
)

// Manager owns the named queues under one data directory. All methods are safe for concurrent use.
type Manager struct {
	dir      string
	defaults Config
	log      zerolog.Logger
	clock    func() time.Time
	epoch    uint32
	lock     *os.File
	metrics  *collector
	walFS    func(string) wal.FS

	mu         sync.RWMutex
	queues     map[string]*queue
	recoveries map[string]uint64 // successful reopens after a failed write, per queue
	closed     bool
	reopens    sync.WaitGroup // reopens in progress; Close waits for them
}

// Open opens the data directory dir (creating it if needed), takes its lock file (ErrLocked if
// another Manager, in this process or another, holds it), recovers every queue found on disk and
// creates the queues declared in opts.Queues. Queues found on disk but not declared take
// opts.Defaults. A damaged checkpoint or log is reported as a *CorruptError; nothing is changed on
// disk in that case.
func Open(dir string, opts Options) (*Manager, error) {
	defaults := opts.Defaults.withDefaults(packageDefaults())
	if err := defaults.validate(); err != nil {
		return nil, fmt.Errorf("defaults: %w", err)
	}
	for name, c := range opts.Queues {
		if err := ValidName(name); err != nil {
			return nil, err
		}
		if err := c.validate(); err != nil {
			return nil, fmt.Errorf("queue %q: %w", name, err)
		}
	}
	m := &Manager{
		dir:        dir,
		defaults:   defaults,
		log:        opts.Logger.With().Str("component", "queue").Logger(),
		clock:      opts.Clock,
		epoch:      rand.Uint32(),
		queues:     make(map[string]*queue),
		recoveries: make(map[string]uint64),
		walFS:      opts.walFS,
	}
	if m.clock == nil {
		m.clock = time.Now
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNotWritable, dir, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	m.lock = lock
	ents, err := os.ReadDir(dir)
	if err != nil {
		m.closeAll()
		return nil, fmt.Errorf("read data directory: %w", err)
	}
	names := map[string]Config{}
	for _, de := range ents {
		name := de.Name()
		if !de.IsDir() || ValidName(name) != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, name, logDir)); err != nil {
			continue // not a queue
		}
		names[name] = opts.Queues[name]
	}
	for name, cfg := range opts.Queues {
		names[name] = cfg
	}
	// Recover the queues in parallel: recovery is a sequential scan per queue.
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, runtime.GOMAXPROCS(0))
	)
	for name, cfg := range names {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			q, err := openQueue(m, name, cfg.withDefaults(defaults))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			m.queues[name] = q
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		m.closeAll()
		return nil, errors.Join(errs...)
	}
	if opts.Registerer != nil {
		m.metrics = newCollector(m)
		if err := opts.Registerer.Register(m.metrics); err != nil {
			m.closeAll()
			return nil, fmt.Errorf("queue: register metrics: %w", err)
		}
		m.metrics.reg = opts.Registerer
	}
	return m, nil
}

// closeAll closes the queues and releases the lock (used by a failed Open and by Close).
func (m *Manager) closeAll() error {
	var errs []error
	for _, q := range m.queues {
		errs = append(errs, q.close())
	}
	if m.lock != nil {
		errs = append(errs, unlockDir(m.lock))
	}
	return errors.Join(errs...)
}

// Close stops every queue (waking long polls, which return ErrClosed), writes final checkpoints
// and closes the logs and the lock file. Later calls return ErrClosed.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	m.closed = true
	m.mu.Unlock()
	m.reopens.Wait() // a reopen that ends now closes what it opened
	if m.metrics != nil {
		m.metrics.reg.Unregister(m.metrics)
	}
	return m.closeAll()
}

// Declare creates the queue name with cfg (zero fields take Options.Defaults), or updates the
// settings of an existing one. A new Sync policy takes effect when the queue is next opened.
func (m *Manager) Declare(name string, cfg Config) error {
	if err := ValidName(name); err != nil {
		return err
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("queue %q: %w", name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	full := cfg.withDefaults(m.defaults)
	if q, ok := m.queues[name]; ok {
		q.mu.Lock()
		full.Sync = q.cfg.Sync
		q.cfg = full
		q.mu.Unlock()
		return nil
	}
	q, err := openQueue(m, name, full)
	if err != nil {
		return err
	}
	m.queues[name] = q
	return nil
}

// Queues returns the names of the queues, sorted.
func (m *Manager) Queues() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	names := make([]string, 0, len(m.queues))
	for n := range m.queues {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// get returns the queue and registers an operation on it; call q.exit() when done. A queue whose
// write failed is reopened here first when its retry time has come (see reopen); while another
// caller reopens it, get waits.
func (m *Manager) get(name string) (*queue, error) {
	for {
		m.mu.RLock()
		if m.closed {
			m.mu.RUnlock()
			return nil, ErrClosed
		}
		q, ok := m.queues[name]
		m.mu.RUnlock()
		if !ok {
			return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
		}
		if q.down.Load() && q.recoveryDue(m.clock().UnixNano()) {
			if err := m.reopen(name, q); err != nil {
				return nil, err
			}
			continue
		}
		err := q.enter()
		if errors.Is(err, errReopening) {
			q.recMu.Lock() // held by the reopen: wait for it
			q.recMu.Unlock()
			continue
		}
		if err != nil {
			return nil, err
		}
		return q, nil
	}
}

// reopen replaces queue old, one of whose logs failed a write (wal.ErrFailed), by the queue
// reopened from disk: it closes old (waiting for its operations in flight and waking its long
// polls, which retry on the new queue), reopens the logs (wal.Open repairs a torn tail) and
// rebuilds the index as Open does. Leases of old are lost (their messages are delivered again)
// and its receipts are stale: the new queue has another epoch. On failure old stays in place,
// closed, and its operations return the error until the next try, recoverEvery later. It returns
// nil when another caller replaced old meanwhile, or when no try is due any more.
func (m *Manager) reopen(name string, old *queue) error {
	old.recMu.Lock()
	defer old.recMu.Unlock()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	if m.queues[name] != old {
		m.mu.Unlock()
		return nil
	}
	m.reopens.Add(1)
	m.mu.Unlock()
	defer m.reopens.Done()

	t0 := time.Now() // for the log: how long the queue was closed
	if !old.recoveryDue(m.clock().UnixNano()) {
		return nil // another caller tried and failed meanwhile
	}
	old.mu.Lock()
	cause := old.failCause // the write error that started it
	old.reopening = true
	cfg := old.cfg
	old.mu.Unlock()
	if err := old.close(); err != nil {
		old.log.Warn().Err(err).Msg("closing the failed queue reported errors")
	}
	old.mu.Lock()
	st := old.st // final: close waited for the operations and the goroutine
	old.mu.Unlock()
	q, err := openQueue(m, name, cfg)
	if err != nil {
		err = fmt.Errorf("queue %q: reopen after a failed write (%w): %w", name, cause, err)
		old.log.Error().Err(err).Dur("retry_in", recoverEvery).Msg("reopen failed")
		old.mu.Lock()
		old.broken = err
		old.nextTry = m.clock().UnixNano() + int64(recoverEvery)
		old.reopening = false
		old.mu.Unlock()
		return err
	}
	q.epoch = old.epoch + 1 // receipts of old are stale; q is not shared yet
	q.mu.Lock()
	q.st = st // counters continue
	q.mu.Unlock()

	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		_ = q.close()
		return ErrClosed
	}
	old.mu.Lock()
	cfg = old.cfg // a Declare may have changed it meanwhile
	old.mu.Unlock()
	q.mu.Lock()
	cfg.Sync = q.cfg.Sync
	q.cfg = cfg
	q.mu.Unlock()
	m.queues[name] = q
	m.recoveries[name]++
	n := m.recoveries[name]
	m.mu.Unlock()
	q.log.Info().AnErr("cause", cause).Uint64("recoveries", n).Dur("took", time.Since(t0)).
		Msg("queue reopened after a failed write")
	return nil
}

// Enqueue appends msgs to queue q and returns their ids, in order, once they are durable under
// the queue's sync policy. The batch is all or nothing: ErrTooLarge if one message exceeds
// MaxMessageSize, ErrFull if the limits refuse it (reject policy, or drop_oldest when dropping
// cannot make room), ErrNotFound for an unknown queue. If ctx ends before the write starts,
// nothing is written and ctx.Err() is returned; once started, the write is waited for.
func (m *Manager) Enqueue(ctx context.Context, q string, msgs []Message) ([]string, error) {
	return m.enqueue(ctx, q, msgs, true)
}

// Add is Enqueue for producers that have no use for the message ids (the bridge): it does not
// make them. Everything else is the same.
func (m *Manager) Add(ctx context.Context, q string, msgs []Message) error {
	_, err := m.enqueue(ctx, q, msgs, false)
	return err
}

func (m *Manager) enqueue(ctx context.Context, q string, msgs []Message, wantIDs bool) ([]string, error) {
	qu, err := m.get(q)
	if err != nil {
		return nil, err
	}
	defer qu.exit()
	if len(msgs) == 0 {
		return []string{}, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var ids []string
	if wantIDs {
		ids = make([]string, len(msgs))
	}
	e, enq, err := m.encode(qu, msgs, ids)
	if err != nil {
		return nil, err
	}
	err = qu.enqueue(ctx, e.recs, enq, nil)
	e.release()
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// AddAsync is Add without the wait: it returns once msgs are on their way to the queue's log, or
// with the error that refused them all (the errors of Enqueue), and then calls done once with
// what Add would have returned. done runs on the queue's log writer: it must be quick and must
// not call into the Manager. A batch that makes a drop_oldest queue drop messages waits for that
// record before it returns.
func (m *Manager) AddAsync(q string, msgs []Message, done func(error)) error {
	qu, err := m.get(q)
	if err != nil {
		return err
	}
	if len(msgs) == 0 {
		qu.exit()
		done(nil)
		return nil
	}
	e, enq, err := m.encode(qu, msgs, nil)
	if err == nil {
		err = qu.enqueue(context.Background(), e.recs, enq, func(err error) {
			qu.exit()
			done(err)
		})
		e.release()
	}
	if err != nil {
		qu.exit()
		return err
	}
	return nil
}

// encoded is what encode makes: the records of a batch back to back in one buffer, and each
// record's slice of it. The log copies records when they are appended, so it goes back to
// encPool (release) as soon as the append has been submitted.
type encoded struct {
	buf  []byte
	recs [][]byte
}

var encPool = sync.Pool{New: func() any { return new(encoded) }}

// maxPooledEncoded bounds the buffer a released encoded keeps.
const maxPooledEncoded = 256 << 10

func (e *encoded) release() {
	if cap(e.buf) > maxPooledEncoded {
		return
	}
	clear(e.recs)
	e.buf, e.recs = e.buf[:0], e.recs[:0]
	encPool.Put(e)
}

// encode makes the records of msgs, and their ids into ids unless nil. Release the records
// once they are submitted to the log.
func (m *Manager) encode(qu *queue, msgs []Message, ids []string) (e *encoded, enq []int64, err error) {
	qu.mu.Lock()
	maxSize := qu.cfg.MaxMessageSize
	qu.mu.Unlock()
	now := m.clock()
	size := 0
	for k := range msgs {
		size += encodedSizeHint(&msgs[k])
	}
	e = encPool.Get().(*encoded)
	buf := slices.Grow(e.buf[:0], size)
	recs := slices.Grow(e.recs[:0], len(msgs))[:len(msgs)]
	enq = make([]int64, len(msgs))
	var r record
	for k := range msgs {
		r = record{id: newID(now), enqueued: now.UnixNano(), msg: msgs[k]}
		if r.msg.ReceivedAt.IsZero() {
			r.msg.ReceivedAt = now
		}
		start := len(buf)
		buf = encodeRecord(buf, &r)
		if n := len(buf) - start; n > maxSize {
			e.buf, e.recs = buf, recs
			e.release()
			return nil, nil, fmt.Errorf("%w: message %d of the batch encodes to %d bytes, queue %q allows %d",
				ErrTooLarge, k, n, qu.name, maxSize)
		}
		recs[k], enq[k] = buf[start:len(buf):len(buf)], r.enqueued
		if ids != nil {
			ids[k] = idString(r.id)
		}
	}
	e.buf, e.recs = buf, recs
	return e, enq, nil
}

// Receive leases up to max messages of queue q (max ≤ 0 means 1) for lease (0 means the queue's
// VisibilityTimeout; negative is ErrInvalidLease). Redeliveries that are due come first, then first
// deliveries in enqueue order. It blocks until at least one message is ready; when ctx ends first it
// returns nil, nil. It always looks once, so a ctx that is already done makes it a non-blocking poll.
// Close makes it return ErrClosed.
func (m *Manager) Receive(ctx context.Context, q string, maxMsgs int, lease time.Duration) ([]Delivery, error) {
	if lease < 0 || lease > maxLease {
		return nil, fmt.Errorf("%w: %v (want 0 for the queue default, or up to %v)", ErrInvalidLease, lease, maxLease)
	}
	for {
		ds, err := m.receive(ctx, q, maxMsgs, lease)
		if !errors.Is(err, errReopening) {
			return ds, err
		}
		// The queue was reopened after a failed write while we waited: wait on the new one.
	}
}

func (m *Manager) receive(ctx context.Context, q string, maxMsgs int, lease time.Duration) ([]Delivery, error) {
	qu, err := m.get(q)
	if err != nil {
		return nil, err
	}
	defer qu.exit()
	maxMsgs = min(max(maxMsgs, 1), maxReceive)
	var got []leased
	var ev []byte
	var now int64
	var dying bool
	for {
		now = qu.now()
		qu.mu.Lock()
		if qu.closed {
			err := qu.closedErr()
			qu.mu.Unlock()
			return nil, err
		}
		qu.advance(now)
		l := lease
		if l == 0 {
			l = qu.cfg.VisibilityTimeout
		}
		got = qu.take(maxMsgs, now, l, got[:0])
		ev = qu.takePend(nil)
		if len(got) > 0 {
			for _, g := range got {
				e := qu.src.idx.at(g.index)
				ev = appendEvent(ev, event{kind: evLease, index: g.index, attempt: uint64(g.attempt), vis: e.vis})
			}
			dying = len(qu.dying) > 0
			qu.mu.Unlock()
			break
		}
		ch := qu.notify
		qu.waiters++
		dying = len(qu.dying) > 0
		qu.mu.Unlock()
		if err := qu.writeEvents(qu.src, ev); err != nil {
			return nil, err
		}
		if dying {
			if err := qu.moveDying(); err != nil {
				return nil, err
			}
		}
		select {
		case <-ctx.Done():
			return nil, nil
		case <-qu.done:
			qu.mu.Lock()
			err := qu.closedErr()
			qu.mu.Unlock()
			return nil, err
		case <-ch:
		}
	}
	if err := qu.writeEvents(qu.src, ev); err != nil {
		return nil, err
	}
	if dying {
		if err := qu.moveDying(); err != nil {
			return nil, err
		}
	}
	out := make([]Delivery, 0, len(got))
	for k := 0; k < len(got); {
		// got[k:k+n] have consecutive indexes: one read for all of them, or, if any of them is
		// missing or damaged, one read each, so that each gets what Read says of it.
		n := 1
		for k+n < len(got) && got[k+n].index == got[k].index+uint64(n) {
			n++
		}
		var run [][]byte
		if n > 1 {
			run, _ = qu.src.log.ReadRun(got[k].index, n)
		}
		for j, g := range got[k : k+n] {
			var b []byte
			var err error
			if run != nil {
				b = run[j]
			} else {
				b, err = qu.src.log.Read(g.index)
			}
			if errors.Is(err, wal.ErrNotFound) {
				continue // purged and reclaimed meanwhile: its lease does not matter any more
			}
			if err != nil {
				return nil, qu.walErr(fmt.Sprintf("read message %d", g.index), err)
			}
			r, err := decodeRecordAlias(b, true) // b is our own copy
			if err != nil {
				return nil, &CorruptError{Path: filepath.Join(qu.src.dir, logDir), Index: g.index, Reason: "message record: " + err.Error()}
			}
			out = append(out, Delivery{
				ID:         idString(r.id),
				Receipt:    encodeReceipt(receipt{epoch: qu.epoch, queue: qu.hash, index: g.index, attempt: g.attempt}),
				Attempt:    int(g.attempt),
				EnqueuedAt: time.Unix(0, r.enqueued),
				Message:    r.msg,
			})
		}
		k += n
	}
	return out, nil
}

func (q *queue) kickLoop() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// leasedEntry validates a receipt against queue q; called with q.mu held.
func (m *Manager) leasedEntry(q *queue, s string) (uint64, *entry, error) {
	r, ok := decodeReceipt(s)
	if !ok {
		return 0, nil, fmt.Errorf("%w: not a receipt", ErrInvalidReceipt)
	}
	if r.queue != q.hash {
		return 0, nil, fmt.Errorf("%w: receipt of another queue", ErrInvalidReceipt)
	}
	if r.epoch != q.epoch {
		return 0, nil, fmt.Errorf("%w: issued before the queue was reopened", ErrStaleReceipt)
	}
	if !q.src.idx.has(r.index) {
		if r.index >= q.src.idx.end {
			return 0, nil, fmt.Errorf("%w: no such message", ErrInvalidReceipt)
		}
		return 0, nil, fmt.Errorf("%w: message already settled", ErrStaleReceipt)
	}
	e := q.src.idx.at(r.index)
	switch {
	case e.state == stAbsent:
		return 0, nil, fmt.Errorf("%w: no such message", ErrInvalidReceipt)
	case uint32(e.attempt) != r.attempt || e.state != stLeased:
		if uint32(e.attempt) < r.attempt {
			return 0, nil, fmt.Errorf("%w: no such delivery", ErrInvalidReceipt)
		}
		return 0, nil, fmt.Errorf("%w: lease expired, message settled or delivered again", ErrStaleReceipt)
	}
	return r.index, e, nil
}

// settle runs fn for every valid receipt under the queue lock, then writes the events fn produced.
func (m *Manager) settle(q string, receipts []string, fn func(qu *queue, i uint64, e *entry, now int64)) ([]error, error) {
	qu, err := m.get(q)
	if err != nil {
		return nil, err
	}
	defer qu.exit()
	res := make([]error, len(receipts))
	now := qu.now()
	qu.mu.Lock()
	qu.advance(now)
	for k, s := range receipts {
		i, e, err := m.leasedEntry(qu, s)
		if err != nil {
			res[k] = err
			continue
		}
		fn(qu, i, e, now)
	}
	ev := qu.takePend(nil)
	dying := len(qu.dying) > 0
	qu.mu.Unlock()
	if err := qu.writeEvents(qu.src, ev); err != nil {
		return res, err
	}
	if dying {
		if err := qu.moveDying(); err != nil {
			return res, err
		}
	}
	return res, nil
}

// Ack settles deliveries of queue q: their messages are removed. The first result has one entry
// per receipt: nil, or an error wrapping ErrStaleReceipt (lease expired, message delivered again or
// settled, or receipt from before a restart) or ErrInvalidReceipt (garbage, or another queue's).
// The second is a queue-level failure (ErrNotFound, ErrClosed, a write error); on return without
// one, the acks are durable under the queue's sync policy.
func (m *Manager) Ack(q string, receipts []string) ([]error, error) {
	return m.settle(q, receipts, func(qu *queue, i uint64, e *entry, now int64) {
		qu.gone(i, e)
		qu.st.acked++
		qu.pend = appendEvent(qu.pend, event{kind: evGone, index: i})
	})
}

// Nack gives deliveries of queue q back: each becomes ready again after delay (0 means the queue's
// backoff for that attempt; negative is ErrInvalidDelay), or is dead-lettered if it has used its
// max attempts (written to the dead-letter queue before Nack returns). Results as for Ack.
func (m *Manager) Nack(q string, receipts []string, delay time.Duration) ([]error, error) {
	if delay < 0 || delay > maxLease {
		return nil, fmt.Errorf("%w: %v (want 0 for the backoff, or up to %v)", ErrInvalidDelay, delay, maxLease)
	}
	return m.settle(q, receipts, func(qu *queue, i uint64, e *entry, now int64) {
		qu.st.nacked++
		qu.failed(i, e, now, delay, reasonNacked)
	})
}

// Extend sets the leases of deliveries of queue q to end lease from now (lease > 0, else
// ErrInvalidLease). Results as for Ack.
func (m *Manager) Extend(q string, receipts []string, lease time.Duration) ([]error, error) {
	if lease <= 0 || lease > maxLease {
		return nil, fmt.Errorf("%w: %v (want more than 0, up to %v)", ErrInvalidLease, lease, maxLease)
	}
	return m.settle(q, receipts, func(qu *queue, i uint64, e *entry, now int64) {
		e.vis = now + int64(lease)
		qu.timers.push(timer{vis: e.vis, index: i, attempt: uint32(e.attempt)})
		qu.pend = appendEvent(qu.pend, event{kind: evLease, index: i, attempt: uint64(e.attempt), vis: e.vis})
	})
}

// Stats describes a queue.
type Stats struct {
	Name                                                    string
	Ready, Leased, Delayed, Dead                            int64 // Delayed includes messages on their way to the dead-letter queue
	Bytes                                                   int64 // record bytes of the messages in the queue (not the dead letters)
	OldestAge                                               time.Duration
	Enqueued, Acked, Nacked, DeadLettered, Expired, Dropped uint64 // counters since open
	// Rates per second over the last 10 to 20 s (since open for a younger queue), from the counters.
	EnqueueRate, AckRate, NackRate, DeadLetterRate float64
}

// Stats returns the current state of queue q.
func (m *Manager) Stats(q string) (Stats, error) {
	qu, err := m.get(q)
	if err != nil {
		return Stats{}, err
	}
	defer qu.exit()
	if err := qu.catchUp(); err != nil {
		return Stats{}, err
	}
	return qu.stats(qu.now()), nil
}

// catchUp applies due timers and writes what they produced: events, and dead letters.
func (q *queue) catchUp() error {
	now := q.now()
	q.mu.Lock()
	q.advance(now)
	ev := q.takePend(nil)
	dying := len(q.dying) > 0
	q.mu.Unlock()
	if err := q.writeEvents(q.src, ev); err != nil {
		return err
	}
	if dying {
		return q.moveDying()
	}
	return nil
}

func (q *queue) stats(now int64) Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.advance(now)
	s := q.src
	st := Stats{
		Name:     q.name,
		Ready:    s.count[stReady],
		Leased:   s.count[stLeased],
		Delayed:  s.count[stDelayed] + s.count[stDying],
		Dead:     q.dead.live(),
		Bytes:    s.bytes,
		Enqueued: q.st.enqueued, Acked: q.st.acked, Nacked: q.st.nacked,
		DeadLettered: q.st.deadLettered, Expired: q.st.expired, Dropped: q.st.dropped,
	}
	st.EnqueueRate, st.AckRate, st.NackRate, st.DeadLetterRate = q.rates.rates(now, q.st)
	s.advanceHead()
	for i := s.head; i < s.idx.end; i++ {
		if e := s.idx.at(i); isLive(e.state) {
			if age := time.Duration(now - e.enq); age > 0 {
				st.OldestAge = age
			}
			break
		}
	}
	return st
}

// PeekDead returns up to max (≤ 0 means 100) of the oldest dead letters of queue q without
// removing them.
func (m *Manager) PeekDead(q string, maxMsgs int) ([]DeadLetter, error) {
	qu, err := m.get(q)
	if err != nil {
		return nil, err
	}
	defer qu.exit()
	if maxMsgs <= 0 {
		maxMsgs = 100
	}
	if err := qu.catchUp(); err != nil {
		return nil, err
	}
	idx := qu.deadIndexes(0, min(maxMsgs, maxReceive))
	out := make([]DeadLetter, 0, len(idx))
	for _, i := range idx {
		r, err := qu.readDead(i)
		if err != nil {
			if errors.Is(err, errSkip) {
				continue
			}
			return nil, err
		}
		out = append(out, deadLetter(r))
	}
	return out, nil
}

func deadLetter(r *record) DeadLetter {
	return DeadLetter{
		ID: idString(r.id), Attempts: int(min(r.attempts, 1<<31-1)), Reason: r.reason,
		DeadAt: time.Unix(0, r.deadAt), EnqueuedAt: time.Unix(0, r.enqueued), Message: r.msg,
	}
}

var errSkip = errors.New("skip")

// deadIndexes returns up to max indexes of live dead letters from index from on.
func (q *queue) deadIndexes(from uint64, n int) []uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	d := q.dead
	d.advanceHead()
	var out []uint64
	for i := max64(from, d.head); i < d.idx.end && len(out) < n; i++ {
		if d.idx.at(i).state == stReady {
			out = append(out, i)
		}
	}
	return out
}

func max64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

func (q *queue) readDead(i uint64) (*record, error) {
	b, err := q.dead.log.Read(i)
	if errors.Is(err, wal.ErrNotFound) {
		return nil, errSkip // removed meanwhile
	}
	if err != nil {
		return nil, q.walErr(fmt.Sprintf("read dead letter %d", i), err)
	}
	r, err := decodeRecordAlias(b, true)
	if err != nil {
		return nil, &CorruptError{Path: filepath.Join(q.dead.dir, logDir), Index: i, Reason: "dead letter: " + err.Error()}
	}
	return r, nil
}

// Redrive moves dead letters of queue q back to q, as new first deliveries that keep their ids
// (nil or empty ids: all of them). It returns how many were moved; on an error (ErrFull when q's
// limits refuse them) the ones counted are moved and the rest stay dead. A crash during a redrive
// can leave a message both redriven and dead (it is then delivered again, never lost).
func (m *Manager) Redrive(ctx context.Context, q string, ids []string) (int, error) {
	qu, err := m.get(q)
	if err != nil {
		return 0, err
	}
	defer qu.exit()
	qu.redriveM.Lock()
	defer qu.redriveM.Unlock()
	var want map[string]bool
	if len(ids) > 0 {
		want = make(map[string]bool, len(ids))
		for _, id := range ids {
			want[id] = true
		}
	}
	moved := 0
	var from uint64
	for {
		if err := ctx.Err(); err != nil {
			return moved, err
		}
		idx := qu.deadIndexes(from, moveBatch)
		if len(idx) == 0 {
			return moved, nil
		}
		from = idx[len(idx)-1] + 1
		var recs [][]byte
		var enq []int64
		var taken []uint64
		now := qu.now()
		for _, i := range idx {
			r, err := qu.readDead(i)
			if errors.Is(err, errSkip) {
				continue
			}
			if err != nil {
				return moved, err
			}
			if want != nil && !want[idString(r.id)] {
				continue
			}
			r.dead, r.enqueued = false, now
			recs = append(recs, encodeRecord(nil, r))
			enq = append(enq, now)
			taken = append(taken, i)
		}
		if len(recs) == 0 {
			continue
		}
		if err := qu.enqueue(ctx, recs, enq, nil); err != nil {
			return moved, err
		}
		var ev []byte
		qu.mu.Lock()
		for _, i := range taken {
			if e := qu.dead.idx.at(i); e.state == stReady {
				qu.dead.set(e, stGone)
				ev = appendEvent(ev, event{kind: evGone, index: i})
			}
		}
		qu.mu.Unlock()
		if err := qu.writeEvents(qu.dead, ev); err != nil {
			return moved, err
		}
		moved += len(taken)
	}
}

// Purge removes every message of queue q (ready, delayed and leased; not those on their way to the
// dead-letter queue, nor the dead letters) and returns how many it removed.
func (m *Manager) Purge(ctx context.Context, q string) (int, error) {
	qu, err := m.get(q)
	if err != nil {
		return 0, err
	}
	defer qu.exit()
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	now := qu.now()
	qu.mu.Lock()
	qu.advance(now)
	s := qu.src
	s.advanceHead()
	n := 0
	var ev []byte
	var runStart, runLen uint64
	flush := func() {
		if runLen > 0 {
			ev = appendEvent(ev, event{kind: evRange, index: runStart, attempt: runLen})
			runLen = 0
		}
	}
	for i := s.head; i < s.idx.end; i++ {
		e := s.idx.at(i)
		switch e.state {
		case stReady, stLeased, stDelayed:
			qu.gone(i, e)
			n++
			if runLen > 0 && runStart+runLen == i {
				runLen++
			} else {
				flush()
				runStart, runLen = i, 1
			}
		}
	}
	flush()
	qu.retry = nil
	qu.st.dropped += uint64(n)
	ev = qu.takePend(ev)
	qu.mu.Unlock()
	if err := qu.writeEvents(qu.src, ev); err != nil {
		return n, err
	}
	return n, nil
}

// close stops the queue: wakes long polls, waits for operations in flight and the background
// goroutine, moves what is dying, writes final checkpoints and closes the logs.
func (q *queue) close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	close(q.done)
	q.mu.Unlock()
	q.ops.Wait()
	<-q.stopped
	var errs []error
	if err := q.moveDying(); err != nil {
		errs = append(errs, err)
	}
	for _, s := range []*store{q.src, q.dead} {
		q.mu.Lock()
		dirty := s.events > 0 || len(q.pend) > 0
		q.mu.Unlock()
		if dirty {
			if s == q.src {
				q.mu.Lock()
				ev := q.takePend(nil)
				q.mu.Unlock()
				if err := q.writeEvents(s, ev); err != nil {
					errs = append(errs, err)
				}
			}
			if err := q.checkpoint(s); err != nil {
				errs = append(errs, err)
			}
		}
		if err := s.close(); err != nil {
			errs = append(errs, q.walErr("close", err))
		}
	}
	return errors.Join(errs...)
}
