package devices

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"
	mqtt311 "github.com/eclipse/paho.mqtt.golang"
	mqttpk "github.com/eclipse/paho.mqtt.golang/packets"
)

// Protocol is an MQTT protocol version.
type Protocol string

// The protocol versions a simulated device can speak.
const (
	MQTT5   Protocol = "5"
	MQTT311 Protocol = "3.1.1"
)

// ParseProtocol accepts "5", "5.0", "v5", "3.1.1", "311", "v3.1.1" and "4" (the 3.1.1 protocol level).
func ParseProtocol(s string) (Protocol, error) {
	switch s {
	case "", "5", "5.0", "v5", "mqtt5":
		return MQTT5, nil
	case "3.1.1", "311", "v3.1.1", "4", "mqtt3.1.1":
		return MQTT311, nil
	}
	return "", &ConfigError{Msg: fmt.Sprintf("protocol %q is not supported; want 3.1.1 or 5", s)}
}

// Message is an MQTT application message, sent or received.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// Session is a device's client-side session state (unacknowledged QoS 1/2 publishes) kept across
// connections, so that with a persistent session they are sent again after a reconnect. Give the
// same Session to each Dial of one client id; Close it when the device is done.
type Session struct {
	v5 *state.State
	v3 mqtt311.Store
}

// NewSession returns an empty session.
func NewSession() *Session {
	return &Session{v5: state.NewInMemory(), v3: mqtt311.NewMemoryStore()}
}

// Close releases the session.
func (s *Session) Close() error { return s.v5.Close() }

// ClientOptions configures one network client. The zero value is not enough: Broker is required.
type ClientOptions struct {
	Broker   *url.URL // from ParseBroker
	Protocol Protocol // "" means MQTT5
	ClientID string
	Username string
	Password string
	TLS      *tls.Config // for tls://, ssl://, mqtts://, wss:// (nil: system roots)

	// CleanSession starts a fresh session (clean start in MQTT 5). A persistent session (false)
	// asks MQTT 5 brokers to keep it for SessionExpiry (default 1h).
	CleanSession  bool
	SessionExpiry time.Duration

	KeepAlive      time.Duration // default 30s
	ConnectTimeout time.Duration // default 10s; also bounds each acknowledged publish
	// ReceiveMaximum is sent in the MQTT 5 CONNECT. paho.golang sizes a channel by it, so the default
	// of 65535 costs ~0.5 MiB per client; 0 here means 32.
	ReceiveMaximum uint16
	// MaxInflight bounds the QoS 1/2 publishes PublishAsync keeps unacknowledged (default 64).
	MaxInflight int

	Will *Message

	// Session, with CleanSession false, carries unacknowledged publishes across connections
	// (nil: each connection starts with an empty client-side session).
	Session *Session

	// OnMessage is called for every message received on a subscription, on the client's reader
	// goroutine: it must not block (hand work to another goroutine).
	OnMessage func(Message)
}

// Client is one MQTT connection, MQTT 5 over paho.golang or 3.1.1 over paho.mqtt.golang.
// Its methods are safe for concurrent use. A Client does not reconnect: Done is closed when the
// connection is lost, and the owner dials a new one (see Device for backoff).
type Client struct {
	opts       ClientOptions
	done       chan struct{}
	connCtx    context.Context // cancelled when the connection ends
	connCancel context.CancelFunc

	lostOnce sync.Once
	lostErr  error

	closeOnce sync.Once
	closed    chan struct{}

	// MQTT 5
	v5   *paho.Client
	sess *trackingSession

	// MQTT 3.1.1
	v3 mqtt311.Client

	// async acknowledgement pipeline (started on first PublishAsync)
	asyncMu      sync.Mutex // serializes PublishAsync so the FIFO order is the write order
	asyncOnce    sync.Once
	pending      chan pendingAck
	ackerDone    chan struct{}
	asyncStarted bool
}

type pendingAck struct {
	v5   chan packets.ControlPacket
	v3   mqtt311.Token
	qos  byte
	done func(error)
}

func (o *ClientOptions) withDefaults() ClientOptions {
	c := *o
	if c.Protocol == "" {
		c.Protocol = MQTT5
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = 30 * time.Second
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.ReceiveMaximum == 0 {
		c.ReceiveMaximum = 32
	}
	if c.MaxInflight <= 0 {
		c.MaxInflight = 64
	}
	if !c.CleanSession && c.SessionExpiry <= 0 {
		c.SessionExpiry = time.Hour
	}
	return c
}

// Dial connects one client and returns when the broker accepted it. A refused CONNECT gives a
// *ConnectError matching ErrRefused; a network failure gives a *ConnectError wrapping the cause.
func Dial(ctx context.Context, opts ClientOptions) (*Client, error) {
	if opts.Broker == nil {
		return nil, &ConfigError{Msg: "client options: broker URL is required"}
	}
	o := opts.withDefaults()
	c := &Client{opts: o, done: make(chan struct{}), closed: make(chan struct{})}
	c.connCtx, c.connCancel = context.WithCancel(context.Background())
	var err error
	switch o.Protocol {
	case MQTT5:
		err = c.dial5(ctx)
	case MQTT311:
		err = c.dial311()
	default:
		err = &ConfigError{Msg: fmt.Sprintf("protocol %q is not supported; want 3.1.1 or 5", o.Protocol)}
	}
	if err != nil {
		c.connCancel()
		return nil, err
	}
	return c, nil
}

func (c *Client) connErr(err error, refused bool) error {
	return &ConnectError{Broker: c.opts.Broker.Redacted(), Refused: refused, Err: err}
}

func (c *Client) lost(err error) {
	c.lostOnce.Do(func() {
		c.lostErr = err
		close(c.done)
		c.connCancel()
	})
}

// Done is closed when the connection ended (lost or closed); Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is the reason the connection ended, or nil while it is up or after a clean Close.
func (c *Client) Err() error {
	select {
	case <-c.done:
		return c.lostErr
	default:
		return nil
	}
}

func (c *Client) dial5(ctx context.Context) error {
	o := c.opts
	dctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	conn, err := dial(dctx, o.Broker, o.TLS)
	if err != nil {
		return c.connErr(err, false)
	}
	shared := o.Session != nil && !o.CleanSession
	if shared {
		c.sess = &trackingSession{State: o.Session.v5, shared: true}
	} else {
		c.sess = &trackingSession{State: state.NewInMemory()}
	}
	cfg := paho.ClientConfig{
		Conn:          conn,
		Session:       c.sess,
		PacketTimeout: o.ConnectTimeout,
		OnClientError: func(err error) { c.lost(err) },
		OnServerDisconnect: func(d *paho.Disconnect) {
			c.lost(fmt.Errorf("server sent DISCONNECT with reason code %#x", d.ReasonCode))
		},
	}
	if o.OnMessage != nil {
		h := o.OnMessage
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			p := pr.Packet
			h(Message{Topic: p.Topic, Payload: p.Payload, QoS: p.QoS, Retain: p.Retain})
			return true, nil
		}}
	} else {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(paho.PublishReceived) (bool, error) { return true, nil }}
	}
	cli := paho.NewClient(cfg)
	rm := o.ReceiveMaximum
	cp := &paho.Connect{
		ClientID:   o.ClientID,
		KeepAlive:  uint16(o.KeepAlive / time.Second),
		CleanStart: o.CleanSession,
		Properties: &paho.ConnectProperties{ReceiveMaximum: &rm},
	}
	if !o.CleanSession {
		exp := uint32(o.SessionExpiry / time.Second)
		cp.Properties.SessionExpiryInterval = &exp
	}
	if o.Username != "" {
		cp.Username, cp.UsernameFlag = o.Username, true
	}
	if o.Password != "" {
		cp.Password, cp.PasswordFlag = []byte(o.Password), true
	}
	if o.Will != nil {
		cp.WillMessage = &paho.WillMessage{Topic: o.Will.Topic, Payload: o.Will.Payload, QoS: o.Will.QoS, Retain: o.Will.Retain}
	}
	ca, err := cli.Connect(dctx, cp)
	if err != nil {
		_ = conn.Close()
		c.sess.release()
		if ca != nil && ca.ReasonCode >= 0x80 {
			return c.connErr(fmt.Errorf("CONNACK reason code %#x", ca.ReasonCode), true)
		}
		return c.connErr(err, false)
	}
	c.v5 = cli
	go func() { // ends when the paho client has shut down (Close or connection loss)
		<-cli.Done()
		c.lost(ErrConnectionLost)
	}()
	return nil
}

func (c *Client) dial311() error {
	o := c.opts
	mo := mqtt311.NewClientOptions()
	mo.AddBroker(o.Broker.String())
	mo.SetProtocolVersion(4)
	mo.SetClientID(o.ClientID)
	mo.SetCleanSession(o.CleanSession)
	mo.SetKeepAlive(o.KeepAlive)
	mo.SetConnectTimeout(o.ConnectTimeout)
	mo.SetWriteTimeout(o.ConnectTimeout)
	mo.SetAutoReconnect(false)
	mo.SetConnectRetry(false)
	mo.SetOrderMatters(true)
	mo.SetUsername(o.Username)
	mo.SetPassword(o.Password)
	if o.Will != nil {
		mo.SetBinaryWill(o.Will.Topic, o.Will.Payload, o.Will.QoS, o.Will.Retain)
	}
	u, tlsCfg, timeout := o.Broker, o.TLS, o.ConnectTimeout
	mo.SetCustomOpenConnectionFn(func(*url.URL, mqtt311.ClientOptions) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return dial(ctx, u, tlsCfg)
	})
	h := o.OnMessage
	mo.SetDefaultPublishHandler(func(_ mqtt311.Client, m mqtt311.Message) {
		if h != nil {
			h(Message{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos(), Retain: m.Retained()})
		}
	})
	mo.SetConnectionLostHandler(func(_ mqtt311.Client, err error) { c.lost(err) })
	if o.Session != nil && !o.CleanSession {
		mo.SetStore(o.Session.v3)
	}
	cli := mqtt311.NewClient(mo)
	tok := cli.Connect()
	if !tok.WaitTimeout(o.ConnectTimeout + time.Second) {
		cli.Disconnect(0)
		return c.connErr(errors.New("timed out waiting for CONNACK"), false)
	}
	if err := tok.Error(); err != nil {
		var refused bool
		for _, e := range []error{mqttpk.ErrorRefusedBadProtocolVersion, mqttpk.ErrorRefusedIDRejected, mqttpk.ErrorRefusedServerUnavailable,
			mqttpk.ErrorRefusedBadUsernameOrPassword, mqttpk.ErrorRefusedNotAuthorised} {
			if errors.Is(err, e) {
				refused = true
			}
		}
		return c.connErr(err, refused)
	}
	c.v3 = cli
	return nil
}

// Publish sends m and, for QoS 1 and 2, waits for the broker's acknowledgement (bounded by ctx and
// ConnectTimeout). A broker that refuses the message (MQTT 5 reason code ≥ 0x80) gives an error.
func (c *Client) Publish(ctx context.Context, m Message) error {
	if err := c.ended(); err != nil {
		return err
	}
	if c.v5 != nil {
		ctx, cancel := context.WithTimeout(ctx, c.opts.ConnectTimeout)
		defer cancel()
		stop := context.AfterFunc(c.connCtx, cancel) // a lost connection ends the wait
		defer stop()
		_, err := c.v5.Publish(ctx, &paho.Publish{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain})
		if err != nil && c.connCtx.Err() != nil {
			return c.doneErr()
		}
		return err
	}
	tok := c.v3.Publish(m.Topic, m.QoS, m.Retain, m.Payload)
	return c.wait311(ctx, tok)
}

func (c *Client) wait311(ctx context.Context, tok mqtt311.Token) error {
	t := time.NewTimer(c.opts.ConnectTimeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errors.New("timed out waiting for acknowledgement")
	case <-c.done:
		select {
		case <-tok.Done():
			return tok.Error()
		default:
			return c.doneErr()
		}
	}
}

// ended returns doneErr's error once the client is closed or its connection lost, and nil before.
func (c *Client) ended() error {
	select {
	case <-c.done:
		return c.doneErr()
	default:
		return nil
	}
}

func (c *Client) doneErr() error {
	select {
	case <-c.closed:
		return ErrClosed
	default:
		return ErrConnectionLost
	}
}

// PublishAsync writes m and returns without waiting for the acknowledgement. If it returns nil,
// done (which may be nil) is called exactly once, with nil when the broker acknowledged the
// message (QoS 0: at once, after the write) or with the error (ErrConnectionLost, a refusal);
// if it returns an error, done is not called. At most
// MaxInflight messages wait for acknowledgement; PublishAsync blocks beyond that. Acknowledgements
// are matched in publish order.
func (c *Client) PublishAsync(ctx context.Context, m Message, done func(error)) error {
	if done == nil {
		done = func(error) {}
	}
	if err := c.ended(); err != nil {
		return err
	}
	if m.QoS == 0 {
		if err := c.Publish(ctx, m); err != nil {
			return err
		}
		done(nil)
		return nil
	}
	c.asyncMu.Lock()
	defer c.asyncMu.Unlock()
	c.asyncOnce.Do(c.startAcker)
	if c.v5 != nil {
		ch := make(chan packets.ControlPacket, 1)
		c.sess.next = ch
		_, err := c.v5.PublishWithOptions(ctx, &paho.Publish{Topic: m.Topic, Payload: m.Payload, QoS: m.QoS, Retain: m.Retain},
			paho.PublishOptions{Method: paho.PublishMethod_AsyncSend})
		used := c.sess.next == nil
		c.sess.next = nil
		if !used { // not added to the session: nothing will be acknowledged
			if err == nil {
				err = errors.New("publish not added to the session")
			}
			return err
		}
		select {
		case c.pending <- pendingAck{v5: ch, qos: m.QoS, done: done}:
		case <-ctx.Done(): // stored in the session but untracked: report it as not sent
			return ctx.Err()
		}
		return nil // a write error after storing shows as connection loss in done
	}
	tok := c.v3.Publish(m.Topic, m.QoS, m.Retain, m.Payload)
	select {
	case c.pending <- pendingAck{v3: tok, qos: m.QoS, done: done}:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

func (c *Client) startAcker() {
	c.pending = make(chan pendingAck, c.opts.MaxInflight)
	c.ackerDone = make(chan struct{})
	c.asyncStarted = true
	go c.acker()
}

// acker completes PublishAsync callbacks in order. It exits when the connection ended and
// every pending callback was completed.
func (c *Client) acker() {
	defer close(c.ackerDone)
	for {
		var p pendingAck
		select {
		case p = <-c.pending:
		case <-c.done:
			for {
				select {
				case p := <-c.pending:
					c.complete(p, true)
				default:
					return
				}
			}
		}
		c.complete(p, false)
	}
}

func (c *Client) complete(p pendingAck, ended bool) {
	if p.v3 != nil {
		if ended {
			select {
			case <-p.v3.Done():
				p.done(p.v3.Error())
			default:
				p.done(c.doneErr())
			}
			return
		}
		select {
		case <-p.v3.Done():
			p.done(p.v3.Error())
		case <-c.done:
			select {
			case <-p.v3.Done():
				p.done(p.v3.Error())
			default:
				p.done(c.doneErr())
			}
		}
		return
	}
	var resp packets.ControlPacket
	if ended {
		select {
		case resp = <-p.v5:
		default:
			p.done(c.doneErr())
			return
		}
	} else {
		select {
		case resp = <-p.v5:
		case <-c.done:
			select {
			case resp = <-p.v5:
			default:
				p.done(c.doneErr())
				return
			}
		}
	}
	p.done(ackError(resp))
}

func ackError(resp packets.ControlPacket) error {
	switch r := resp.Content.(type) {
	case *packets.Puback:
		if r.ReasonCode >= 0x80 {
			return fmt.Errorf("broker rejected the publish with reason code %#x", r.ReasonCode)
		}
		return nil
	case *packets.Pubrec:
		if r.ReasonCode >= 0x80 {
			return fmt.Errorf("broker rejected the publish with reason code %#x", r.ReasonCode)
		}
		return nil
	case *packets.Pubcomp:
		return nil
	}
	return ErrConnectionLost
}

// Subscribe subscribes to filter; messages go to ClientOptions.OnMessage. A refused subscription
// (SUBACK failure code) is an error.
func (c *Client) Subscribe(ctx context.Context, filter string, qos byte) error {
	if err := c.ended(); err != nil {
		return err
	}
	if c.v5 != nil {
		ctx, cancel := context.WithTimeout(ctx, c.opts.ConnectTimeout)
		defer cancel()
		sa, err := c.v5.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
		if err != nil {
			if sa != nil && len(sa.Reasons) > 0 {
				return fmt.Errorf("subscribe %q: broker answered reason code %#x", filter, sa.Reasons[0])
			}
			return fmt.Errorf("subscribe %q: %w", filter, err)
		}
		return nil
	}
	tok := c.v3.Subscribe(filter, qos, nil)
	if err := c.wait311(ctx, tok); err != nil {
		return fmt.Errorf("subscribe %q: %w", filter, err)
	}
	if st, ok := tok.(*mqtt311.SubscribeToken); ok {
		for _, code := range st.Result() {
			if code >= 0x80 {
				return fmt.Errorf("subscribe %q: broker refused it", filter)
			}
		}
	}
	return nil
}

// Close sends DISCONNECT (so no will is published), closes the connection and waits for the
// client's goroutines. Later calls return ErrClosed.
func (c *Client) Close() error {
	err := ErrClosed
	c.closeOnce.Do(func() {
		err = nil
		close(c.closed)
		c.closeConn(true)
	})
	return err
}

// Drop ends the connection abruptly, without DISCONNECT, as a network failure would: the broker
// then publishes the will. It is how Device simulates flaps. Later Close calls return ErrClosed.
func (c *Client) Drop() {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.closeConn(false)
	})
}

func (c *Client) closeConn(graceful bool) {
	if c.v5 != nil {
		if graceful {
			_ = c.v5.Disconnect(&paho.Disconnect{ReasonCode: 0})
		} else {
			// Without DISCONNECT: closing the socket makes the broker see a network failure.
			_ = c.v5.Disconnect(&paho.Disconnect{ReasonCode: 0x04}) // "disconnect with will message"
		}
		<-c.v5.Done()
		c.sess.release()
	}
	if c.v3 != nil {
		if graceful {
			c.v3.Disconnect(50)
		} else {
			c.v3.Disconnect(0)
		}
	}
	c.lost(nil)
	c.asyncMu.Lock()
	started := c.asyncStarted
	c.asyncMu.Unlock()
	if started {
		<-c.ackerDone
	}
}

// trackingSession is paho's in-memory session that hands the acknowledgement channel of the next
// PUBLISH to PublishAsync instead of paho's (unread, for AsyncSend) one.
type trackingSession struct {
	*state.State
	shared bool                       // a Session's state: outlives this client, not closed by it
	next   chan packets.ControlPacket // set under Client.asyncMu
}

// release ends this client's use of the state: closes it, or for a shared state only marks the
// connection lost (paho already did on shutdown; it is idempotent).
func (s *trackingSession) release() {
	if s.shared {
		_ = s.State.ConnectionLost(nil)
		return
	}
	_ = s.State.Close()
}

func (s *trackingSession) AddToSession(ctx context.Context, p session.Packet, resp chan<- packets.ControlPacket) error {
	if s.next != nil && p.Type() == packets.PUBLISH {
		ch := s.next
		if err := s.State.AddToSession(ctx, p, ch); err != nil {
			return err
		}
		s.next = nil
		return nil
	}
	return s.State.AddToSession(ctx, p, resp)
}
