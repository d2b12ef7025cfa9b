package bridge

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sluicemq/sluice/queue"
)

// upShutdownGrace bounds how long Close waits for the publishes in flight to be confirmed.
const upShutdownGrace = 5 * time.Second

// upPending is one received message the uplink holds until the upstream confirms it.
type upPending struct {
	d    queue.Delivery
	seq  uint64
	sent bool // published on the current connection, answer awaited
	done bool // settled: confirmed, refused, expired or lost its lease
}

type upFetch struct {
	ds  []queue.Delivery
	err error
}

// upDrain is the state of the forwarding loop; it is owned by the run goroutine.
type upDrain struct {
	u        *Uplink
	held     []*upPending // in receive order; done entries are dropped from the front
	bySeq    map[uint64]*upPending
	sendIdx  int // held[sendIdx:] are not yet published on the current connection
	nextSeq  uint64
	inflight int
	limiter  upTokenBucket
	acks     []string
	nacks    []string
	fatal    error // a queue-level failure (the queue closed): stop
	lastWarn time.Time
	extended time.Time // when the held leases were last renewed
	sentConn int       // publishes written on the current connection
	strikes  int       // connections in a row lost after publishing with nothing confirmed
}

// upStrikes is how many connections in a row may be lost after publishing, with nothing confirmed,
// before the first unconfirmed message is blamed: it goes back to the queue (an attempt counted), so
// that a message the upstream answers by disconnecting (too large, a topic it rejects) cannot block
// the uplink forever; it ends in the dead-letter queue after max attempts.
const upStrikes = 5

// errUpstreamQoS0 is the failure of a connection to an upstream that takes only QoS 0.
var errUpstreamQoS0 = errors.New("bridge: the upstream accepts only QoS 0 publishes; store and forward needs QoS 1 or 2")

func (u *Uplink) params(results chan<- upResult) upParams {
	p := upParams{
		url:       u.url,
		tls:       u.tls,
		version:   u.opts.ProtocolVersion,
		clientID:  u.opts.ClientID,
		username:  u.opts.Username,
		password:  u.opts.Password,
		keepAlive: u.opts.KeepAlive,
		timeout:   u.opts.Timeout,
		results:   results,
	}
	if u.down != nil {
		u.down.params(&p)
	}
	return p
}

func (u *Uplink) run(ctx context.Context) {
	defer u.wg.Done()
	d := &upDrain{u: u, bySeq: make(map[uint64]*upPending), limiter: upTokenBucket{rate: u.opts.Rate, burst: float64(u.opts.Burst)}}
	defer d.shutdown()
	if !u.waitRecovered(ctx) {
		return
	}
	failures := 0
	for ctx.Err() == nil && d.fatal == nil {
		u.state.Store(UplinkConnecting)
		d.keepLeases()
		results := make(chan upResult, u.opts.MaxInFlight+1)
		conn, err := upConnect(ctx, u.params(results))
		d.keepLeases()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			u.fail("connect", 1)
			u.setErr(err)
			u.log.Warn().Err(err).Int("failures", failures).Msg("upstream connection failed")
			if !d.sleep(ctx, u.opts.Backoff.delay(failures)) {
				return
			}
			continue
		}
		u.mu.Lock()
		u.upSince = time.Now()
		u.mu.Unlock()
		u.state.Store(UplinkConnected)
		u.log.Info().Str("url", upRedactURL(u.url)).Int("held", len(d.bySeq)).Msg("upstream connected")
		start := time.Now()
		confirmed, err := d.serve(ctx, conn, results)
		conn.close()
		confirmed += d.collect(results)
		d.inflight = 0
		u.inflight.Store(0)
		u.state.Store(UplinkConnecting)
		if d.fatal != nil {
			err = d.fatal
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, queue.ErrClosed) || errors.Is(err, queue.ErrNotFound) {
			d.fatal = err
			u.setErr(err)
			u.log.Error().Err(err).Msg("local queue gone; uplink stops")
			return
		}
		u.fail("connection_lost", 1)
		u.setErr(err)
		u.log.Warn().Err(err).Int("held", len(d.bySeq)).Msg("upstream connection lost")
		if confirmed > 0 || time.Since(start) > 10*time.Second {
			failures = 0
		}
		d.blame(confirmed)
		failures++
		if !d.sleep(ctx, u.opts.Backoff.delay(failures)) {
			return
		}
	}
}

// waitRecovered waits, up to RecoveryWait, until the queue has no leased or delayed message: after
// a crash, messages the previous process had leased come back when their leases expire (plus the
// queue's backoff), and draining only then lets the queue hand them out first, in order.
func (u *Uplink) waitRecovered(ctx context.Context) bool {
	deadline := time.Now().Add(u.opts.RecoveryWait)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	logged := false
	for {
		st, err := u.src.Stats(u.opts.Queue)
		if err != nil || (st.Leased == 0 && st.Delayed == 0) || time.Now().After(deadline) {
			return ctx.Err() == nil
		}
		if !logged {
			u.log.Info().Int64("leased", st.Leased).Int64("delayed", st.Delayed).Dur("max_wait", u.opts.RecoveryWait).
				Msg("waiting for messages left leased by a previous run")
			logged = true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// sleep waits for d, keeping the held messages' leases alive; false when ctx ended first.
func (d *upDrain) sleep(ctx context.Context, wait time.Duration) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	keep := time.NewTicker(d.u.opts.Lease / 6)
	defer keep.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return d.fatal == nil
		case <-keep.C:
			d.keepLeases()
			if d.fatal != nil {
				return false
			}
		}
	}
}

// keepLeases renews the held leases when a third of the lease has passed since the last renewal.
func (d *upDrain) keepLeases() {
	if time.Since(d.extended) >= d.u.opts.Lease/3 {
		d.extend()
	}
}

// blame counts a connection that was lost after publishing with nothing confirmed; after upStrikes
// in a row, the first unconfirmed message goes back to the queue (see upStrikes).
func (d *upDrain) blame(confirmed int) {
	if confirmed > 0 || d.sentConn == 0 {
		d.strikes = 0
		return
	}
	d.strikes++
	if d.strikes < upStrikes {
		return
	}
	d.strikes = 0
	for _, p := range d.held {
		if p.done {
			continue
		}
		p.done = true
		delete(d.bySeq, p.seq)
		d.nacks = append(d.nacks, p.d.Receipt)
		d.u.fail("refused", 1)
		d.u.log.Warn().Str("topic", p.d.Topic).Str("message_id", p.d.ID).Int("attempt", p.d.Attempt).Int("connections", upStrikes).
			Msg("the upstream dropped the connection each time this message was sent; it goes back to the queue")
		d.settle()
		return
	}
}

func (d *upDrain) fetch(ctx context.Context, want <-chan int, got chan<- upFetch, done chan<- struct{}) {
	defer close(done)
	for {
		var n int
		select {
		case n = <-want:
		case <-ctx.Done():
			return
		}
		ds, err := d.u.src.Receive(ctx, d.u.opts.Queue, n, d.u.opts.Lease)
		if len(ds) == 0 && err == nil {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		got <- upFetch{ds, err} // serve reads got until done is closed
	}
}

func (d *upDrain) add(ds []queue.Delivery) {
	for i := range ds {
		d.nextSeq++
		p := &upPending{d: ds[i], seq: d.nextSeq}
		d.held = append(d.held, p)
		d.bySeq[p.seq] = p
	}
}

// serve forwards on conn until it is lost, a queue call fails or ctx ends. It returns how many
// messages the upstream confirmed.
func (d *upDrain) serve(ctx context.Context, conn upstreamConn, results <-chan upResult) (confirmed int, err error) {
	u := d.u
	window := min(u.opts.MaxInFlight, conn.window())
	qos := min(u.opts.QoS, conn.maxQoS())
	if qos == 0 {
		return 0, errUpstreamQoS0
	}
	// A new connection: everything held is published again, in order.
	d.compact(true)
	for _, p := range d.held {
		p.sent = false
	}
	d.sendIdx = 0
	d.sentConn = 0

	fctx, cancelFetch := context.WithCancel(ctx)
	want := make(chan int, 1)
	got := make(chan upFetch)
	fdone := make(chan struct{})
	go d.fetch(fctx, want, got, fdone)
	defer func() {
		cancelFetch()
		for {
			select {
			case f := <-got:
				d.add(f.ds)
			case <-fdone:
				return
			}
		}
	}()
	fetching := false
	keep := time.NewTicker(u.opts.Lease / 6)
	defer keep.Stop()
	var rateC <-chan time.Time
	for {
		if d.fatal != nil {
			return confirmed, d.fatal
		}
		sent := 0
		for d.sendIdx < len(d.held) && d.inflight < window && rateC == nil {
			p := d.held[d.sendIdx]
			if p.done {
				d.sendIdx++
				continue
			}
			if w := d.limiter.take(time.Now()); w > 0 {
				rateC = time.After(w)
				break
			}
			d.sendIdx++
			m := d.message(p, qos)
			if m == nil {
				continue
			}
			if err := conn.publish(m); err != nil {
				return confirmed, err
			}
			p.sent = true
			d.inflight++
			d.sentConn++
			sent++
		}
		u.inflight.Store(int64(d.inflight))
		if sent > 0 {
			if err := conn.flush(); err != nil {
				return confirmed, err
			}
		}
		if len(d.acks) > 0 { // expired messages
			confirmed += d.settle()
		}
		if !fetching && len(d.held)-d.sendIdx <= u.opts.Batch/2 && len(d.bySeq) < window+u.opts.Batch {
			want <- u.opts.Batch
			fetching = true
		}
		select {
		case r := <-results:
			d.handle(r)
			d.drainResults(results)
			confirmed += d.settle()
		case f := <-got:
			fetching = false
			if f.err != nil {
				return confirmed, f.err
			}
			d.add(f.ds)
		case <-rateC:
			rateC = nil
		case <-keep.C:
			d.keepLeases()
		case <-conn.lost():
			return confirmed, conn.cause()
		case <-ctx.Done():
			return confirmed + d.finish(conn, results), ctx.Err()
		}
	}
}

// finish waits, on shutdown, for the publishes in flight to be confirmed (bounded by upShutdownGrace
// and Close's ctx), and acks them.
func (d *upDrain) finish(conn upstreamConn, results <-chan upResult) int {
	n := 0
	grace := time.NewTimer(upShutdownGrace)
	defer grace.Stop()
	for d.inflight > 0 {
		select {
		case r := <-results:
			d.handle(r)
			d.drainResults(results)
			n += d.settle()
		case <-conn.lost():
			return n
		case <-d.u.abort:
			return n
		case <-grace.C:
			return n
		}
	}
	return n
}

// collect handles the answers that arrived before the connection closed.
func (d *upDrain) collect(results <-chan upResult) int {
	d.drainResults(results)
	return d.settle()
}

func (d *upDrain) drainResults(results <-chan upResult) {
	for {
		select {
		case r := <-results:
			d.handle(r)
		default:
			return
		}
	}
}

func (d *upDrain) handle(r upResult) {
	p := d.bySeq[r.seq]
	if p == nil || !p.sent {
		return
	}
	d.inflight--
	p.done = true
	delete(d.bySeq, r.seq)
	if r.code >= 0x80 {
		d.nacks = append(d.nacks, p.d.Receipt)
		d.u.fail("refused", 1)
		if now := time.Now(); now.Sub(d.lastWarn) > 10*time.Second { // one line per 10s, the counter has the rest
			d.lastWarn = now
			d.u.log.Warn().Str("topic", p.d.Topic).Str("message_id", p.d.ID).Int("attempt", p.d.Attempt).
				Str("reason_code", fmt.Sprintf("0x%02x", r.code)).Str("reason", r.reason).Msg("upstream refused a message; it goes back to the queue")
		}
		return
	}
	d.acks = append(d.acks, p.d.Receipt)
}

// message builds the upstream publish of p; nil when the message expired (it is then acked away).
func (d *upDrain) message(p *upPending, qos byte) *upOut {
	u := d.u
	m := &upOut{
		seq:     p.seq,
		topic:   u.opts.Topic.apply(p.d.Topic, u.opts.Gateway),
		qos:     qos,
		retain:  p.d.Retain,
		payload: p.d.Payload,
	}
	if u.opts.ProtocolVersion != 5 {
		return m
	}
	m.props = &p.d.Properties
	if exp := p.d.Properties.MessageExpiry; exp != nil {
		born := p.d.ReceivedAt
		if born.IsZero() {
			born = p.d.EnqueuedAt
		}
		age := uint32(max(0, time.Since(born)/time.Second))
		if age >= *exp {
			p.done = true
			delete(d.bySeq, p.seq)
			d.acks = append(d.acks, p.d.Receipt)
			u.metrics.fail("expired", 1)
			return nil
		}
		rem := *exp - age
		m.expiry = &rem
	}
	return m
}

// settle acks the confirmed messages and nacks the refused ones; it returns how many were acked.
func (d *upDrain) settle() int {
	u := d.u
	n := 0
	if len(d.acks) > 0 {
		res, err := u.src.Ack(u.opts.Queue, d.acks)
		switch {
		case err != nil:
			d.queueFailure("ack", err, len(d.acks))
		default:
			for _, e := range res {
				if e != nil {
					u.metrics.fail("stale_receipt", 1) // the lease ran out: the message will come again
					continue
				}
				n++
			}
		}
		d.acks = d.acks[:0]
	}
	if len(d.nacks) > 0 {
		if _, err := u.src.Nack(u.opts.Queue, d.nacks, 0); err != nil {
			d.queueFailure("nack", err, len(d.nacks))
		}
		d.nacks = d.nacks[:0]
	}
	u.forwarded.Add(uint64(n))
	u.metrics.forward(n)
	d.compact(false)
	return n
}

func (d *upDrain) queueFailure(op string, err error, n int) {
	if errors.Is(err, queue.ErrClosed) || errors.Is(err, queue.ErrNotFound) {
		d.fatal = err
		return
	}
	d.u.log.Error().Err(err).Str("op", op).Int("messages", n).Msg("local queue call failed; the messages will be delivered again")
}

// compact drops settled entries: from the front only (all when all is set, between connections).
func (d *upDrain) compact(all bool) {
	if all {
		kept := d.held[:0]
		for _, p := range d.held {
			if !p.done {
				kept = append(kept, p)
			}
		}
		clear(d.held[len(kept):])
		d.held = kept
		return
	}
	i := 0
	for i < len(d.held) && d.held[i].done {
		i++
	}
	if i == 0 {
		return
	}
	clear(d.held[:i])
	d.held = d.held[i:]
	d.sendIdx = max(0, d.sendIdx-i)
	if len(d.held) == 0 {
		d.held = d.held[:0:0] // let the backing array go
	}
}

// extend renews the leases of the held messages. A message whose lease already ran out is dropped if
// it was not published on this connection (the queue will deliver it again).
func (d *upDrain) extend() {
	u := d.u
	d.extended = time.Now()
	if len(d.bySeq) == 0 {
		return
	}
	ps := make([]*upPending, 0, len(d.bySeq))
	receipts := make([]string, 0, len(d.bySeq))
	for _, p := range d.held {
		if !p.done {
			ps = append(ps, p)
			receipts = append(receipts, p.d.Receipt)
		}
	}
	res, err := u.src.Extend(u.opts.Queue, receipts, u.opts.Lease)
	if err != nil {
		d.queueFailure("extend", err, len(receipts))
		return
	}
	for i, e := range res {
		if e != nil && !ps[i].sent {
			ps[i].done = true
			delete(d.bySeq, ps[i].seq)
			u.metrics.fail("stale_receipt", 1)
		}
	}
	d.compact(false)
}

// shutdown gives the messages still held back to the queue, ready at once.
func (d *upDrain) shutdown() {
	u := d.u
	if len(d.acks) > 0 || len(d.nacks) > 0 {
		d.settle()
	}
	if d.fatal != nil || len(d.bySeq) == 0 {
		return
	}
	receipts := make([]string, 0, len(d.bySeq))
	for _, p := range d.held {
		if !p.done {
			receipts = append(receipts, p.d.Receipt)
		}
	}
	if _, err := u.src.Nack(u.opts.Queue, receipts, time.Millisecond); err != nil && !errors.Is(err, queue.ErrClosed) {
		u.log.Warn().Err(err).Int("messages", len(receipts)).Msg("could not give held messages back; they return when their leases expire")
	}
	d.held, d.bySeq = nil, nil
}

// upTokenBucket is the rate limit: rate tokens per second, at most burst banked. rate 0 = unlimited.
type upTokenBucket struct {
	rate, burst, tokens float64
	last                time.Time
}

// take takes a token, or returns how long until one is available.
func (b *upTokenBucket) take(now time.Time) time.Duration {
	if b.rate <= 0 {
		return 0
	}
	if b.last.IsZero() {
		b.tokens, b.last = b.burst, now
	}
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return time.Duration((1-b.tokens)/b.rate*float64(time.Second)) + time.Microsecond
}
