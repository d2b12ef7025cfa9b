package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/sluicemq/sluice/mqtt"
	"github.com/sluicemq/sluice/queue"
)

// AckGater holds the acknowledgement of a publish on its connection until it is opened, and
// tells what a connection's reader has received and when it is about to wait: *mqtt.Server is one
// (see mqtt.AckGate, mqtt.Server.InputBuffered and BeforeReadWait). With one, the bridge
// pipelines QoS 1 acks (see Options.Pipeline).
type AckGater interface {
	GateAck(cl *mochi.Client, packetID uint16) *mqtt.AckGate
	OpenAcks(gates []*mqtt.AckGate, codes []byte)
	InputBuffered(cl *mochi.Client) bool
	BeforeReadWait(cl *mochi.Client, fn func()) bool
}

// Pipelining: the hook does not block the client's read goroutine while a QoS 1 record is being
// made durable. It gates the publish's PUBACK on the connection (AckGater.GateAck), stages the
// record on the client's stage, and lets mochi handle the publish at once as it does any other:
// ACL, retain, delivery to subscribers, PUBACK — which waits at the gate. When the reader is about
// to wait (everything it received is handled: AckGater.BeforeReadWait), the stage goes to the
// queue as one batch (queue.Manager.AddAsync), in order, without waiting: the publishes of one
// read share a record batch and a group commit, and no goroutine stands between the reader and
// the log. Once the batch is durable, the client's ack goroutine opens its gates together (each
// client has its own, started when needed, so a connection whose writes block holds back only its
// own PUBACKs): their PUBACKs leave in one write, or, for a record that failed, a PUBACK with 0x97
// or 0x80 (MQTT 5) or nothing (3.1.1); a batch not durable within EnqueueTimeout fails the same way.
//
// Acknowledgements written behind a gate wait behind it (mqtt.AckGate), so PUBACKs leave in the
// order the PUBLISHes came [MQTT-4.6.0-2] also when unbridged or denied publishes are mixed in.
// Subscribers get messages in the order they were published, before they are durable (as they
// would without the bridge); a publish whose record fails was delivered to subscribers all the
// same, and a 3.1.1 client's resend of it is delivered again (QoS 1 is at least once). QoS 2
// publishes first wait until the client's pipelined publishes are acked and are then handled
// without pipelining: mochi's QoS 2 state (PUBREC in flight, DUP resends) stays mochi's. A client
// has at most PipelineDepth pipelined publishes not yet acked; one that sends more waits.

// maxStaged is the most publishes a stage holds before it is written without waiting for the
// reader to run out of input.
const maxStaged = 64

// stage is a client's pipelining state.
type stage struct {
	b       *Bridge
	flushFn func() // st.flush, bound once

	// The client's reader goroutine only:
	items []*pending // staged, not yet written
	armed bool       // flush is set to run before the reader waits

	mu     sync.Mutex
	out    int           // written, gates not yet opened; guarded by mu
	idle   chan struct{} // closed when out drops to 0, made by a waiter; guarded by mu
	done   []*round      // decided rounds whose gates are to open; guarded by mu
	acking bool          // an ack goroutine is running (ackLoop); guarded by mu
	outN   atomic.Int64  // out, read without mu
}

type pending struct {
	gate *mqtt.AckGate
	qs   []string // queues to write into (in qbuf unless a message matches more)
	qbuf [4]string
	msg  queue.Message // the record
	err  error         // of the write
}

// round is one flushed stage: its records are written with one AddAsync per queue; the last to
// finish, or EnqueueTimeout, hands it to its client's ack goroutine.
type round struct {
	st      *stage
	items   []*pending
	start   time.Time
	mu      sync.Mutex  // guards what follows and the items' err until decided
	timer   *time.Timer // EnqueueTimeout, armed once every queue write is submitted
	subs    []sub       // one write per queue
	left    int         // writes not finished
	decided bool        // handed to the ack goroutine: the items are its now
}

// sub is the write of a round's items into one queue.
type sub struct {
	q    string
	its  []*pending
	done bool
}

// stages is the per-client pipelining state.
type stages struct {
	stages  sync.Map       // *mochi.Client → *stage
	rounds  sync.WaitGroup // rounds not yet acked
	closeMu sync.RWMutex   // Close holds it to set Bridge.closed; flush to add a round

}

func (b *Bridge) stageOf(cl *mochi.Client) *stage {
	if v, ok := b.stages.stages.Load(cl); ok {
		return v.(*stage)
	}
	return nil
}

func (b *Bridge) newStage(cl *mochi.Client) *stage {
	st := &stage{b: b}
	st.flushFn = st.flush
	b.stages.stages.Store(cl, st)
	return st
}

// flush writes the staged records (reader goroutine). It returns at once: the ack goroutine opens
// their gates when they are durable.
func (st *stage) flush() {
	st.armed = false
	if len(st.items) == 0 {
		return
	}
	items := st.items
	st.items = make([]*pending, 0, len(items)) // the round owns items now
	b := st.b
	st.mu.Lock()
	st.out += len(items)
	st.outN.Store(int64(st.out))
	st.mu.Unlock()
	b.stages.closeMu.RLock()
	if b.closed.Load() { // Close has begun waiting for rounds: none may start
		b.stages.closeMu.RUnlock()
		for _, it := range items {
			it.err = ErrClosed
		}
		b.ackItems(st, items, &ackScratch{})
		return
	}
	b.stages.rounds.Add(1)
	b.stages.closeMu.RUnlock()
	r := &round{st: st, items: items, start: time.Now()}
	if q, ok := oneQueue(items); ok { // the common case
		r.subs = []sub{{q: q, its: items}}
	} else {
		byQueue := map[string]int{}
		for _, it := range items {
			for _, q := range it.qs {
				k, ok := byQueue[q]
				if !ok {
					k = len(r.subs)
					byQueue[q] = k
					r.subs = append(r.subs, sub{q: q})
				}
				r.subs[k].its = append(r.subs[k].its, it)
			}
		}
	}
	r.left = len(r.subs)
	for k := range r.subs {
		b.submit(r, k)
	}
	// EnqueueTimeout runs from here: expire then finds the items as submit left them.
	r.mu.Lock()
	if !r.decided {
		r.timer = time.AfterFunc(b.opts.EnqueueTimeout, func() { r.expire(b) })
	}
	r.mu.Unlock()
}

// oneQueue reports whether every item goes into the same single queue, and which.
func oneQueue(items []*pending) (string, bool) {
	q := ""
	for _, it := range items {
		if len(it.qs) != 1 || (q != "" && it.qs[0] != q) {
			return "", false
		}
		q = it.qs[0]
	}
	return q, true
}

// wait blocks until every publish of the client written so far is acked (reader goroutine).
func (st *stage) wait() {
	st.mu.Lock()
	if st.out == 0 {
		st.mu.Unlock()
		return
	}
	if st.idle == nil {
		st.idle = make(chan struct{})
	}
	ch := st.idle
	st.mu.Unlock()
	<-ch
}

// drain writes what is staged and waits until all of it is acked (reader goroutine).
func (st *stage) drain() {
	st.flush()
	st.wait()
}

// submit writes the records of r.subs[k] (in order) into its queue.
func (b *Bridge) submit(r *round, k int) {
	q, its := r.subs[k].q, r.subs[k].its
	msgs := make([]queue.Message, len(its))
	for i, it := range its {
		msgs[i] = it.msg
	}
	if b.closed.Load() {
		b.metrics.failures(q, "closed", len(msgs))
		r.finish(b, k, ErrClosed, nil)
		return
	}
	err := b.q.AddAsync(q, msgs, func(err error) {
		if err != nil {
			reason, _ := failure(err)
			b.metrics.failures(q, reason, len(msgs))
			err = fmt.Errorf("enqueue into %q: %w", q, err)
		} else {
			b.metrics.enqueuedAll(q, msgs, time.Since(r.start))
		}
		r.finish(b, k, err, nil)
	})
	if err == nil {
		return
	}
	if len(its) > 1 && (errors.Is(err, queue.ErrTooLarge) || errors.Is(err, queue.ErrFull)) {
		// A batch is refused whole; one by one, in order, what fits goes in as it would have,
		// sent alone: the first publishes before a full queue, all but a too-large one. (This
		// waits on the reader goroutine; a full queue is not the fast path.)
		errs := make([]error, len(its))
		for i, it := range its {
			ctx, cancel := context.WithTimeout(context.Background(), b.opts.EnqueueTimeout)
			errs[i] = b.enqueueOne(ctx, q, it.msg)
			cancel()
		}
		r.finish(b, k, nil, errs)
		return
	}
	reason, _ := failure(err)
	b.metrics.failures(q, reason, len(msgs))
	r.finish(b, k, fmt.Errorf("enqueue into %q: %w", q, err), nil)
}

// setErr records err for it: the first failure among its queues, a full queue winning. r.mu is
// held.
func setErr(it *pending, err error) {
	if err == nil {
		return
	}
	if it.err == nil {
		it.err = err
	} else if _, full := failure(err); full {
		it.err = err
	}
}

// finish ends the write of r.subs[k] with err for all its items, or errs[i] for item i; the last
// write to finish hands r to the ack goroutine. After EnqueueTimeout it does nothing.
func (r *round) finish(b *Bridge, k int, err error, errs []error) {
	r.mu.Lock()
	if r.decided {
		r.mu.Unlock()
		return
	}
	s := &r.subs[k]
	for i, it := range s.its {
		if errs != nil {
			setErr(it, errs[i])
		} else {
			setErr(it, err)
		}
	}
	s.done = true
	r.left--
	if r.left > 0 {
		r.mu.Unlock()
		return
	}
	r.decided = true
	if r.timer != nil {
		r.timer.Stop()
	}
	r.mu.Unlock()
	b.toAcker(r)
}

// expire decides r when EnqueueTimeout has passed: the publishes whose records are not yet
// durable fail, as a blocking publish's would (their records may still be stored: at least once).
func (r *round) expire(b *Bridge) {
	r.mu.Lock()
	if r.decided {
		r.mu.Unlock()
		return
	}
	r.decided = true
	for _, s := range r.subs {
		if s.done {
			continue
		}
		b.metrics.failures(s.q, "timeout", len(s.its))
		for _, it := range s.its {
			setErr(it, fmt.Errorf("enqueue into %q: %w", s.q, context.DeadlineExceeded))
		}
	}
	r.mu.Unlock()
	b.toAcker(r)
}

// toAcker hands a decided round to its client's ack goroutine, starting one if none runs. Each
// client has its own: a connection whose writes block (a full socket, a stuck subscriber holding
// it) holds back only its own PUBACKs.
func (b *Bridge) toAcker(r *round) {
	st := r.st
	st.mu.Lock()
	st.done = append(st.done, r)
	start := !st.acking
	st.acking = true
	st.mu.Unlock()
	if start {
		go b.ackLoop(st)
	}
}

// ackLoop opens the gates of st's decided rounds, all that are there in one OpenAcks (one write),
// until there are none left.
func (b *Bridge) ackLoop(st *stage) {
	var (
		batch []*round
		items []*pending
		sc    ackScratch
	)
	for {
		st.mu.Lock()
		batch, st.done = st.done, batch[:0]
		if len(batch) == 0 {
			st.acking = false
			st.mu.Unlock()
			return
		}
		st.mu.Unlock()
		items = items[:0]
		for _, r := range batch {
			items = append(items, r.items...)
		}
		b.ackItems(st, items, &sc)
		clear(items)
		for i := range batch {
			batch[i] = nil
			b.stages.rounds.Done()
		}
	}
}

// ackScratch is an ack goroutine's reusable OpenAcks arguments.
type ackScratch struct {
	gates []*mqtt.AckGate
	codes []byte
}

// ackItems opens the gates of items (one OpenAcks: one write), ends their count in st.out, and
// recycles them.
func (b *Bridge) ackItems(st *stage, items []*pending, sc *ackScratch) {
	gates, codes := sc.gates[:0], sc.codes[:0]
	for _, it := range items {
		gates, codes = append(gates, it.gate), append(codes, ackCode(it.err))
	}
	b.opts.Pipeline.OpenAcks(gates, codes)
	clear(gates)
	sc.gates, sc.codes = gates[:0], codes[:0]
	st.mu.Lock()
	st.out -= len(items)
	st.outN.Store(int64(st.out))
	if st.out == 0 && st.idle != nil {
		close(st.idle)
		st.idle = nil
	}
	st.mu.Unlock()
	for _, it := range items {
		*it = pending{}
		pendingPool.Put(it)
	}
}

// closeStage writes what the client staged after its read loop ended (OnDisconnect runs on the
// client's own goroutine, after its last OnPublish); its acks go nowhere.
func (b *Bridge) closeStage(cl *mochi.Client) {
	if v, ok := b.stages.stages.LoadAndDelete(cl); ok {
		v.(*stage).flush()
	}
}

// pendingPool recycles the staged items (a record and its gate; about 1 KB a publish otherwise).
var pendingPool = sync.Pool{New: func() any { return new(pending) }}

// ackCode is the PUBACK reason code for a publish whose record write ended with err.
func ackCode(err error) byte {
	if err == nil {
		return packets.CodeSuccess.Code
	}
	return failCode(err).Code
}

// pipelined handles a bridged QoS 1 publish of a network client when pipelining is on. It
// returns false when the publish should take the blocking path (after what the client staged
// before it has been written, so that records keep the client's order).
func (h *hook) pipelined(cl *mochi.Client, pk *packets.Packet, qs []string) bool {
	b := h.b
	st := b.stageOf(cl)
	if st == nil || (len(st.items) == 0 && st.outN.Load() == 0) {
		// Nothing pending and nothing received behind this publish: pipelining would only delay
		// its ack. Block instead; the reader has nothing else to do.
		if !b.opts.Pipeline.InputBuffered(cl) {
			return false
		}
	}
	if st == nil {
		st = b.newStage(cl)
	}
	if len(st.items)+int(st.outN.Load()) >= b.opts.PipelineDepth {
		st.drain() // the client has PipelineDepth publishes not yet acked: it waits
	}
	g := b.opts.Pipeline.GateAck(cl, pk.PacketID)
	if g == nil {
		st.flush()
		return false
	}
	it := pendingPool.Get().(*pending)
	it.gate, it.qs = g, append(it.qbuf[:0], qs...)
	b.fillMessage(&it.msg, cl, pk)
	st.items = append(st.items, it)
	if len(st.items) >= maxStaged { // a client whose input never runs dry still gets batches written
		st.flush()
		return true
	}
	if !st.armed {
		if !b.opts.Pipeline.BeforeReadWait(cl, st.flushFn) {
			st.flush()
			return true
		}
		st.armed = true
	}
	return true
}
