package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
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

	// The client's reader goroutine only: the staged records, not yet written, and their gates
	// and queues, index for index. A flush hands both to its round.
	msgs  []queue.Message
	metas []meta
	armed bool // flush is set to run before the reader waits

	mu     sync.Mutex
	out    int           // written, gates not yet opened; guarded by mu
	idle   chan struct{} // closed when out drops to 0, made by a waiter; guarded by mu
	done   []*round      // decided rounds whose gates are to open; guarded by mu
	acking bool          // an ack goroutine is running (ackLoop); guarded by mu
	outN   atomic.Int64  // out, read without mu
}

// meta is what a staged record's publish needs besides the record.
type meta struct {
	gate *mqtt.AckGate
	q    string   // the queue to write into, when there is one
	qs   []string // the queues, when the topic routes to more than one
	err  error    // of the write
}

// queues returns the queues m's record goes into.
func (m *meta) queues() []string {
	if m.qs != nil {
		return m.qs
	}
	return []string{m.q}
}

// round is one flushed stage: its records are written with one AddAsync per queue; the last to
// finish, or EnqueueTimeout, hands it to its client's ack goroutine.
type round struct {
	st      *stage
	msgs    []queue.Message // the records, in the client's order
	metas   []meta          // index for index
	start   time.Time
	mu      sync.Mutex  // guards what follows and the metas' err until decided
	timer   *time.Timer // EnqueueTimeout, armed once every queue write is submitted
	subs    []sub       // one write per queue
	left    int         // writes not finished
	decided bool        // handed to the ack goroutine: the metas are its now
}

// sub is the write of a round's records into one queue.
type sub struct {
	q    string
	idx  []int // the records written into q, in order; nil: all of the round's
	done bool
}

// each calls fn with the index of every record of r that s writes.
func (s *sub) each(r *round, fn func(i int)) {
	if s.idx == nil {
		for i := range r.metas {
			fn(i)
		}
		return
	}
	for _, i := range s.idx {
		fn(i)
	}
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
	n := len(st.msgs)
	if n == 0 {
		return
	}
	// The round owns the staged slices now; the next stage gets new ones of the same size.
	r := &round{st: st, msgs: st.msgs, metas: st.metas}
	st.msgs, st.metas = make([]queue.Message, 0, n), make([]meta, 0, n)
	b := st.b
	st.mu.Lock()
	st.out += n
	st.outN.Store(int64(st.out))
	st.mu.Unlock()
	b.stages.closeMu.RLock()
	if b.closed.Load() { // Close has begun waiting for rounds: none may start
		b.stages.closeMu.RUnlock()
		for i := range r.metas {
			r.metas[i].err = ErrClosed
		}
		b.ackRounds(st, []*round{r}, &ackScratch{})
		return
	}
	b.stages.rounds.Add(1)
	b.stages.closeMu.RUnlock()
	r.start = time.Now()
	if q, ok := oneQueue(r.metas); ok { // the common case
		r.subs = []sub{{q: q}}
	} else {
		byQueue := map[string]int{}
		for i := range r.metas {
			for _, q := range r.metas[i].queues() {
				k, ok := byQueue[q]
				if !ok {
					k = len(r.subs)
					byQueue[q] = k
					r.subs = append(r.subs, sub{q: q, idx: []int{}})
				}
				r.subs[k].idx = append(r.subs[k].idx, i)
			}
		}
	}
	r.left = len(r.subs)
	for k := range r.subs {
		b.submit(r, k)
	}
	// EnqueueTimeout runs from here: expire then finds the metas as submit left them.
	r.mu.Lock()
	if !r.decided {
		r.timer = time.AfterFunc(b.opts.EnqueueTimeout, func() { r.expire(b) })
	}
	r.mu.Unlock()
}

// oneQueue reports whether every record goes into the same single queue, and which.
func oneQueue(metas []meta) (string, bool) {
	q := metas[0].q
	for i := range metas {
		if metas[i].qs != nil || metas[i].q != q {
			return "", false
		}
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
	q, idx := r.subs[k].q, r.subs[k].idx
	msgs := r.msgs
	if idx != nil {
		msgs = make([]queue.Message, len(idx))
		for j, i := range idx {
			msgs[j] = r.msgs[i]
		}
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
	if len(msgs) > 1 && (errors.Is(err, queue.ErrTooLarge) || errors.Is(err, queue.ErrFull)) {
		// A batch is refused whole; one by one, in order, what fits goes in as it would have,
		// sent alone: the first publishes before a full queue, all but a too-large one. (This
		// waits on the reader goroutine; a full queue is not the fast path.)
		errs := make([]error, len(msgs))
		for j := range msgs {
			ctx, cancel := context.WithTimeout(context.Background(), b.opts.EnqueueTimeout)
			errs[j] = b.enqueueOne(ctx, q, msgs[j])
			cancel()
		}
		r.finish(b, k, nil, errs)
		return
	}
	reason, _ := failure(err)
	b.metrics.failures(q, reason, len(msgs))
	r.finish(b, k, fmt.Errorf("enqueue into %q: %w", q, err), nil)
}

// setErr records err for m: the first failure among its queues, a full queue winning. r.mu is
// held.
func setErr(m *meta, err error) {
	if err == nil {
		return
	}
	if m.err == nil {
		m.err = err
	} else if _, full := failure(err); full {
		m.err = err
	}
}

// finish ends the write of r.subs[k] with err for all its records, or errs[j] for its record j;
// the last write to finish hands r to the ack goroutine. After EnqueueTimeout it does nothing.
func (r *round) finish(b *Bridge, k int, err error, errs []error) {
	r.mu.Lock()
	if r.decided {
		r.mu.Unlock()
		return
	}
	s := &r.subs[k]
	if errs != nil {
		j := 0
		s.each(r, func(i int) { setErr(&r.metas[i], errs[j]); j++ })
	} else if err != nil {
		s.each(r, func(i int) { setErr(&r.metas[i], err) })
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
	for k := range r.subs {
		s := &r.subs[k]
		if s.done {
			continue
		}
		err := fmt.Errorf("enqueue into %q: %w", s.q, context.DeadlineExceeded)
		n := 0
		s.each(r, func(i int) { setErr(&r.metas[i], err); n++ })
		b.metrics.failures(s.q, "timeout", n)
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
		b.ackRounds(st, batch, &sc)
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

// ackRounds opens the gates of the decided rounds rs (one OpenAcks: one write) and ends their
// count in st.out.
func (b *Bridge) ackRounds(st *stage, rs []*round, sc *ackScratch) {
	gates, codes := sc.gates[:0], sc.codes[:0]
	for _, r := range rs {
		for i := range r.metas {
			gates, codes = append(gates, r.metas[i].gate), append(codes, ackCode(r.metas[i].err))
		}
	}
	b.opts.Pipeline.OpenAcks(gates, codes)
	n := len(gates)
	clear(gates)
	sc.gates, sc.codes = gates[:0], codes[:0]
	st.mu.Lock()
	st.out -= n
	st.outN.Store(int64(st.out))
	if st.out == 0 && st.idle != nil {
		close(st.idle)
		st.idle = nil
	}
	st.mu.Unlock()
}

// closeStage writes what the client staged after its read loop ended (OnDisconnect runs on the
// client's own goroutine, after its last OnPublish); its acks go nowhere.
func (b *Bridge) closeStage(cl *mochi.Client) {
	if v, ok := b.stages.stages.LoadAndDelete(cl); ok {
		v.(*stage).flush()
	}
}

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
	if st == nil || (len(st.msgs) == 0 && st.outN.Load() == 0) {
		// Nothing pending and nothing received behind this publish: pipelining would only delay
		// its ack. Block instead; the reader has nothing else to do.
		if !b.opts.Pipeline.InputBuffered(cl) {
			return false
		}
	}
	if st == nil {
		st = b.newStage(cl)
	}
	if len(st.msgs)+int(st.outN.Load()) >= b.opts.PipelineDepth {
		st.drain() // the client has PipelineDepth publishes not yet acked: it waits
	}
	g := b.opts.Pipeline.GateAck(cl, pk.PacketID)
	if g == nil {
		st.flush()
		return false
	}
	m := meta{gate: g, q: qs[0]}
	if len(qs) > 1 {
		m.qs = slices.Clone(qs)
	}
	st.metas = append(st.metas, m)
	st.msgs = append(st.msgs, queue.Message{})
	b.fillMessage(&st.msgs[len(st.msgs)-1], cl, pk)
	if len(st.msgs) >= maxStaged { // a client whose input never runs dry still gets batches written
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
