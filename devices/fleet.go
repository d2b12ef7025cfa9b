package devices

import (
	"context"
	"crypto/tls"
	"errors"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Options are a fleet's collaborators; the zero value is valid.
type Options struct {
	Logger *zerolog.Logger // nil: no logs
	// OnConnect, if set, is called after every connection attempt of every device with how long
	// it took and its error (nil on success). It must be safe for concurrent use.
	OnConnect func(id string, took time.Duration, err error)
}

// Stats are a fleet's counters since Run started.
type Stats struct {
	Devices    int    // devices started so far (ramp-up)
	Connected  int64  // devices connected now
	Published  uint64 // telemetry messages written
	Acked      uint64 // QoS 1/2 telemetry acknowledged by the broker
	Errors     uint64 // failed connects, failed publishes, lost connections
	Reconnects uint64 // successful connects after the first one of a device
	Commands   uint64 // commands received and answered
	Flaps      uint64 // connections dropped on purpose
}

// Fleet runs simulated devices. Create it with NewFleet and run it once with Run.
type Fleet struct {
	cfg  Config
	opts Options
	log  zerolog.Logger
	tls  *tls.Config
	url  *url.URL

	ran atomic.Bool

	started    atomic.Int64
	connected  atomic.Int64
	published  atomic.Uint64
	acked      atomic.Uint64
	errs       atomic.Uint64
	reconnects atomic.Uint64
	commands   atomic.Uint64
	flaps      atomic.Uint64
}

// NewFleet checks cfg (after WithDefaults) and prepares a fleet. It connects nothing yet.
func NewFleet(cfg Config, opts Options) (*Fleet, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	u, err := ParseBroker(cfg.Broker)
	if err != nil {
		return nil, err
	}
	tc, err := cfg.TLS.tlsConfig()
	if err != nil {
		return nil, err
	}
	log := zerolog.Nop()
	if opts.Logger != nil {
		log = opts.Logger.With().Str("component", "devices").Logger()
	}
	return &Fleet{cfg: cfg, opts: opts, log: log, tls: tc, url: u}, nil
}

// Config is the fleet's configuration with defaults applied.
func (f *Fleet) Config() Config { return f.cfg }

// Stats returns the current counters; safe to call while Run runs.
func (f *Fleet) Stats() Stats {
	return Stats{
		Devices:    int(f.started.Load()),
		Connected:  f.connected.Load(),
		Published:  f.published.Load(),
		Acked:      f.acked.Load(),
		Errors:     f.errs.Load(),
		Reconnects: f.reconnects.Load(),
		Commands:   f.commands.Load(),
		Flaps:      f.flaps.Load(),
	}
}

// Run connects the devices at the configured rate and runs them until ctx ends or Duration
// passes, then disconnects them all (publishing their "offline" status) and returns nil. The first
// device connects before the others start: if it cannot (broker unreachable, credentials refused),
// Run returns that *ConnectError at once and leaves nothing running. A second Run returns ErrClosed.
func (f *Fleet) Run(ctx context.Context) error {
	if !f.ran.CompareAndSwap(false, true) {
		return ErrClosed
	}
	if f.cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(f.cfg.Duration))
		defer cancel()
	}
	first := f.newDevice(1)
	c, err := first.connect(ctx)
	if err != nil {
		if first.sess != nil {
			_ = first.sess.Close()
		}
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); first.run(ctx, c) }()
	f.started.Store(1)

	var gap time.Duration
	if f.cfg.ConnectRate > 0 {
		gap = time.Duration(float64(time.Second) / float64(f.cfg.ConnectRate))
	}
	start := time.Now()
	for n := 2; n <= f.cfg.Count; n++ {
		if gap > 0 {
			due := start.Add(time.Duration(n-1) * gap)
			if d := time.Until(due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
				case <-t.C:
				}
			}
		}
		if ctx.Err() != nil {
			break
		}
		d := f.newDevice(n)
		wg.Add(1)
		go func() { defer wg.Done(); d.run(ctx, nil) }()
		f.started.Store(int64(n))
	}
	wg.Wait()
	return nil
}

// publishAckTimeout bounds the wait for one publish's acknowledgement.
const publishAckTimeout = 10 * time.Second

// device is one simulated device; its state is owned by its goroutine.
type device struct {
	f        *Fleet
	id       string
	opts     ClientOptions
	gen      *Generator
	rnd      *rand.Rand
	seq      uint64
	flapper  bool
	cmds     chan Message
	sizeHint int
	ever     bool
	sess     *Session // persistent sessions: unacknowledged publishes survive reconnects
}

func (f *Fleet) newDevice(n int) *device {
	id := f.cfg.DeviceID(n)
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	seed := h.Sum64()
	d := &device{f: f, id: id, gen: NewGenerator(f.cfg.Payload, id), rnd: rand.New(rand.NewPCG(seed, 0x5eed))}
	d.flapper = f.cfg.Flaps.Every > 0 && d.rnd.Float64() < f.cfg.Flaps.Fraction
	o := ClientOptions{
		Broker:         f.url,
		TLS:            f.tls,
		Protocol:       f.cfg.Protocol,
		ClientID:       id,
		Username:       f.cfg.Username,
		Password:       f.cfg.Password,
		CleanSession:   !f.cfg.PersistentSession,
		SessionExpiry:  time.Duration(f.cfg.SessionExpiry),
		KeepAlive:      time.Duration(f.cfg.KeepAlive),
		ReceiveMaximum: f.cfg.ReceiveMaximum,
	}
	if f.cfg.StatusTopic != "" {
		o.Will = &Message{Topic: expand(f.cfg.StatusTopic, id), Payload: []byte(statusPayload(id, false)), QoS: 1, Retain: true}
	}
	if f.cfg.CommandTopic != "" {
		d.cmds = make(chan Message, 8)
		o.OnMessage = func(m Message) {
			select {
			case d.cmds <- m:
			default: // the device is busy: a real device would drop it too
			}
		}
	}
	if f.cfg.PersistentSession {
		d.sess = NewSession()
		o.Session = d.sess
	}
	d.opts = o
	return d
}

func expand(pattern, id string) string { return strings.ReplaceAll(pattern, "{id}", id) }

func statusPayload(id string, online bool) string {
	s := "offline"
	if online {
		s = "online"
	}
	return `{"id":` + strconv.Quote(id) + `,"status":"` + s + `","ts":` + strconv.FormatInt(time.Now().UnixNano(), 10) + `}`
}

// connect makes one connection and sets up status and commands.
func (d *device) connect(ctx context.Context) (*Client, error) {
	f := d.f
	t0 := time.Now()
	c, err := Dial(ctx, d.opts)
	if err == nil {
		if f.cfg.CommandTopic != "" {
			if err = c.Subscribe(ctx, expand(f.cfg.CommandTopic, d.id), 1); err != nil {
				c.Drop()
			}
		}
		if err == nil && f.cfg.StatusTopic != "" {
			if err = c.Publish(ctx, Message{Topic: expand(f.cfg.StatusTopic, d.id), Payload: []byte(statusPayload(d.id, true)), QoS: 1, Retain: true}); err != nil {
				c.Drop()
			}
		}
	}
	if f.opts.OnConnect != nil {
		f.opts.OnConnect(d.id, time.Since(t0), err)
	}
	if err != nil {
		return nil, err
	}
	if d.ever {
		f.reconnects.Add(1)
	}
	d.ever = true
	return c, nil
}

// backoff is the wait before reconnect attempt number attempt (1-based).
func (d *device) backoff(attempt int) time.Duration {
	b := d.f.cfg.Reconnect
	w := float64(b.Initial) * math.Pow(b.Multiplier, float64(attempt-1))
	w = math.Min(w, float64(b.Max))
	w *= 1 + b.Jitter*(d.rnd.Float64()*2-1)
	return time.Duration(w)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// run keeps the device connected and publishing until ctx ends. c is an established connection
// or nil.
func (d *device) run(ctx context.Context, c *Client) {
	f := d.f
	if d.sess != nil {
		defer d.sess.Close()
	}
	attempt := 0
	for {
		if c == nil {
			var err error
			c, err = d.connect(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				f.errs.Add(1)
				attempt++
				f.log.Debug().Str("device", d.id).Err(err).Int("attempt", attempt).Msg("connect failed")
				if !sleepCtx(ctx, d.backoff(attempt)) {
					return
				}
				continue
			}
		}
		attempt = 0
		f.connected.Add(1)
		flapped := d.session(ctx, c)
		f.connected.Add(-1)
		c = nil
		if ctx.Err() != nil {
			return
		}
		if flapped {
			f.flaps.Add(1)
			if !sleepCtx(ctx, time.Duration(f.cfg.Flaps.Down)) {
				return
			}
			continue
		}
		f.errs.Add(1) // connection lost
		attempt++
		if !sleepCtx(ctx, d.backoff(attempt)) {
			return
		}
	}
}

// session drives one connection until it ends. It returns true when it ended by a simulated flap.
func (d *device) session(ctx context.Context, c *Client) (flapped bool) {
	f := d.f
	cfg := f.cfg
	interval := time.Duration(cfg.Interval)
	var tick *time.Timer
	var tickC <-chan time.Time
	if !cfg.Idle {
		// spread the first publish over one interval so devices do not tick in lockstep
		tick = time.NewTimer(time.Duration(d.rnd.Int64N(int64(interval))))
		defer tick.Stop()
		tickC = tick.C
	}
	var flapC <-chan time.Time
	if d.flapper {
		every := time.Duration(cfg.Flaps.Every)
		ft := time.NewTimer(every/2 + time.Duration(d.rnd.Int64N(int64(every))))
		defer ft.Stop()
		flapC = ft.C
	}
	topic := expand(cfg.Topic, d.id)
	for {
		select {
		case <-ctx.Done():
			if cfg.StatusTopic != "" {
				pctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = c.Publish(pctx, Message{Topic: expand(cfg.StatusTopic, d.id), Payload: []byte(statusPayload(d.id, false)), QoS: 1, Retain: true})
				cancel()
			}
			_ = c.Close()
			return false
		case <-c.Done():
			f.log.Debug().Str("device", d.id).AnErr("cause", c.Err()).Msg("connection lost")
			_ = c.Close()
			return false
		case <-flapC:
			c.Drop()
			return true
		case m := <-d.cmds:
			reply := `{"id":` + strconv.Quote(d.id) + `,"command":` + strconv.Quote(string(m.Payload)) + `,"ok":true,"ts":` + strconv.FormatInt(time.Now().UnixNano(), 10) + `}`
			if err := c.Publish(ctx, Message{Topic: expand(cfg.ReplyTopic, d.id), Payload: []byte(reply), QoS: m.QoS}); err != nil {
				f.errs.Add(1)
			} else {
				f.commands.Add(1)
			}
		case now := <-tickC:
			next := interval
			if cfg.Jitter > 0 {
				next += time.Duration((d.rnd.Float64()*2 - 1) * float64(cfg.Jitter))
			}
			tick.Reset(next)
			d.seq++
			// A fresh buffer each time: the clients keep the payload of an unacknowledged publish
			// (to send it again after a reconnect) after Publish returned.
			payload := d.gen.Append(make([]byte, 0, d.sizeHint), d.seq, now)
			d.sizeHint = len(payload)
			f.published.Add(1)
			// The end of the run does not abandon a publish waiting for its ack: it gets
			// publishAckTimeout of its own, so the summary's published = acked + errors + lost
			// with the connection.
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishAckTimeout)
			err := c.Publish(pctx, Message{Topic: topic, Payload: payload, QoS: byte(cfg.QoS), Retain: cfg.Retain})
			cancel()
			switch {
			case err == nil && cfg.QoS > 0:
				f.acked.Add(1)
			case err != nil && !errors.Is(err, ErrConnectionLost):
				f.errs.Add(1)
			}
		}
	}
}
