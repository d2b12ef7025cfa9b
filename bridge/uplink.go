package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/queue"
)

// UplinkSource is the local queue an uplink drains: *queue.Manager is one.
type UplinkSource interface {
	Receive(ctx context.Context, q string, max int, lease time.Duration) ([]queue.Delivery, error)
	Ack(q string, receipts []string) ([]error, error)
	Nack(q string, receipts []string, delay time.Duration) ([]error, error)
	Extend(q string, receipts []string, lease time.Duration) ([]error, error)
	Stats(q string) (queue.Stats, error)
}

// ErrInvalidUplink is wrapped by the errors NewUplink returns for bad options.
var ErrInvalidUplink = errors.New("bridge: invalid uplink")

// ErrUplinkClosed is returned by Uplink.Close after the first call, and by Start after Close.
var ErrUplinkClosed = errors.New("bridge: uplink closed")

// TopicRewrite maps a local topic to the upstream topic (or, for a downlink, back).
type TopicRewrite struct {
	// StripPrefix is removed from the front of the topic when the topic starts with it.
	StripPrefix string
	// Template builds the new topic: {topic} is the topic after StripPrefix, {gateway} the uplink's
	// Gateway. "" → "{topic}". It must not contain '+' or '#'.
	Template string
}

func (r TopicRewrite) validate(gateway string) error {
	t := r.Template
	if t == "" {
		t = "{topic}"
	}
	if strings.ContainsAny(t, "+#") || strings.ContainsAny(gateway, "+#") {
		return fmt.Errorf("%w: topic template %q or gateway %q contains a wildcard (+ or #)", ErrInvalidUplink, t, gateway)
	}
	rest := strings.NewReplacer("{topic}", "", "{gateway}", "").Replace(t)
	if strings.ContainsAny(rest, "{}") {
		return fmt.Errorf("%w: topic template %q has a placeholder other than {topic} and {gateway}", ErrInvalidUplink, t)
	}
	if strings.ContainsRune(t, 0) {
		return fmt.Errorf("%w: topic template contains a NUL character", ErrInvalidUplink)
	}
	return nil
}

// apply rewrites topic. An empty result (template "{topic}" and a topic equal to StripPrefix) keeps
// the original topic, since MQTT has no empty topic names.
func (r TopicRewrite) apply(topic, gateway string) string {
	t := r.Template
	if t == "" {
		t = "{topic}"
	}
	rest := topic
	if r.StripPrefix != "" {
		rest = strings.TrimPrefix(topic, r.StripPrefix)
	}
	out := t
	if strings.Contains(out, "{topic}") {
		out = strings.ReplaceAll(out, "{topic}", rest)
	}
	if strings.Contains(out, "{gateway}") {
		out = strings.ReplaceAll(out, "{gateway}", gateway)
	}
	if out == "" {
		return topic
	}
	return out
}

// ReconnectBackoff is the wait between connection attempts: Initial × 2^(failures−1), capped at Max,
// ± Jitter (a fraction, 0 to 1).
type ReconnectBackoff struct {
	Initial time.Duration // 0 → 500ms
	Max     time.Duration // 0 → 1m
	Jitter  float64       // 0 → 0.2; negative → none
}

func (b ReconnectBackoff) delay(failures int) time.Duration {
	d := b.Initial
	for i := 1; i < failures && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	if b.Jitter > 0 {
		d = time.Duration(float64(d) * (1 + b.Jitter*(2*rand.Float64()-1)))
	}
	return d
}

// UplinkOptions configure one uplink. Name, URL and Queue are required; every other zero field takes
// the default documented on it.
type UplinkOptions struct {
	Name string // unique among uplinks: metrics label uplink=Name, logs
	// URL of the upstream broker: tcp:// or mqtt:// (plain), tls://, ssl:// or mqtts:// (TLS),
	// ws:// or wss:// (WebSocket, path defaults to /).
	URL             string
	ProtocolVersion int    // 5 (default) or 4 (MQTT 3.1.1: no reason codes, no properties forwarded)
	ClientID        string // "" → "sluice-" + Gateway + "-" + Name
	Username        string
	Password        string
	TLS             UplinkTLS
	Queue           string       // the local queue to drain
	Gateway         string       // this gateway's name, {gateway} in topic templates; "" → "gateway"
	Topic           TopicRewrite // local → upstream topic
	QoS             byte         // 1 (default) or 2; the local message is acked after PUBACK or PUBCOMP
	// MaxInFlight bounds the publishes awaiting their PUBACK/PUBCOMP (further capped by the upstream's
	// Receive Maximum); 0 → 256.
	MaxInFlight int
	Batch       int           // messages received from the queue at once; 0 → 256
	Rate        float64       // messages/s forwarded at most; 0 → unlimited
	Burst       int           // with Rate: messages sent at once above the rate; 0 → max(1, Rate/10)
	KeepAlive   time.Duration // MQTT keep-alive; 0 → 30s
	// Timeout bounds a connection attempt (dial, TLS, CONNACK) and each socket write; 0 → 10s.
	Timeout time.Duration
	Backoff ReconnectBackoff
	// Lease is how long received messages stay leased between lease extensions; 0 → 30s. Leases are
	// extended every Lease/3 while messages wait (during an outage too), so an outage burns no attempt.
	Lease time.Duration
	// RecoveryWait bounds how long Start waits, before draining, for the messages a previous process
	// left leased to come back (so that they are forwarded first, in order); 0 → Lease + 10s.
	RecoveryWait time.Duration
	// Downlink, if set, subscribes to upstream topics and republishes them locally.
	Downlink *Downlink
	Logger   zerolog.Logger
	// Registerer receives the uplink's metrics, labelled uplink=Name; nil → no metrics.
	Registerer prometheus.Registerer
}

func (o *UplinkOptions) defaults() error {
	switch {
	case o.Name == "":
		return fmt.Errorf("%w: the uplink has no name", ErrInvalidUplink)
	case o.Queue == "":
		return fmt.Errorf("%w: uplink %q names no queue", ErrInvalidUplink, o.Name)
	case o.ProtocolVersion != 0 && o.ProtocolVersion != 4 && o.ProtocolVersion != 5:
		return fmt.Errorf("%w: uplink %q: protocol version %d is not 4 (3.1.1) or 5", ErrInvalidUplink, o.Name, o.ProtocolVersion)
	case o.QoS != 0 && o.QoS != 1 && o.QoS != 2:
		return fmt.Errorf("%w: uplink %q: QoS %d is not 1 or 2", ErrInvalidUplink, o.Name, o.QoS)
	case o.MaxInFlight < 0 || o.Batch < 0 || o.Burst < 0 || o.Rate < 0 || o.KeepAlive < 0 || o.Timeout < 0 || o.Lease < 0 || o.RecoveryWait < 0:
		return fmt.Errorf("%w: uplink %q: a negative limit or duration", ErrInvalidUplink, o.Name)
	case o.MaxInFlight > 65535:
		return fmt.Errorf("%w: uplink %q: max in flight %d is above 65535", ErrInvalidUplink, o.Name, o.MaxInFlight)
	}
	if o.ProtocolVersion == 0 {
		o.ProtocolVersion = 5
	}
	if o.QoS == 0 {
		o.QoS = 1
	}
	if o.Gateway == "" {
		o.Gateway = "gateway"
	}
	if o.ClientID == "" {
		o.ClientID = "sluice-" + o.Gateway + "-" + o.Name
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = 256
	}
	if o.Batch == 0 {
		o.Batch = 256
	}
	if o.Rate > 0 && o.Burst == 0 {
		o.Burst = max(1, int(o.Rate/10))
	}
	if o.KeepAlive == 0 {
		o.KeepAlive = 30 * time.Second
	}
	if o.KeepAlive > 65535*time.Second {
		return fmt.Errorf("%w: uplink %q: keep-alive above 65535s", ErrInvalidUplink, o.Name)
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Backoff.Initial <= 0 {
		o.Backoff.Initial = 500 * time.Millisecond
	}
	if o.Backoff.Max <= 0 {
		o.Backoff.Max = time.Minute
	}
	if o.Backoff.Max < o.Backoff.Initial {
		o.Backoff.Max = o.Backoff.Initial
	}
	if o.Backoff.Jitter == 0 {
		o.Backoff.Jitter = 0.2
	}
	if o.Backoff.Jitter > 1 {
		return fmt.Errorf("%w: uplink %q: backoff jitter %g is above 1", ErrInvalidUplink, o.Name, o.Backoff.Jitter)
	}
	if o.Lease == 0 {
		o.Lease = max(30*time.Second, 3*o.Timeout)
	}
	if o.Lease < 30*time.Millisecond {
		return fmt.Errorf("%w: uplink %q: lease %v is shorter than 30ms", ErrInvalidUplink, o.Name, o.Lease)
	}
	if o.Lease < 2*o.Timeout {
		return fmt.Errorf("%w: uplink %q: lease %v must be at least twice the timeout %v (leases are renewed between connection attempts)", ErrInvalidUplink, o.Name, o.Lease, o.Timeout)
	}
	if o.RecoveryWait == 0 {
		o.RecoveryWait = o.Lease + 10*time.Second
	}
	if o.ProtocolVersion == 4 && o.ClientID == "" {
		return fmt.Errorf("%w: uplink %q: MQTT 3.1.1 needs a client id", ErrInvalidUplink, o.Name)
	}
	return o.Topic.validate(o.Gateway)
}

// Uplink forwards the messages of one local queue to an upstream MQTT broker: store and forward.
// A message is acked in the queue only once the upstream has it (PUBACK for QoS 1, PUBCOMP for QoS 2);
// while the link is down, messages stay in the queue (on disk, under its limits and overflow policy).
//
// # Order
//
// Publishes go out on one connection in queue order, up to MaxInFlight at a time, so an upstream that
// handles one connection's publishes in order (Mosquitto, mochi, EMQX, HiveMQ) keeps each topic's
// order. Messages still unconfirmed when the connection drops are kept leased (their leases
// extended, no attempt burned) and published again first, in their order, on the next connection:
// the upstream may then see a message twice (at-least-once) but never a later one before an earlier
// one of the same topic. Two things can reorder a topic: a message the upstream refuses (MQTT 5
// reason code ≥ 0x80), which goes back to the queue with its backoff while later ones go on; and
// messages left leased by a process that was killed when the restarted one gives up waiting for
// them (RecoveryWait).
type Uplink struct {
	opts    UplinkOptions
	src     UplinkSource
	url     *url.URL
	tls     *tls.Config
	log     zerolog.Logger
	metrics *uplinkMetrics
	down    *upDownlink

	mu        sync.Mutex // guards the fields below
	started   bool
	closed    bool
	abort     chan struct{} // closed when Close's ctx ends first
	cancel    context.CancelFunc
	lastErr   string
	upSince   time.Time
	state     atomic.Int32
	inflight  atomic.Int64
	forwarded atomic.Uint64
	failures  atomic.Uint64

	wg sync.WaitGroup
}

// Uplink states, as the sluice_uplink_state gauge reports them.
const (
	UplinkStopped    = 0
	UplinkConnecting = 1 // connecting, or waiting to reconnect
	UplinkConnected  = 2
)

// NewUplink checks opts and readies an uplink draining opts.Queue of src; Start starts it. It returns
// an error wrapping ErrInvalidUplink for bad options (URL, TLS files, QoS, template, ...), or the
// queue's error (queue.ErrNotFound) when the queue does not exist.
func NewUplink(src UplinkSource, opts UplinkOptions) (*Uplink, error) {
	if src == nil {
		return nil, fmt.Errorf("%w: nil UplinkSource", ErrInvalidUplink)
	}
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	u, err := upParseURL(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("uplink %q: %w", opts.Name, err)
	}
	tc, err := opts.TLS.config(u)
	if err != nil {
		return nil, fmt.Errorf("uplink %q: %w", opts.Name, err)
	}
	if _, err := src.Stats(opts.Queue); err != nil {
		return nil, fmt.Errorf("uplink %q: queue %q: %w", opts.Name, opts.Queue, err)
	}
	ul := &Uplink{
		opts:  opts,
		src:   src,
		url:   u,
		tls:   tc,
		log:   opts.Logger.With().Str("component", "uplink").Str("uplink", opts.Name).Logger(),
		abort: make(chan struct{}),
	}
	if opts.Downlink != nil {
		d, err := newUpDownlink(ul, *opts.Downlink)
		if err != nil {
			return nil, fmt.Errorf("uplink %q: %w", opts.Name, err)
		}
		ul.down = d
	}
	m, err := newUplinkMetrics(opts.Registerer, ul)
	if err != nil {
		return nil, fmt.Errorf("uplink %q: register metrics: %w", opts.Name, err)
	}
	ul.metrics = m
	return ul, nil
}

// Name returns the uplink's name.
func (u *Uplink) Name() string { return u.opts.Name }

// Start starts forwarding in the background: it waits for messages a previous process left leased
// (up to RecoveryWait), then connects, drains and reconnects until Close. Start after Close returns
// ErrUplinkClosed; a second Start does nothing.
func (u *Uplink) Start() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return ErrUplinkClosed
	}
	if u.started {
		return nil
	}
	u.started = true
	ctx, cancel := context.WithCancel(context.Background())
	u.cancel = cancel
	u.state.Store(UplinkConnecting)
	u.wg.Add(1)
	go u.run(ctx)
	if u.down != nil {
		u.down.start(ctx)
	}
	return nil
}

// Close stops the uplink: no more messages are received from the queue; publishes in flight get until
// ctx ends to be confirmed (and acked); messages still unconfirmed go back to the queue (nacked with
// a short delay, which counts one delivery attempt: the queue has no release call). Later calls
// return ErrUplinkClosed.
func (u *Uplink) Close(ctx context.Context) error {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return ErrUplinkClosed
	}
	u.closed = true
	cancel := u.cancel
	u.mu.Unlock()
	if cancel == nil {
		u.metrics.unregister()
		return nil
	}
	cancel()
	done := make(chan struct{})
	go func() { u.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("bridge: close uplink %q: %w", u.opts.Name, ctx.Err())
		close(u.abort) // stop waiting for confirmations
		<-done
	}
	u.state.Store(UplinkStopped)
	u.metrics.unregister()
	return err
}

// UplinkStatus is a snapshot of an uplink.
type UplinkStatus struct {
	Name      string        `json:"name"`
	Queue     string        `json:"queue"`
	URL       string        `json:"url"`            // without credentials
	State     string        `json:"state"`          // stopped | connecting | connected
	Since     time.Time     `json:"since,omitzero"` // connected since
	Forwarded uint64        `json:"forwarded"`      // messages confirmed by the upstream since start
	Failures  uint64        `json:"failures"`       // failed connections, lost connections, refused messages
	InFlight  int64         `json:"in_flight"`
	Backlog   int64         `json:"backlog"`    // queue messages not yet forwarded: ready + leased + delayed
	OldestAge time.Duration `json:"oldest_age"` // age of the oldest of them
	LastError string        `json:"last_error,omitempty"`
}

// Status returns the uplink's state and counters, and its queue's backlog.
func (u *Uplink) Status() UplinkStatus {
	s := UplinkStatus{
		Name:      u.opts.Name,
		Queue:     u.opts.Queue,
		URL:       upRedactURL(u.url),
		Forwarded: u.forwarded.Load(),
		Failures:  u.failures.Load(),
		InFlight:  u.inflight.Load(),
	}
	switch u.state.Load() {
	case UplinkConnecting:
		s.State = "connecting"
	case UplinkConnected:
		s.State = "connected"
	default:
		s.State = "stopped"
	}
	u.mu.Lock()
	s.LastError = u.lastErr
	if s.State == "connected" {
		s.Since = u.upSince
	}
	u.mu.Unlock()
	if st, err := u.src.Stats(u.opts.Queue); err == nil {
		s.Backlog = st.Ready + st.Leased + st.Delayed
		s.OldestAge = st.OldestAge
	}
	return s
}

func (u *Uplink) setErr(err error) {
	u.mu.Lock()
	u.lastErr = err.Error()
	u.mu.Unlock()
}

func (u *Uplink) fail(reason string, n int) {
	u.failures.Add(uint64(n))
	u.metrics.fail(reason, n)
}
