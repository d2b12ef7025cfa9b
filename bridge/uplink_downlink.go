package bridge

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"
	"time"

	"github.com/sluicemq/sluice/queue"
)

// LocalPublisher publishes a message to the local broker; it returns once the broker has it (for
// QoS 1 and 2) or with an error. *LocalClient is one.
type LocalPublisher interface {
	Publish(ctx context.Context, topic string, qos byte, retain bool, payload []byte, props queue.Properties) error
}

// Downlink subscribes, on the uplink's connection, to upstream topic filters (commands for the site)
// and republishes what arrives to the local broker. A QoS 1/2 message is acknowledged upstream only
// once the local broker has it. The connection uses a clean session, so messages published upstream
// while the link is down are not kept for the gateway by the upstream (use retained messages, or
// MQTT 5 message expiry with a persistent upstream-side queue, for commands that must survive outages).
// The subscription sets No Local (MQTT 5), so the uplink's own publishes do not come back.
type Downlink struct {
	Filters   []string     // upstream topic filters; at least one
	QoS       byte         // subscription QoS, 0 to 2
	Topic     TopicRewrite // upstream → local topic ({gateway} is the uplink's Gateway)
	Publisher LocalPublisher
	// Buffer is the number of received messages waiting to be published locally (and, MQTT 5, the
	// Receive Maximum told to the upstream); 0 → 64. QoS 0 messages arriving when it is full are dropped.
	Buffer int
}

type upDownlink struct {
	u    *Uplink
	opts Downlink
	in   chan upIn
}

func newUpDownlink(u *Uplink, o Downlink) (*upDownlink, error) {
	switch {
	case len(o.Filters) == 0:
		return nil, fmt.Errorf("%w: the downlink has no topic filter", ErrInvalidUplink)
	case o.QoS > 2:
		return nil, fmt.Errorf("%w: downlink QoS %d is not 0, 1 or 2", ErrInvalidUplink, o.QoS)
	case o.Publisher == nil:
		return nil, fmt.Errorf("%w: the downlink has no local publisher", ErrInvalidUplink)
	case o.Buffer < 0 || o.Buffer > 65535:
		return nil, fmt.Errorf("%w: downlink buffer %d is not between 0 and 65535", ErrInvalidUplink, o.Buffer)
	}
	for _, f := range o.Filters {
		if !upValidFilter(f) {
			return nil, fmt.Errorf("%w: downlink filter %q is not a valid MQTT topic filter", ErrInvalidUplink, f)
		}
	}
	if err := o.Topic.validate(u.opts.Gateway); err != nil {
		return nil, err
	}
	if o.Buffer == 0 {
		o.Buffer = 64
	}
	return &upDownlink{u: u, opts: o, in: make(chan upIn, o.Buffer)}, nil
}

// upValidFilter checks an MQTT topic filter: non-empty, '+' and '#' only as whole levels, '#' last.
func upValidFilter(f string) bool {
	if f == "" {
		return false
	}
	levels := upSplitLevels(f)
	for i, l := range levels {
		if (l != "#" && upContainsByte(l, '#')) || (l == "#" && i != len(levels)-1) {
			return false
		}
		if l != "+" && upContainsByte(l, '+') {
			return false
		}
	}
	return true
}

func upSplitLevels(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func upContainsByte(s string, b byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return true
		}
	}
	return false
}

func (d *upDownlink) params(p *upParams) {
	p.subscribe = d.opts.Filters
	p.subQoS = d.opts.QoS
	p.inflightIn = uint16(d.opts.Buffer)
	p.onMessage = d.offer
}

// offer is called on the connection's reader goroutine. A QoS 1/2 message waits for room (the
// upstream sends at most Buffer of them unacknowledged) unless the connection ends: it is then not
// acknowledged, and lost with the clean session.
func (d *upDownlink) offer(m upIn, gone <-chan struct{}) {
	if m.qos == 0 {
		select {
		case d.in <- m:
		default:
			d.u.metrics.down("dropped")
		}
		return
	}
	select {
	case d.in <- m:
	case <-gone:
		d.u.metrics.down("dropped")
	}
}

func (d *upDownlink) start(ctx context.Context) {
	d.u.wg.Add(1)
	go d.run(ctx)
}

func (d *upDownlink) run(ctx context.Context) {
	defer d.u.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-d.in:
			d.republish(ctx, m)
		}
	}
}

// republish publishes m locally, retrying with backoff until it succeeds or ctx ends, then acks it.
func (d *upDownlink) republish(ctx context.Context, m upIn) {
	topic := d.opts.Topic.apply(m.topic, d.u.opts.Gateway)
	for failures := 0; ; failures++ {
		pctx, cancel := context.WithTimeout(ctx, d.u.opts.Timeout)
		err := d.opts.Publisher.Publish(pctx, topic, m.qos, m.retain, m.payload, m.props)
		cancel()
		if err == nil {
			d.u.metrics.down("published")
			if m.ack != nil {
				m.ack()
			}
			return
		}
		d.u.metrics.down("failed")
		if failures == 0 {
			d.u.log.Warn().Err(err).Str("topic", topic).Msg("downlink: local publish failed; retrying")
		}
		t := time.NewTimer(d.u.opts.Backoff.delay(failures + 1))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// LocalClientOptions configure a LocalClient.
type LocalClientOptions struct {
	URL      string // the local broker, e.g. tcp://127.0.0.1:1883
	ClientID string // "" → "sluice-downlink"
	Username string
	Password string
	TLS      UplinkTLS
	Timeout  time.Duration // connect and write timeout; 0 → 10s
}

// LocalClient is an MQTT 5 client of the local broker that publishes one message at a time and
// waits for its PUBACK/PUBCOMP. It connects on first use and again after the connection drops.
// Safe for concurrent use (publishes are serialized).
type LocalClient struct {
	p  upParams
	mu sync.Mutex
	c  upstreamConn
	rs chan upResult
	n  uint64
}

// NewLocalClient checks opts; it does not connect yet.
func NewLocalClient(opts LocalClientOptions) (*LocalClient, error) {
	u, err := upParseURL(opts.URL)
	if err != nil {
		return nil, err
	}
	var tc *tls.Config
	if tc, err = opts.TLS.config(u); err != nil {
		return nil, err
	}
	if opts.ClientID == "" {
		opts.ClientID = "sluice-downlink"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	rs := make(chan upResult, 1)
	return &LocalClient{rs: rs, p: upParams{url: u, tls: tc, version: 5, clientID: opts.ClientID, username: opts.Username,
		password: opts.Password, keepAlive: 60 * time.Second, timeout: opts.Timeout, results: rs}}, nil
}

// Publish publishes one message and waits for the local broker's confirmation (QoS 1/2).
func (l *LocalClient) Publish(ctx context.Context, topic string, qos byte, retain bool, payload []byte, props queue.Properties) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c != nil {
		select {
		case <-l.c.lost():
			l.c.close()
			l.c = nil
		default:
		}
	}
	if l.c == nil {
		c, err := upConnect(ctx, l.p)
		if err != nil {
			return err
		}
		l.c = c
	}
	for len(l.rs) > 0 { // a late answer to a publish that timed out
		<-l.rs
	}
	l.n++
	m := &upOut{seq: l.n, topic: topic, qos: qos, retain: retain, payload: payload, props: &props, expiry: props.MessageExpiry}
	if err := l.c.publish(m); err != nil {
		return err
	}
	if err := l.c.flush(); err != nil {
		return err
	}
	if qos == 0 {
		return nil
	}
	for {
		select {
		case r := <-l.rs:
			if r.seq != l.n {
				continue
			}
			if r.code >= 0x80 {
				return fmt.Errorf("bridge: local broker refused the publish to %q with code 0x%02x (%s)", topic, r.code, r.reason)
			}
			return nil
		case <-l.c.lost():
			return fmt.Errorf("bridge: local publish: %w", l.c.cause())
		case <-ctx.Done():
			// The connection's state is unknown now: start afresh next time.
			l.c.close()
			l.c = nil
			return ctx.Err()
		}
	}
}

// Close disconnects. Safe to call more than once.
func (l *LocalClient) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.c != nil {
		l.c.close()
		l.c = nil
	}
	return nil
}

var _ LocalPublisher = (*LocalClient)(nil)
