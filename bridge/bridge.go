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
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/queue"
)

// Enqueuer stores messages durably: *queue.Manager is one. Add returns once the messages are
// durable under the queue's sync policy, or an error (queue.ErrFull, ...).
type Enqueuer interface {
	Add(ctx context.Context, q string, msgs []queue.Message) error
	// AddAsync is Add without the wait: done gets the outcome (see queue.Manager.AddAsync).
	AddAsync(q string, msgs []queue.Message, done func(error)) error
}

// ErrClosed is returned by Close after the first call, and is the failure of publishes
// that arrive after Close.
var ErrClosed = errors.New("bridge: closed")

// Options configure a Bridge. The zero value is valid (no rules: nothing is bridged).
type Options struct {
	Rules []Rule
	// EnqueueTimeout bounds how long a QoS 1/2 publish waits for its record to be durable;
	// 0 → 5s. It is further capped at half the client's keep-alive deadline, because mochi
	// applies one connection deadline to reading the packet and writing its ack.
	EnqueueTimeout time.Duration
	// AsyncBuffer is the number of QoS 0 messages buffered per queue for the background writer;
	// 0 → 8192. When a queue's buffer is full, further QoS 0 messages for it are dropped and counted.
	AsyncBuffer int
	// AsyncBatch is the largest batch the background writer enqueues at once; 0 → 512.
	AsyncBatch int
	// Pipeline, when set (the broker's *mqtt.Server), lets a connection have many QoS 1 publishes
	// waiting for durability at once instead of one: the hook returns at once and the publish's
	// PUBACK waits on the connection until the record is durable (see pipeline.go). nil → OnPublish
	// blocks until the record is durable, which caps one connection at one group commit per message.
	Pipeline AckGater
	// PipelineDepth bounds the pipelined publishes of one client not yet acked; 0 → 256.
	PipelineDepth int
	Logger        zerolog.Logger
	Registerer    prometheus.Registerer // nil → no metrics
	Clock         func() time.Time      // nil → time.Now
}

// Bridge routes published MQTT messages into queues according to its rules.
// Add its Hook to the mqtt server before the server starts; Close it after the MQTT
// listeners have stopped and before the queues close.
type Bridge struct {
	q       Enqueuer
	router  *router
	opts    Options
	log     zerolog.Logger
	now     func() time.Time
	metrics *metrics

	async map[string]*asyncQueue // QoS 0 writers, one per rule queue, fixed at New

	stages // per-client pipelining state (pipeline.go)

	closed    atomic.Bool
	closeOnce sync.Once
	stop      chan struct{}
	wg        sync.WaitGroup // QoS 0 writers
}

// New validates the rules and starts one background writer per rule queue (for QoS 0).
// It returns a *RuleError wrapping ErrInvalidRule for a bad rule.
func New(q Enqueuer, opts Options) (*Bridge, error) {
	if q == nil {
		return nil, errors.New("bridge: nil Enqueuer")
	}
	if err := ValidateRules(opts.Rules); err != nil {
		return nil, err
	}
	if opts.EnqueueTimeout < 0 || opts.AsyncBuffer < 0 || opts.AsyncBatch < 0 || opts.PipelineDepth < 0 {
		return nil, errors.New("bridge: negative EnqueueTimeout, AsyncBuffer, AsyncBatch or PipelineDepth")
	}
	if opts.PipelineDepth == 0 {
		opts.PipelineDepth = 256
	}
	if opts.EnqueueTimeout == 0 {
		opts.EnqueueTimeout = 5 * time.Second
	}
	if opts.AsyncBuffer == 0 {
		opts.AsyncBuffer = 8192
	}
	if opts.AsyncBatch == 0 {
		opts.AsyncBatch = 512
	}
	b := &Bridge{
		q:      q,
		router: newRouter(opts.Rules),
		opts:   opts,
		log:    opts.Logger.With().Str("component", "bridge").Logger(),
		now:    opts.Clock,
		async:  make(map[string]*asyncQueue),
		stop:   make(chan struct{}),
	}
	if b.now == nil {
		b.now = time.Now
	}
	m, err := newMetrics(opts.Registerer, b.router.queues())
	if err != nil {
		return nil, err
	}
	b.metrics = m
	for _, name := range b.router.queues() {
		aq := &asyncQueue{name: name, ch: make(chan queue.Message, opts.AsyncBuffer)}
		b.async[name] = aq
		b.wg.Add(1)
		go b.runAsync(aq)
	}
	return b, nil
}

// Queues returns the distinct queue names the rules route to, sorted: the queues to declare.
func (b *Bridge) Queues() []string { return b.router.queues() }

// Route returns the distinct queues a message on topic published with qos goes into.
func (b *Bridge) Route(topic string, qos byte) []string { return b.router.route(nil, topic, qos) }

// Hook returns the mochi hook to add to the MQTT server (mqtt.Server.AddHook(b.Hook(), nil)).
func (b *Bridge) Hook() mochi.Hook { return &hook{b: b} }

// Close stops accepting messages, writes the QoS 0 messages still buffered (bounded by ctx),
// and stops the background writers; with pipelining it waits until every pipelined publish is
// decided (durable, failed, or past EnqueueTimeout), which needs the broker to have disconnected
// its clients first (so shut the broker down first). Later calls return ErrClosed.
func (b *Bridge) Close(ctx context.Context) error {
	err := ErrClosed
	b.closeOnce.Do(func() {
		err = nil
		b.stages.closeMu.Lock()
		b.closed.Store(true)
		b.stages.closeMu.Unlock()
		close(b.stop)
		done := make(chan struct{})
		go func() {
			b.wg.Wait()
			b.stages.rounds.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			err = fmt.Errorf("bridge: drain QoS 0 buffers: %w", ctx.Err())
			<-done // the writers' Enqueue calls are bounded by EnqueueTimeout
		}
	})
	return err
}

// failure classifies an Enqueue error for metrics and for the MQTT reason code.
func failure(err error) (reason string, full bool) {
	switch {
	case errors.Is(err, queue.ErrFull):
		return "full", true
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout", false
	case errors.Is(err, queue.ErrTooLarge):
		return "too_large", false
	case errors.Is(err, queue.ErrNotFound):
		return "not_found", false
	case errors.Is(err, queue.ErrClosed), errors.Is(err, ErrClosed):
		return "closed", false
	default:
		return "error", false
	}
}

// failCode is the MQTT 5 reason code for a publish whose record could not be stored: 0x97 (quota
// exceeded) when a queue is full, 0x80 otherwise.
func failCode(err error) packets.Code {
	if _, full := failure(err); full {
		return packets.ErrQuotaExceeded
	}
	return packets.ErrUnspecifiedError
}

// message builds the queue record of a PUBLISH.
func (b *Bridge) message(cl *mochi.Client, pk *packets.Packet) queue.Message {
	var m queue.Message
	b.fillMessage(&m, cl, pk)
	return m
}

// fillMessage sets *m to the record of pk, in place: a stage appends records to its slice (pipeline.go).
func (b *Bridge) fillMessage(m *queue.Message, cl *mochi.Client, pk *packets.Packet) {
	p := &pk.Properties
	*m = queue.Message{
		Topic:      pk.TopicName,
		ClientID:   cl.ID,
		Username:   string(cl.Properties.Username),
		QoS:        pk.FixedHeader.Qos,
		Retain:     pk.FixedHeader.Retain,
		ReceivedAt: b.now(),
		Payload:    pk.Payload,
		Properties: queue.Properties{
			ContentType:     p.ContentType,
			CorrelationData: p.CorrelationData,
			ResponseTopic:   p.ResponseTopic,
		},
	}
	if p.PayloadFormatFlag {
		pf := p.PayloadFormat
		m.Properties.PayloadFormat = &pf
	}
	if p.MessageExpiryInterval > 0 {
		me := p.MessageExpiryInterval
		m.Properties.MessageExpiry = &me
	}
	if len(p.User) > 0 {
		m.Properties.UserProperties = make([]queue.UserProperty, len(p.User))
		for i, u := range p.User {
			m.Properties.UserProperties[i] = queue.UserProperty{Key: u.Key, Value: u.Val}
		}
	}
}

// enqueueDurable writes msg into every queue of qs and waits until each is durable.
// Several queues are written concurrently: the publisher waits for one group commit, not one per queue.
func (b *Bridge) enqueueDurable(ctx context.Context, qs []string, msg queue.Message) error {
	if b.closed.Load() {
		for _, q := range qs {
			b.metrics.failure(q, "closed")
		}
		return ErrClosed
	}
	if len(qs) == 1 {
		return b.enqueueOne(ctx, qs[0], msg)
	}
	errs := make([]error, len(qs))
	var wg sync.WaitGroup
	for i := 1; i < len(qs); i++ {
		q := qs[i] // not qs: the caller's route buffer stays on its stack
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = b.enqueueOne(ctx, q, msg)
		}()
	}
	errs[0] = b.enqueueOne(ctx, qs[0], msg)
	wg.Wait()
	// A full queue decides the reason code when any queue is full.
	var first error
	for _, err := range errs {
		if err == nil {
			continue
		}
		if _, full := failure(err); full {
			return err
		}
		if first == nil {
			first = err
		}
	}
	return first
}

func (b *Bridge) enqueueOne(ctx context.Context, q string, msg queue.Message) error {
	start := time.Now()
	err := b.q.Add(ctx, q, []queue.Message{msg})
	if err != nil {
		reason, _ := failure(err)
		b.metrics.failure(q, reason)
		return fmt.Errorf("enqueue into %q: %w", q, err)
	}
	b.metrics.enqueued(q, msg.QoS, time.Since(start))
	return nil
}

// asyncQueue buffers QoS 0 messages for one queue.
type asyncQueue struct {
	name string
	ch   chan queue.Message
}

// offer buffers msg for q without waiting; a full buffer drops it (counted).
func (b *Bridge) offer(q string, msg queue.Message) {
	aq := b.async[q]
	if aq == nil || b.closed.Load() {
		b.metrics.dropped(q)
		return
	}
	select {
	case aq.ch <- msg:
	default:
		b.metrics.dropped(q)
	}
}

func (b *Bridge) runAsync(aq *asyncQueue) {
	defer b.wg.Done()
	batch := make([]queue.Message, 0, b.opts.AsyncBatch)
	// fill adds what is buffered, without waiting, up to a batch.
	fill := func(batch []queue.Message) []queue.Message {
		for len(batch) < b.opts.AsyncBatch {
			select {
			case m := <-aq.ch:
				batch = append(batch, m)
			default:
				return batch
			}
		}
		return batch
	}
	for {
		select {
		case m := <-aq.ch:
			batch = fill(append(batch[:0], m))
			b.writeAsync(aq.name, batch)
		case <-b.stop:
			// Write what was buffered before Close, then stop.
			for {
				batch = fill(batch[:0])
				if len(batch) == 0 {
					return
				}
				b.writeAsync(aq.name, batch)
			}
		}
	}
}

func (b *Bridge) writeAsync(q string, batch []queue.Message) {
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.EnqueueTimeout)
	defer cancel()
	start := time.Now()
	err := b.q.Add(ctx, q, batch)
	if err != nil {
		reason, _ := failure(err)
		b.metrics.failures(q, reason, len(batch))
		return
	}
	b.metrics.enqueuedAll(q, batch, time.Since(start))
}

// hook is the mochi side of the bridge.
type hook struct {
	mochi.HookBase
	b *Bridge
}

func (h *hook) ID() string { return "sluice-bridge" }

func (h *hook) Provides(x byte) bool {
	return x == mochi.OnPublish || ((x == mochi.OnDisconnect || x == mochi.OnACLCheck) && h.b.opts.Pipeline != nil)
}

// OnACLCheck keeps the acks of an MQTT 3.1.1 client whose publish the broker's ACL denies. mochi
// asks a hook only after every earlier one denied (any hook allowing allows), and disconnects a
// 3.1.1 client at once (there is no reason code to send): the client's pipelined publishes first
// get their PUBACKs. (An MQTT 5 client gets PUBACK 0x87, which waits behind the pending ones on its
// connection.) It never allows anything itself.
func (h *hook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	if !write || cl.Properties.ProtocolVersion == 5 {
		return false
	}
	if st := h.b.stageOf(cl); st != nil {
		st.drain()
	}
	return false
}

// OnDisconnect ends the client's stage (what it staged is still stored).
func (h *hook) OnDisconnect(cl *mochi.Client, _ error, _ bool) { h.b.closeStage(cl) }

// timeout returns how long a publish of cl may wait for durability.
func (h *hook) timeout(cl *mochi.Client) time.Duration {
	d := h.b.opts.EnqueueTimeout
	if ka := cl.State.Keepalive; ka > 0 {
		// mochi's deadline for the whole read+process+ack is 1.5 × keep-alive; keep half of it.
		if half := time.Duration(ka) * 1500 * time.Millisecond / 2; half < d {
			d = half
		}
	}
	return d
}

// OnPublish bridges pk into the queues of the rules it matches. For QoS 1 and 2 the ack waits
// until the record is durable in every such queue: OnPublish returns only then, or (pipelining)
// gates the PUBACK on the connection. On failure no success ack is sent: MQTT 5 clients get 0x97
// (a queue is full) or 0x80, MQTT 3.1.1 clients get no ack at all.
func (h *hook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	var buf [4]string
	qs := h.b.router.route(buf[:0], pk.TopicName, pk.FixedHeader.Qos)
	if h.b.opts.Pipeline != nil && !cl.Net.Inline {
		if pk.FixedHeader.Qos == 2 {
			if st := h.b.stageOf(cl); st != nil {
				st.drain()
			}
		} else if pk.FixedHeader.Qos == 1 && len(qs) > 0 && h.pipelined(cl, &pk, qs) {
			return pk, nil // mochi goes on; its PUBACK waits at the gate until the record is durable
		}
	}
	if len(qs) == 0 {
		return pk, nil
	}
	msg := h.b.message(cl, &pk)
	if pk.FixedHeader.Qos == 0 {
		for _, q := range qs {
			h.b.offer(q, msg)
		}
		return pk, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.timeout(cl))
	err := h.b.enqueueDurable(ctx, qs, msg)
	cancel()
	if err == nil {
		return pk, nil
	}
	code := failCode(err)
	if cl.Properties.ProtocolVersion != 5 || cl.Net.Inline {
		return pk, packets.ErrRejectPacket // no ack: the client will resend
	}
	if pk.FixedHeader.Qos == 2 {
		// mochi answers a hook's reason code with a PUBACK even for QoS 2; a QoS 2 publisher
		// expects a PUBREC, so write it here and tell mochi to do nothing more.
		ack := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Pubrec},
			PacketID:    pk.PacketID,
			ReasonCode:  code.Code,
			Properties:  packets.Properties{ReasonString: code.Reason},
		}
		if werr := cl.WritePacket(ack); werr != nil {
			h.b.log.Debug().Err(werr).Str("client_id", cl.ID).Msg("write pubrec failed")
		}
		return pk, packets.ErrRejectPacket
	}
	// mochi writes a PUBACK carrying this code; it must be a bare packets.Code (mochi type-asserts it).
	return pk, code
}
