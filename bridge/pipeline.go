package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/sluicemq/sluice/queue"
)

// Injector runs a PUBLISH through the broker as if the client had just sent it: *mochi.Server's
// InjectPacket. With one, the bridge pipelines QoS 1 acks (see Options.Pipeline).
type Injector interface {
	InjectPacket(cl *mochi.Client, pk packets.Packet) error
}

// injectMark in Mods.MaxSize tells OnPublish that a packet is the bridge's own re-injection.
// Packets read from a client never carry Mods (mochi sets them only on outbound packets), and
// OnPublish clears the mark before mochi uses the packet.
const injectMark = 0x5b1c_e0ff

// Pipelining: the hook does not block the client's read goroutine while a QoS 1 record is being
// made durable. It queues the publish on the client's FIFO, its pipe, and tells mochi to drop the
// packet for now (ErrRejectPacket: no ack, no delivery, no quota change). The pipe's goroutine
// writes everything that accumulated during the previous group commit as one ordered batch and,
// once it is durable, re-injects each PUBLISH into mochi, which then does exactly what it does for
// any publish: ACL, retain, PUBACK, delivery to subscribers, hooks. On failure it writes the
// failure PUBACK itself (MQTT 5) or nothing (3.1.1).
//
// While a client has publishes in its pipe, its later publishes (bridged or not, QoS 0 or 1) go
// through the pipe too, so PUBACKs leave in the order the PUBLISHes came [MQTT-4.6.0-2] and
// subscribers see each topic in order. QoS 2 publishes first wait for the pipe to drain and are
// then handled without pipelining: mochi's QoS 2 state (PUBREC in flight, DUP resends) stays
// mochi's. The pipe holds at most PipelineDepth publishes; a client that sends more waits.

type pipe struct {
	cl      *mochi.Client
	items   chan *pending // in arrival order, for the acks
	pending atomic.Int64  // items queued and not yet handled

	// injectTopic is the topic of the publish the pipe goroutine is re-injecting (nil: none). A
	// re-injected publish denied by an ACL changed since it was read is told apart from one the
	// reader is checking by the identity of its topic string (see injecting).
	injectTopic atomic.Pointer[string]

	batch []*pending // owned by the pipe goroutine: the items of the current round
}

type pending struct {
	pk      packets.Packet
	qs      []string      // queues to write into (none: only keep the order)
	msg     queue.Message // the record, when qs is not empty
	err     error         // of the write
	barrier chan struct{} // non-nil: just signal when reached
}

// pipeFor returns the client's pipe, creating it (and its goroutine) on first use.
func (b *Bridge) pipeFor(cl *mochi.Client) *pipe {
	b.pipesMu.Lock()
	defer b.pipesMu.Unlock()
	if p := b.pipes.pipes[cl]; p != nil {
		return p
	}
	p := &pipe{cl: cl, items: make(chan *pending, b.opts.PipelineDepth)}
	b.pipes.pipes[cl] = p
	b.pipeWG.Add(1)
	go b.runPipe(p)
	return p
}

func (b *Bridge) existingPipe(cl *mochi.Client) *pipe {
	b.pipesMu.Lock()
	defer b.pipesMu.Unlock()
	return b.pipes.pipes[cl]
}

// push queues it on p; it blocks while the pipe is full (backpressure on this client only).
func (p *pipe) push(it *pending) {
	p.pending.Add(1)
	p.items <- it
}

// injecting reports whether topic is the very string (same bytes in memory, not merely equal) of
// the publish the pipe goroutine is re-injecting, that is, whether the caller is the pipe goroutine
// inside InjectPacket. The reader's packets are decoded into strings of their own, so a reader
// checking an equal topic at the same moment is not mistaken for it (and the pipe goroutine must
// not wait for its own pipe to drain).
func (p *pipe) injecting(topic string) bool {
	t := p.injectTopic.Load()
	return t != nil && len(topic) > 0 && len(*t) == len(topic) && unsafe.StringData(*t) == unsafe.StringData(topic)
}

// drain waits until every publish queued on p so far has been handled.
func (p *pipe) drain() {
	if p.pending.Load() == 0 {
		return
	}
	bar := make(chan struct{})
	p.push(&pending{barrier: bar})
	<-bar
}

// closePipe ends the client's pipe after its read loop ended (OnDisconnect runs on the client's
// own goroutine, after its last OnPublish). Queued publishes are still written to their queues.
func (b *Bridge) closePipe(cl *mochi.Client) {
	b.pipesMu.Lock()
	p := b.pipes.pipes[cl]
	delete(b.pipes.pipes, cl)
	b.pipesMu.Unlock()
	if p != nil {
		close(p.items)
	}
}

// writeBatch writes the records of batch (in order) into their queues, queues concurrently, and
// marks each publish done with the first failure among its queues (a full queue wins).
func (b *Bridge) writeBatch(batch []*pending) {
	byQueue := map[string][]*pending{}
	var order []string
	for _, it := range batch {
		for _, q := range it.qs {
			if byQueue[q] == nil {
				order = append(order, q)
			}
			byQueue[q] = append(byQueue[q], it)
		}
	}
	var mu sync.Mutex
	fail := func(it *pending, err error) {
		mu.Lock()
		defer mu.Unlock()
		if it.err == nil {
			it.err = err
		} else if _, full := failure(err); full {
			it.err = err
		}
	}
	write := func(q string) {
		its := byQueue[q]
		if err := b.enqueueBatch(q, its); err != nil {
			if len(its) > 1 && errors.Is(err, queue.ErrTooLarge) {
				for _, it := range its { // find the one too large; the others go in
					if err := b.enqueueBatch(q, []*pending{it}); err != nil {
						fail(it, err)
					}
				}
				return
			}
			for _, it := range its {
				fail(it, err)
			}
		}
	}
	if len(order) == 1 { // the common case: no goroutine to start and wait for
		write(order[0])
		return
	}
	var wg sync.WaitGroup
	for _, q := range order {
		wg.Go(func() { write(q) })
	}
	wg.Wait()
}

func (b *Bridge) enqueueBatch(q string, its []*pending) error {
	msgs := make([]queue.Message, len(its))
	for i, it := range its {
		msgs[i] = it.msg
	}
	if b.closed.Load() {
		b.metrics.failures(q, "closed", len(msgs))
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.EnqueueTimeout)
	defer cancel()
	start := time.Now()
	if _, err := b.q.Enqueue(ctx, q, msgs); err != nil {
		reason, _ := failure(err)
		b.metrics.failures(q, reason, len(msgs))
		return fmt.Errorf("enqueue into %q: %w", q, err)
	}
	d := time.Since(start)
	for _, m := range msgs {
		b.metrics.enqueued(q, m.QoS, d)
	}
	return nil
}

// runPipe is the pipe's goroutine. Each round it takes every item queued so far (at least one),
// writes their records into their queues (one Enqueue per queue: one client shares a group commit
// among everything it sent meanwhile, in order) and then acks them in order by re-injecting each
// publish. While it waits for a commit the next round's items accumulate. The acks of one round
// leave the connection in one write (without holding them, every PUBACK was a write(2) of its own,
// a quarter of the broker's CPU at 100 busy connections).
func (b *Bridge) runPipe(p *pipe) {
	defer b.pipeWG.Done()
	holder, _ := b.opts.Pipeline.(writeHolder)
	for it := range p.items {
		batch := append(p.batch[:0], it)
	more:
		for len(batch) < cap(p.items) {
			select {
			case it, ok := <-p.items:
				if !ok {
					break more
				}
				batch = append(batch, it)
			default:
				break more
			}
		}
		var write []*pending
		for _, it := range batch {
			if len(it.qs) > 0 {
				write = append(write, it)
			}
		}
		if len(write) > 0 {
			b.writeBatch(write)
		}
		release := func() {}
		if holder != nil {
			release = holder.HoldWrites(p.cl)
		}
		for i, it := range batch {
			switch {
			case it.barrier != nil:
				close(it.barrier)
			case it.err != nil:
				b.failAck(p.cl, it.pk, it.err)
			default:
				pk := it.pk
				pk.Mods.MaxSize = injectMark
				// The topic alias was resolved when the packet was read; do not set it again.
				pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false
				p.injectTopic.Store(&pk.TopicName)
				_ = b.opts.Pipeline.InjectPacket(p.cl, pk) // fails only when the client is gone: it resends
				p.injectTopic.Store(nil)
			}
			batch[i] = nil
			p.pending.Add(-1)
		}
		release()
		p.batch = batch[:0]
	}
}

// inputPeeker is implemented by *mqtt.Server: see its InputBuffered.
type inputPeeker interface {
	InputBuffered(cl *mochi.Client) bool
}

// writeHolder is implemented by *mqtt.Server: see its HoldWrites.
type writeHolder interface {
	HoldWrites(cl *mochi.Client) (release func())
}

// failAck tells the publisher its publish was not stored: MQTT 5 gets a PUBACK with a reason code,
// MQTT 3.1.1 nothing (it resends).
func (b *Bridge) failAck(cl *mochi.Client, pk packets.Packet, err error) {
	if cl.Properties.ProtocolVersion != 5 || pk.FixedHeader.Qos == 0 {
		return
	}
	code := packets.ErrUnspecifiedError
	if _, full := failure(err); full {
		code = packets.ErrQuotaExceeded
	}
	_ = cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Puback},
		PacketID:    pk.PacketID,
		ReasonCode:  code.Code,
		Properties:  packets.Properties{ReasonString: code.Reason},
	})
}

// pipelined handles a QoS 0 or 1 publish of a network client when pipelining is on. It returns
// handled=false when the publish should take the ordinary path (nothing pending, nothing to store).
func (h *hook) pipelined(cl *mochi.Client, pk packets.Packet, qs []string) (handled bool) {
	b := h.b
	p := b.existingPipe(cl)
	busy := p != nil && p.pending.Load() > 0
	if pk.FixedHeader.Qos == 0 || len(qs) == 0 {
		if !busy {
			return false
		}
		// Behind pending publishes: keep the order.
		if len(qs) > 0 {
			msg := b.message(cl, &pk)
			for _, q := range qs {
				b.offer(q, msg)
			}
		}
		p.push(&pending{pk: pk})
		return true
	}
	if !busy {
		// Nothing pending and nothing received behind this publish: pipelining would only add
		// the pipe's hand-offs to its ack. Block instead; the reader has nothing else to do.
		if in, ok := b.opts.Pipeline.(inputPeeker); ok && !in.InputBuffered(cl) {
			return false
		}
	}
	if p == nil {
		p = b.pipeFor(cl)
	}
	p.push(&pending{pk: pk, qs: slices.Clone(qs), msg: b.message(cl, &pk)}) // blocks while the pipe is full
	return true
}

// pipes is the per-client state of pipelining, guarded by pipesMu.
type pipes struct {
	pipesMu sync.Mutex
	pipes   map[*mochi.Client]*pipe
}
