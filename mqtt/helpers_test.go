package mqtt

import (
	"context"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	paho "github.com/eclipse/paho.golang/paho"
	pahov3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(idleClientsEnv); spec != "" {
		os.Exit(runIdleClients(spec))
	}
	goleak.VerifyTestMain(m)
}

// startServer starts a server with a plain TCP listener "tcp" on 127.0.0.1:0 (anonymous allowed)
// unless opts has listeners, and shuts it down at cleanup.
func startServer(t testing.TB, opts Options) *Server {
	t.Helper()
	return startServerWith(t, opts)
}

// startServerWith is startServer with mods applied to the server before Start.
func startServerWith(t testing.TB, opts Options, mods ...func(*Server)) *Server {
	t.Helper()
	if len(opts.Listeners) == 0 {
		opts.Listeners = []Listener{{Name: "tcp", Type: TypeTCP, Address: "127.0.0.1:0", AllowAnonymous: true}}
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	for _, m := range mods {
		m(srv)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil && err != ErrClosed {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return srv
}

// v5 is an MQTT 5 test client collecting what it receives.
type v5 struct {
	*paho.Client
	mu   sync.Mutex
	msgs []*paho.Publish
	got  chan *paho.Publish
	disc chan *paho.Disconnect
}

type v5opts struct {
	id, user, pass string
	clean          bool
	expiry         uint32
	keepAlive      uint16
	recvMax        uint16
	will           *paho.WillMessage
	willProps      *paho.WillProperties
	topicAliasMax  uint16
	conn           net.Conn
	noProblemInfo  bool // send Request Problem Information 0 (paho's default)
	keepAliveZero  bool // ask for keep alive 0 (keepAlive 0 means the default 30 s)
}

func dialV5(t testing.TB, addr string, o v5opts) (*v5, *paho.Connack, error) {
	t.Helper()
	nc := o.conn
	if nc == nil {
		var err error
		nc, err = net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
	}
	c := &v5{got: make(chan *paho.Publish, 100000), disc: make(chan *paho.Disconnect, 1)}
	c.Client = paho.NewClient(paho.ClientConfig{
		// paho.golang writes a packet in several Writes, from more than one goroutine (its pinger
		// sends a PINGREQ at once after CONNACK). Only a *net.TCPConn makes that one writev; over
		// TLS or WebSocket the packets interleave unless the conn is a sync.Locker (paho #81, #90).
		// Unwrapped, TestTLSAndMTLS failed 6 in 150 runs with mochi reading a PINGREQ inside a
		// SUBSCRIBE ("malformed packet: topic").
		Conn: packets.NewThreadSafeConn(nc),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.mu.Lock()
			c.msgs = append(c.msgs, pr.Packet)
			c.mu.Unlock()
			select {
			case c.got <- pr.Packet:
			default:
			}
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) {
			select {
			case c.disc <- d:
			default:
			}
		},
		OnClientError: func(error) {},
	})
	recv := o.recvMax
	if recv == 0 {
		recv = 100
	}
	ka := o.keepAlive
	if ka == 0 && !o.keepAliveZero {
		ka = 30
	}
	cp := &paho.Connect{
		ClientID:    o.id,
		KeepAlive:   ka,
		CleanStart:  o.clean || o.expiry == 0,
		Properties:  &paho.ConnectProperties{ReceiveMaximum: &recv, TopicAliasMaximum: &o.topicAliasMax, RequestProblemInfo: !o.noProblemInfo},
		WillMessage: o.will, WillProperties: o.willProps,
	}
	if o.expiry > 0 {
		cp.Properties.SessionExpiryInterval = &o.expiry
	}
	if o.user != "" {
		cp.Username, cp.UsernameFlag = o.user, true
	}
	if o.pass != "" {
		cp.Password, cp.PasswordFlag = []byte(o.pass), true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := c.Connect(ctx, cp)
	if err != nil {
		_ = nc.Close()
		<-c.Done()
		return nil, ca, err
	}
	t.Cleanup(func() {
		_ = c.Disconnect(&paho.Disconnect{ReasonCode: 0})
		_ = nc.Close()
		<-c.Done()
	})
	return c, ca, nil
}

func mustV5(t testing.TB, addr string, o v5opts) *v5 {
	t.Helper()
	c, ca, err := dialV5(t, addr, o)
	if err != nil {
		code := byte(0)
		if ca != nil {
			code = ca.ReasonCode
		}
		t.Fatalf("connect %q: %v (reason %#x)", o.id, err, code)
	}
	return c
}

func (c *v5) sub(t testing.TB, filter string, qos byte) *paho.Suback {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil && sa == nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return sa
}

func (c *v5) pub(t testing.TB, topic string, qos byte, payload string) *paho.PublishResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: []byte(payload)})
	if err != nil && r == nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	return r
}

// next waits for the next message, failing the test after d.
func (c *v5) next(t testing.TB, d time.Duration) *paho.Publish {
	t.Helper()
	select {
	case p := <-c.got:
		return p
	case <-time.After(d):
		t.Fatalf("no message within %s", d)
		return nil
	}
}

// none asserts no message arrives within d.
func (c *v5) none(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case p := <-c.got:
		t.Fatalf("unexpected message on %s: %q", p.Topic, p.Payload)
	case <-time.After(d):
	}
}

type (
	pahov3Client  = pahov3.Client
	pahov3Message = pahov3.Message
)

func v3opts(addr, id string) *pahov3.ClientOptions {
	return pahov3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(false).
		SetAutoReconnect(false).SetConnectRetry(false).SetKeepAlive(30 * time.Second).
		SetConnectTimeout(5 * time.Second).SetProtocolVersion(4)
}

func connectV3(t testing.TB, o *pahov3.ClientOptions) pahov3.Client {
	t.Helper()
	c := pahov3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("v3 connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func dialV3(t testing.TB, addr, id, user, pass string, clean bool) (pahov3.Client, error) {
	t.Helper()
	o := v3opts(addr, id).SetCleanSession(clean)
	if user != "" {
		o.SetUsername(user).SetPassword(pass)
	}
	c := pahov3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, context.DeadlineExceeded
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// counterValue sums the samples of a counter or gauge family in reg whose labels include want.
func counterValue(t testing.TB, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			if m.Counter != nil {
				sum += m.Counter.GetValue()
			}
			if m.Gauge != nil {
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
