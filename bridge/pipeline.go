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

// AckGater holds the acknowledgement of a publish on its connection until it is opened:
// *mqtt.Server is one (see mqtt.AckGate). With one, the bridge pipelines QoS 1 acks (see
// Options.Pipeline).
type AckGater interface {
	GateAck(cl *mochi.Client, packetID uint16) *mqtt.AckGate
	OpenAcks(gates []*mqtt.AckGate, codes []byte)
}

// Pipelining: the hook does not block the client's read goroutine while a QoS 1 record is being
// made durable. It gates the publish's PUBACK on the connection (AckGater.GateAck), queues the
// record on the client's FIFO, its pipe, and lets mochi handle the publish at once as it does any
// other: ACL, retain, delivery to subscribers, PUBACK — which waits at the gate. The pipe's
// goroutine writes everything that accumulated during the previous group commit as one ordered
// batch and, once it is durable, opens the round's gates together: their PUBACKs leave in one
// write, or, for a record that failed, a PUBACK with 0x97 or 0x80 (MQTT 5) or nothing (3.1.1).
//
// Acknowledgements written behind a gate wait behind it (mqtt.AckGate), so PUBACKs leave in the
// order the PUBLISHes came [MQTT-4.6.0-2] also when unbridged or denied publishes are mixed in.
// Subscribers get messages in the order they were published, before they are durable (as they
// would without the bridge); a publish whose record fails was delivered to subscribers all the
// same, and a 3.1.1 client's resend of it is delivered again (QoS 1 is at least once). QoS 2
// publishes first wait for the pipe to drain and are then handled without pipelining: mochi's QoS 2
// state (PUBREC in flight, DUP resends) stays mochi's. The pipe holds at most PipelineDepth
// publishes; a client that sends more waits.

type pipe struct {
	cl      *mochi.Client
	items   chan *pending // in arrival order
	pending atomic.Int64  // items queued and not yet handled

	batch []*pending // owned by the pipe goroutine: the items of the current round
	gates []*mqtt.AckGate
	codes []byte
}

type pending struct {
	gate    *mqtt.AckGate
	qs      []string // queues to write into (in qbuf unless a message matches more)
	qbuf    [4]string
	msg     queue.Message // the record
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
			if len(its) > 1 && (errors.Is(err, queue.ErrTooLarge) || errors.Is(err, queue.ErrFull)) {
				// A batch is refused whole; one by one, in order, what fits goes in as it would
				// have, sent alone: the first publishes before a full queue, all but a too-large one.
				for _, it := range its {
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
	if err := b.q.Add(ctx, q, msgs); err != nil {
		reason, _ := failure(err)
		b.metrics.failures(q, reason, len(msgs))
		return fmt.Errorf("enqueue into %q: %w", q, err)
	}
	b.metrics.enqueuedAll(q, msgs, time.Since(start))
	return nil
}

// runPipe is the pipe's goroutine. Each round it takes every item queued so far (at least one),
// writes their records into their queues (one Enqueue per queue: one client shares a group commit
// among everything it sent meanwhile, in order) and then opens their gates together, so that the
// round's PUBACKs leave the connection in one write. While it waits for a commit the next round's
// items accumulate.
func (b *Bridge) runPipe(p *pipe) {
	defer b.pipeWG.Done()
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
			if it.barrier == nil {
				write = append(write, it)
			}
		}
		if len(write) > 0 {
			b.writeBatch(write)
		}
		gates, codes := p.gates[:0], p.codes[:0]
		for _, it := range write {
			gates = append(gates, it.gate)
			codes = append(codes, ackCode(it.err))
		}
		if len(gates) > 0 {
			b.opts.Pipeline.OpenAcks(gates, codes)
		}
		for i, it := range batch {
			if it.barrier != nil {
				close(it.barrier)
			} else {
				*it = pending{}
				pendingPool.Put(it)
			}
			batch[i] = nil
		}
		clear(gates)
		p.gates, p.codes = gates[:0], codes[:0]
		p.pending.Add(-int64(len(batch)))
		p.batch = batch[:0]
	}
}

// pendingPool recycles the pipes' items (a record and its gate; about 1 KB a publish otherwise).
var pendingPool = sync.Pool{New: func() any { return new(pending) }}

// ackCode is the PUBACK reason code for a publish whose record write ended with err.
func ackCode(err error) byte {
	if err == nil {
		return packets.CodeSuccess.Code
	}
	return failCode(err).Code
}

// inputPeeker is implemented by *mqtt.Server: see its InputBuffered.
type inputPeeker interface {
	InputBuffered(cl *mochi.Client) bool
}

// pipelined handles a bridged QoS 1 publish of a network client when pipelining is on. It
// returns false when the publish should take the blocking path.
func (h *hook) pipelined(cl *mochi.Client, pk *packets.Packet, qs []string) bool {
	b := h.b
	p := b.existingPipe(cl)
	if p == nil || p.pending.Load() == 0 {
		// Nothing pending and nothing received behind this publish: pipelining would only add
		// the pipe's hand-offs to its ack. Block instead; the reader has nothing else to do.
		if in, ok := b.opts.Pipeline.(inputPeeker); ok && !in.InputBuffered(cl) {
			return false
		}
	}
	g := b.opts.Pipeline.GateAck(cl, pk.PacketID)
	if g == nil {
		return false
	}
	if p == nil {
		p = b.pipeFor(cl)
	}
	it := pendingPool.Get().(*pending)
	it.gate, it.qs = g, append(it.qbuf[:0], qs...)
	b.fillMessage(&it.msg, cl, pk)
	p.push(it) // blocks while the pipe is full
	return true
}

// pipes is the per-client state of pipelining, guarded by pipesMu.
type pipes struct {
	pipesMu sync.Mutex
	pipes   map[*mochi.Client]*pipe
}
