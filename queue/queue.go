package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/xid"
	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/wal"
)

// Dead-letter reasons.
const (
	reasonLeaseExpired = "max attempts reached: lease expired"
	reasonNacked       = "max attempts reached: nacked"
	reasonExpired      = "expired: older than max age"
)

const (
	cpEveryEvents = 4096             // checkpoint after this many ack-log records...
	cpEveryTime   = 10 * time.Second // ...or this long after the last one when anything changed
	maxTick       = time.Second      // the background loop wakes at least this often
	moveBatch     = 256              // records per dead-letter or redrive append
	// recoverEvery spaces the reopens of a failed queue (Manager clock), so that a disk that is
	// still full is not hammered: the first reopen comes this long after the failure.
	recoverEvery = time.Second
)

// errReopening is returned by enter while the queue is being reopened after a failed write; get
// waits for the reopen and retries on the queue that replaced it. It never leaves the package.
var errReopening = errors.New("queue: reopening")

type dyingItem struct {
	index  uint64
	reason string
}

// queue is one named queue: its messages, its dead letters and the goroutine that runs its timers.
type queue struct {
	m     *Manager
	name  string
	hash  uint32
	epoch uint32 // in receipts: the Manager's epoch plus the number of reopens after failures
	dir   string
	log   zerolog.Logger

	mu      sync.Mutex
	cfg     Config
	src     *store
	dead    *store
	timers  timerHeap   // leases and delays of src
	retry   []uint64    // ready entries below cursor, FIFO (stale ones are skipped)
	cursor  uint64      // first deliveries: next index to look at
	ttl     uint64      // max-age scan position
	dying   []dyingItem // entries to move to the dead-letter queue
	pend    []byte      // ack-state events produced by timers, to be written by the next writer
	reserve int64       // messages of appends in flight (limits)
	resvB   int64       // their bytes
	notify  chan struct{}
	waiters int
	closed  bool
	rng     *rand.Rand
	lastCP  time.Time // wall time of the last checkpoint
	st      counters
	rates   rateMeter // guarded by mu

	// Recovery after a failed write (guarded by mu): failCause is the first write error since
	// open, nextTry the Manager-clock time (ns) from which get may reopen the queue, reopening is
	// set when a reopen starts (and stays set on a queue that was replaced), broken holds the
	// error of the last failed reopen (the queue is then closed and waits for the next try).
	failCause error
	nextTry   int64
	reopening bool
	broken    error
	recMu     sync.Mutex  // held during a reopen of this queue; get waits on it
	down      atomic.Bool // failCause or broken is set: lets get skip recoveryDue (and the clock) when all is well

	ops      sync.WaitGroup // operations in flight; Close waits for them
	done     chan struct{}  // closed by Close: wakes long polls
	kick     chan struct{}
	stopped  chan struct{}
	moveMu   sync.Mutex // serializes moves to the dead-letter queue
	redriveM sync.Mutex // serializes redrives and dead purges
}

type counters struct {
	enqueued, acked, nacked, deadLettered, expired, dropped uint64
}

// rateWindow is the span over which Stats computes rates.
const rateWindow = 10 * time.Second

// rateMeter turns the counters into per-second rates over the last rateWindow to 2×rateWindow,
// sampled lazily by Stats (no timer): the rate is the counters' growth since a snapshot at least
// rateWindow old, or since open while the queue is younger than that.
type rateMeter struct {
	prev, cur     counters // snapshots: prev is the base of the rates, cur becomes it after rateWindow
	prevAt, curAt int64    // their times (unix ns)
	started       bool
}

// rates returns enqueue, ack, nack and dead-letter rates per second at now, given the counters c.
func (r *rateMeter) rates(now int64, c counters) (enq, ack, nack, dead float64) {
	if now-r.curAt >= int64(rateWindow) { // slide: the newer snapshot becomes the base
		r.prev, r.prevAt = r.cur, r.curAt
		r.cur, r.curAt = c, now
	}
	secs := float64(now-r.prevAt) / float64(time.Second)
	if secs <= 0 {
		return 0, 0, 0, 0
	}
	rate := func(a, b uint64) float64 { return float64(a-b) / secs }
	return rate(c.enqueued, r.prev.enqueued), rate(c.acked, r.prev.acked), rate(c.nacked, r.prev.nacked),
		rate(c.deadLettered, r.prev.deadLettered)
}

func openQueue(m *Manager, name string, cfg Config) (*queue, error) {
	dir := filepath.Join(m.dir, name)
	q := &queue{
		m: m, name: name, hash: nameHash(name), epoch: m.epoch, dir: dir, cfg: cfg,
		log:     m.log.With().Str("queue", name).Logger(),
		notify:  make(chan struct{}),
		done:    make(chan struct{}),
		kick:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
		rng:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		lastCP:  time.Now(),
	}
	q.rates.prevAt = q.now()
	q.rates.curAt = q.rates.prevAt
	sync := wal.SyncPolicy(cfg.Sync)
	src, force1, err := openStore(dir, sync, q.log, m.walFS)
	if err != nil {
		return nil, fmt.Errorf("open queue %q: %w", name, err)
	}
	dead, force2, err := openStore(filepath.Join(dir, deadDir), sync, q.log, m.walFS)
	if err != nil {
		_ = src.close()
		return nil, fmt.Errorf("open dead-letter queue of %q: %w", name, err)
	}
	q.src, q.dead = src, dead
	q.cursor, q.ttl = src.idx.start, src.idx.start
	for i := src.idx.start; i < src.idx.end; i++ {
		if e := src.idx.at(i); e.state == stLeased || e.state == stDelayed {
			q.timers.push(timer{vis: e.vis, index: i, attempt: uint32(e.attempt)})
		}
	}
	for _, fc := range []struct {
		force bool
		s     *store
	}{{force1, src}, {force2, dead}} {
		if fc.force {
			q.log.Warn().Str("dir", fc.s.dir).Msg("ack state ahead of the log (unsynced tail lost); rewriting checkpoint")
			if err := q.checkpoint(fc.s); err != nil {
				_ = src.close()
				_ = dead.close()
				return nil, fmt.Errorf("open queue %q: %w", name, err)
			}
		}
	}
	go q.run()
	return q, nil
}

func (q *queue) now() int64 { return q.m.clock().UnixNano() }

// enter registers an operation; it fails once the queue is closed (errReopening while it is
// being reopened, the reopen error while a failed reopen waits for its next try).
func (q *queue) enter() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.reopening {
		return errReopening
	}
	if q.closed {
		if q.broken != nil {
			return q.broken
		}
		return ErrClosed
	}
	q.ops.Add(1)
	return nil
}

// closedErr is what an operation that finds the queue closed returns: errReopening when the
// queue is being replaced (the operation may retry on the new one), else ErrClosed. Called with
// mu held.
func (q *queue) closedErr() error {
	if q.reopening || q.broken != nil {
		return errReopening
	}
	return ErrClosed
}

// recoveryDue reports whether a store failed (or the last reopen did) and a reopen may be tried
// at now.
func (q *queue) recoveryDue(now int64) bool {
	if !q.down.Load() {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return !q.reopening && (q.failCause != nil || q.broken != nil) && now >= q.nextTry
}

func (q *queue) exit() { q.ops.Done() }

// wakeWaiters wakes long polls; called with mu held.
func (q *queue) wakeWaiters() {
	if q.waiters > 0 {
		close(q.notify)
		q.notify = make(chan struct{})
		q.waiters = 0
	}
}

// walErr maps errors of the logs.
func (q *queue) walErr(op string, err error) error {
	if errors.Is(err, wal.ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("queue %q: %s: %w", q.name, op, err)
}

// writeEvents appends an ack-state record to s and waits for it under the queue's sync policy.
func (q *queue) writeEvents(s *store, ev []byte) error {
	if len(ev) == 0 {
		return nil
	}
	if _, _, err := s.acks.Append(context.Background(), ev); err != nil {
		q.fail(s, err)
		return q.walErr("write ack state", err)
	}
	q.mu.Lock()
	s.events++
	q.mu.Unlock()
	return nil
}

// fail marks s failed after a write error (not after Close). The first failure is logged and
// schedules a reopen (get does it, recoverEvery later).
func (q *queue) fail(s *store, err error) {
	if errors.Is(err, wal.ErrClosed) {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	s.failed = true
	if q.failCause == nil {
		q.failCause = err
		q.down.Store(true)
		q.nextTry = q.now() + int64(recoverEvery)
		q.log.Error().Err(err).Str("dir", s.dir).Dur("retry_in", recoverEvery).
			Msg("write failed; queue refuses writes until it is reopened")
	}
}

// takePend moves the timer-produced events into ev; called with mu held.
func (q *queue) takePend(ev []byte) []byte {
	if len(q.pend) == 0 {
		return ev
	}
	if len(ev) == 0 {
		ev, q.pend = q.pend, nil
		return ev
	}
	ev = append(ev, q.pend[1:]...) // both start with the version byte
	q.pend = q.pend[:0]
	return ev
}

// advance applies every timer due at now and the max-age limit; called with mu held.
func (q *queue) advance(now int64) {
	s := q.src
	woke := false
	for len(q.timers) > 0 && q.timers[0].vis <= now {
		t := q.timers.pop()
		if !s.idx.has(t.index) {
			continue
		}
		e := s.idx.at(t.index)
		if uint32(e.attempt) != t.attempt || e.vis != t.vis {
			continue // extended, redelivered or settled since
		}
		switch e.state {
		case stLeased: // the backoff counts from the lease deadline
			q.failed(t.index, e, t.vis, -1, reasonLeaseExpired)
		case stDelayed:
			q.makeReady(t.index, e, now)
			woke = true
		}
	}
	if q.cfg.MaxAge > 0 {
		cutoff := now - int64(q.cfg.MaxAge)
		if q.ttl < s.idx.start {
			q.ttl = s.idx.start
		}
		for q.ttl < s.idx.end {
			e := s.idx.at(q.ttl)
			if e.state == stAbsent || (e.state != stGone && e.enq > cutoff) {
				break
			}
			if e.state == stReady || e.state == stDelayed {
				q.expire(q.ttl, e)
			}
			q.ttl++ // leased entries are checked when they come back
		}
	}
	if woke {
		q.wakeWaiters()
	}
}

// makeReady makes a delayed entry visible (or expires it); called with mu held.
func (q *queue) makeReady(i uint64, e *entry, now int64) {
	if q.cfg.MaxAge > 0 && e.enq <= now-int64(q.cfg.MaxAge) {
		q.expire(i, e)
		return
	}
	q.src.set(e, stReady)
	if i < q.cursor {
		q.retry = append(q.retry, i)
	}
}

// expire applies OnExpire to a ready or delayed entry; called with mu held.
func (q *queue) expire(i uint64, e *entry) {
	q.st.expired++
	if q.cfg.OnExpire == ExpireDrop {
		q.gone(i, e)
		q.pend = appendEvent(q.pend, event{kind: evGone, index: i})
		return
	}
	q.src.set(e, stDying)
	q.dying = append(q.dying, dyingItem{i, reasonExpired})
}

// gone marks a live entry of src gone; called with mu held.
func (q *queue) gone(i uint64, e *entry) {
	q.src.set(e, stGone)
}

// failed handles a delivery that failed (lease expired: delay < 0 means the backoff and no event;
// nack: delay ≥ 0, 0 meaning the backoff, and a delay event is written); called with mu held.
// The entry must be leased. Events go to q.pend.
func (q *queue) failed(i uint64, e *entry, now int64, delay time.Duration, reason string) {
	if q.cfg.MaxAge > 0 && e.enq <= now-int64(q.cfg.MaxAge) {
		q.expire(i, e)
		return
	}
	if int(e.attempt) >= q.cfg.MaxAttempts {
		if q.cfg.DeadLetter != nil && !*q.cfg.DeadLetter {
			q.st.dropped++
			q.gone(i, e)
			q.pend = appendEvent(q.pend, event{kind: evGone, index: i})
			return
		}
		e.vis = now
		q.src.set(e, stDying)
		q.dying = append(q.dying, dyingItem{i, reason})
		return
	}
	logIt := delay >= 0
	if delay <= 0 {
		delay = q.cfg.Backoff.backoff(uint32(e.attempt), q.rng.Float64())
	}
	e.vis = now + int64(delay)
	if delay <= 0 {
		q.src.set(e, stReady)
		if i < q.cursor {
			q.retry = append(q.retry, i)
		}
		q.wakeWaiters()
	} else {
		q.src.set(e, stDelayed)
		q.timers.push(timer{vis: e.vis, index: i, attempt: uint32(e.attempt)})
	}
	if logIt {
		q.pend = appendEvent(q.pend, event{kind: evDelay, index: i, attempt: uint64(e.attempt), vis: e.vis})
	}
}

type leased struct {
	index   uint64
	attempt uint32
	enq     int64
}

// take leases up to max ready entries; called with mu held.
func (q *queue) take(max int, now int64, lease time.Duration, out []leased) []leased {
	s := q.src
	var cutoff int64 = -1 << 63
	if q.cfg.MaxAge > 0 {
		cutoff = now - int64(q.cfg.MaxAge)
	}
	grab := func(i uint64, e *entry) {
		if e.enq <= cutoff { // too old: a ready message the max-age scan has passed
			q.expire(i, e)
			return
		}
		e.attempt++
		s.set(e, stLeased)
		e.vis = now + int64(lease)
		q.timers.push(timer{vis: e.vis, index: i, attempt: uint32(e.attempt)})
		out = append(out, leased{i, uint32(e.attempt), e.enq})
	}
	for len(out) < max && len(q.retry) > 0 {
		i := q.retry[0]
		q.retry = q.retry[1:]
		if s.idx.has(i) {
			if e := s.idx.at(i); e.state == stReady {
				grab(i, e)
			}
		}
	}
	if len(q.retry) == 0 {
		q.retry = nil
	}
	if q.cursor < s.idx.start {
		q.cursor = s.idx.start
	}
	for len(out) < max && q.cursor < s.idx.end {
		e := s.idx.at(q.cursor)
		if e.state == stAbsent {
			break // an append in flight: keep FIFO order
		}
		if e.state == stReady {
			grab(q.cursor, e)
		}
		q.cursor++
	}
	return out
}

// enqueue appends recs to the message log and indexes them once durable. With done nil it waits
// and returns the outcome; with done it returns once the records are queued for a commit (or the
// error that refused them) and calls done with the outcome.
func (q *queue) enqueue(ctx context.Context, recs [][]byte, enq []int64, done func(error)) error {
	n := int64(len(recs))
	sizes := make([]uint32, len(recs))
	var total int64
	for k, r := range recs {
		sizes[k] = uint32(len(r))
		total += int64(len(r))
	}
	q.mu.Lock()
	cfg := q.cfg
	var ev []byte
	if over := q.over(n, total); over {
		if cfg.Overflow != OverflowDropOldest || (cfg.MaxMessages > 0 && n > cfg.MaxMessages) || (cfg.MaxBytes > 0 && total > cfg.MaxBytes) {
			q.mu.Unlock()
			return fmt.Errorf("%w: %q holds %d messages, %d bytes (limits: %d messages, %d bytes)",
				ErrFull, q.name, q.src.live()+q.reserve, q.src.bytes+q.resvB, cfg.MaxMessages, cfg.MaxBytes)
		}
		ev = q.dropOldest(n, total)
		if q.over(n, total) { // the rest is in flight or on its way to the dead-letter queue
			q.mu.Unlock()
			if err := q.writeEvents(q.src, ev); err != nil {
				return err
			}
			return fmt.Errorf("%w: %q cannot drop enough messages to make room", ErrFull, q.name)
		}
	}
	q.reserve += n
	q.resvB += total
	q.mu.Unlock()

	if err := q.writeEvents(q.src, ev); err != nil {
		q.unreserve(n, total)
		return err
	}
	if done != nil {
		err := q.src.log.AppendAsync(recs, func(first, _ uint64, err error) {
			done(q.appended(first, sizes, enq, total, err))
		})
		if err != nil {
			return q.appended(0, sizes, enq, total, err)
		}
		return nil
	}
	first, _, err := q.src.log.Append(context.WithoutCancel(ctx), recs...)
	return q.appended(first, sizes, enq, total, err)
}

// appended indexes records that are durable (err nil), or undoes their reservation.
func (q *queue) appended(first uint64, sizes []uint32, enq []int64, total int64, err error) error {
	n := int64(len(sizes))
	if err != nil {
		q.fail(q.src, err)
		q.unreserve(n, total)
		return q.walErr("append", err)
	}
	q.mu.Lock()
	q.reserve -= n
	q.resvB -= total
	q.src.fill(first, sizes, enq)
	q.st.enqueued += uint64(n)
	q.wakeWaiters()
	q.mu.Unlock()
	return nil
}

func (q *queue) unreserve(n, total int64) {
	q.mu.Lock()
	q.reserve -= n
	q.resvB -= total
	q.mu.Unlock()
}

// over reports whether n more messages of total bytes exceed the limits; called with mu held.
func (q *queue) over(n, total int64) bool {
	c := q.cfg
	return (c.MaxMessages > 0 && q.src.live()+q.reserve+n > c.MaxMessages) ||
		(c.MaxBytes > 0 && q.src.bytes+q.resvB+total > c.MaxBytes)
}

// dropOldest drops the oldest messages (leased ones included) until n messages of total bytes
// fit; called with mu held. It returns the events to write.
func (q *queue) dropOldest(n, total int64) []byte {
	s := q.src
	s.advanceHead()
	var ev []byte
	for i := s.head; i < s.idx.end && q.over(n, total); i++ {
		e := s.idx.at(i)
		switch e.state {
		case stReady, stLeased, stDelayed:
			q.gone(i, e)
			q.st.dropped++
			ev = appendEvent(ev, event{kind: evGone, index: i})
		}
	}
	return ev
}

// run is the queue's background goroutine: timers, max age, dead-lettering, checkpoints.
func (q *queue) run() {
	defer close(q.stopped)
	t := time.NewTimer(maxTick)
	defer t.Stop()
	for {
		select {
		case <-q.done:
			return
		case <-q.kick:
		case <-t.C:
		}
		wait := q.tick()
		t.Reset(wait)
	}
}

// tick does the periodic work and returns how long to sleep.
func (q *queue) tick() time.Duration {
	now := q.now()
	q.mu.Lock()
	q.advance(now)
	ev := q.takePend(nil)
	wait := maxTick
	if len(q.timers) > 0 {
		if d := time.Duration(q.timers[0].vis - now); d < wait {
			wait = max(d, time.Millisecond)
		}
	}
	q.mu.Unlock()
	if err := q.writeEvents(q.src, ev); err != nil {
		q.log.Error().Err(err).Msg("write ack state failed")
	}
	if err := q.moveDying(); err != nil && !errors.Is(err, ErrClosed) {
		q.log.Error().Err(err).Msg("dead-lettering failed")
	}
	q.maybeCheckpoint(false)
	return wait
}

// maybeCheckpoint checkpoints each store when enough has happened since the last checkpoint.
func (q *queue) maybeCheckpoint(force bool) {
	q.mu.Lock()
	due := force || time.Since(q.lastCP) >= cpEveryTime
	var todo []*store
	for _, s := range []*store{q.src, q.dead} {
		if s.failed {
			continue // logged when the write failed; reopen to recover
		}
		// A snapshot walks the whole backlog: with a big one, wait for more ack-log records.
		if s.events >= max(cpEveryEvents, int(s.live()/256)) || (due && s.events > 0) {
			todo = append(todo, s)
		}
	}
	if due || len(todo) > 0 {
		q.lastCP = time.Now()
	}
	q.src.advanceHead()
	head := q.src.head
	srcFailed := q.src.failed
	q.mu.Unlock()
	for _, s := range todo {
		if err := q.checkpoint(s); err != nil && !errors.Is(err, ErrClosed) {
			q.log.Error().Err(err).Str("dir", s.dir).Msg("checkpoint failed")
		}
	}
	if len(todo) == 0 && !srcFailed {
		// No new ack state, but gone messages can still free whole segments.
		if err := q.src.reclaim(head); err != nil && !errors.Is(err, wal.ErrClosed) {
			q.log.Error().Err(err).Msg("reclaim failed")
		}
	}
}

// checkpoint snapshots s and writes it.
func (q *queue) checkpoint(s *store) error {
	q.mu.Lock()
	if s.failed {
		q.mu.Unlock()
		return fmt.Errorf("queue %q: no checkpoint after a failed write; reopen to recover", q.name)
	}
	data, acksIndex := s.snapshot(q.now())
	head := s.head
	s.events = 0
	if head > s.idx.start { // free the index of what is gone
		s.idx.dropFront(head)
	}
	q.mu.Unlock()
	if err := s.writeCheckpoint(data, acksIndex, head); err != nil {
		q.mu.Lock()
		s.events += cpEveryEvents // retry soon
		q.mu.Unlock()
		if errors.Is(err, wal.ErrClosed) {
			return ErrClosed
		}
		return err
	}
	return nil
}

// moveDying writes dying messages to the dead-letter queue, then drops them from the source.
func (q *queue) moveDying() error {
	q.moveMu.Lock()
	defer q.moveMu.Unlock()
	q.mu.Lock()
	items := q.dying
	q.dying = nil
	q.mu.Unlock()
	for len(items) > 0 {
		batch := items[:min(len(items), moveBatch)]
		if err := q.moveBatch(batch); err != nil {
			q.mu.Lock()
			q.dying = append(items, q.dying...)
			q.mu.Unlock()
			return err
		}
		items = items[len(batch):]
	}
	return nil
}

func (q *queue) moveBatch(items []dyingItem) error {
	deadAt := q.now()
	recs := make([][]byte, 0, len(items))
	idx := make([]uint64, 0, len(items))
	var attempts []uint32
	q.mu.Lock()
	for _, it := range items {
		attempts = append(attempts, uint32(q.src.idx.at(it.index).attempt))
	}
	q.mu.Unlock()
	for k, it := range items {
		b, err := q.src.log.Read(it.index)
		if err != nil {
			return q.walErr(fmt.Sprintf("read message %d", it.index), err)
		}
		r, err := decodeRecord(b)
		if err != nil {
			return &CorruptError{Path: filepath.Join(q.src.dir, logDir), Index: it.index, Reason: "message record: " + err.Error()}
		}
		r.dead, r.attempts, r.deadAt, r.reason = true, uint64(attempts[k]), deadAt, it.reason
		recs = append(recs, encodeRecord(make([]byte, 0, len(b)+len(it.reason)+16), r))
		idx = append(idx, it.index)
	}
	first, _, err := q.dead.log.Append(context.Background(), recs...)
	if err != nil {
		q.fail(q.dead, err)
		return q.walErr("append dead letter", err)
	}
	sizes := make([]uint32, len(recs))
	enq := make([]int64, len(recs))
	for k, r := range recs {
		sizes[k] = uint32(len(r))
		enq[k] = deadAt
	}
	var ev []byte
	q.mu.Lock()
	q.dead.fill(first, sizes, enq)
	for _, i := range idx {
		e := q.src.idx.at(i)
		if e.state == stDying {
			q.gone(i, e)
			q.st.deadLettered++
			ev = appendEvent(ev, event{kind: evGone, index: i})
		}
	}
	q.mu.Unlock()
	return q.writeEvents(q.src, ev)
}

// newID makes a message id; t is the time it was made (xid keeps its seconds).
func newID(t time.Time) [idLen]byte { return xid.NewWithTime(t) }

func idString(id [idLen]byte) string { return xid.ID(id).String() }
