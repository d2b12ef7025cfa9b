package bridge_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/sluicemq/sluice/bridge"
	"github.com/sluicemq/sluice/mqtt"
	"github.com/sluicemq/sluice/mqtt/mqtttest"
)

// ulPKI is a throwaway CA with a server certificate for 127.0.0.1 and a client certificate.
type ulPKI struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func ulMakePKI(t testing.TB) ulPKI {
	t.Helper()
	dir := t.TempDir()
	ca := mqtttest.NewCA(t, "sluice test CA")
	p := ulPKI{ca: ca.WriteFile(t, dir, "ca")}
	p.serverCert, p.serverKey = ca.Issue(t, "127.0.0.1", x509.ExtKeyUsageServerAuth).WriteFiles(t, dir, "server")
	p.clientCert, p.clientKey = ca.Issue(t, "gateway", x509.ExtKeyUsageClientAuth).WriteFiles(t, dir, "client")
	return p
}

// TestUplinkTransports forwards over every kind of upstream URL, with TLS verified against a CA.
func TestUplinkTransports(t *testing.T) {
	pki := ulMakePKI(t)
	serverTLS := mqtt.TLS{CertFile: pki.serverCert, KeyFile: pki.serverKey}
	mutual := mqtt.TLS{CertFile: pki.serverCert, KeyFile: pki.serverKey, ClientCAFile: pki.ca, RequireClientCert: true}
	for _, tc := range []struct {
		name     string
		listener mqtt.Listener
		scheme   string
		version  int
		tls      bridge.UplinkTLS
	}{
		{"mqtts/v5", mqtt.Listener{Type: "tls", TLS: serverTLS}, "mqtts", 5, bridge.UplinkTLS{CAFile: pki.ca}},
		{"mqtts/v3.1.1", mqtt.Listener{Type: "tls", TLS: serverTLS}, "ssl", 4, bridge.UplinkTLS{CAFile: pki.ca}},
		{"mqtts+client-cert/v5", mqtt.Listener{Type: "tls", TLS: mutual}, "tls", 5,
			bridge.UplinkTLS{CAFile: pki.ca, CertFile: pki.clientCert, KeyFile: pki.clientKey}},
		{"ws/v5", mqtt.Listener{Type: "ws"}, "ws", 5, bridge.UplinkTLS{}},
		{"wss/v5", mqtt.Listener{Type: "wss", TLS: serverTLS}, "wss", 5, bridge.UplinkTLS{CAFile: pki.ca}},
		{"wss/v3.1.1", mqtt.Listener{Type: "wss", TLS: serverTLS}, "wss", 4, bridge.UplinkTLS{CAFile: pki.ca}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.listener
			l.Name, l.Address, l.AllowAnonymous = "up", "127.0.0.1:0", true
			cloud := ulStartCloud(t, mqtt.Options{Listeners: []mqtt.Listener{l}})
			edge := ulOpenEdge(t, t.TempDir(), ulEdgeConfig())
			defer edge.Close()
			ulEnqueue(t, edge, []string{"a", "b"}, 0, 100)
			o := ulOptions("cloud", tc.scheme+"://"+cloud.addr)
			o.ProtocolVersion, o.TLS = tc.version, tc.tls
			u := ulStart(t, edge, o)
			ulWait(t, 20*time.Second, "the backlog to drain", func() bool { return ulBacklog(t, edge) == 0 })
			ulCheck(t, ulPayloads(cloud.messages()), map[string]int{"a": 100, "b": 100})
			if st := u.Status(); st.Failures != 0 {
				t.Errorf("status %+v: failures over a healthy link", st)
			}
		})
	}
	t.Run("unknown CA", func(t *testing.T) {
		l := mqtt.Listener{Name: "up", Type: "tls", Address: "127.0.0.1:0", AllowAnonymous: true, TLS: serverTLS}
		cloud := ulStartCloud(t, mqtt.Options{Listeners: []mqtt.Listener{l}})
		edge := ulOpenEdge(t, t.TempDir(), ulEdgeConfig())
		defer edge.Close()
		ulEnqueue(t, edge, []string{"a"}, 0, 1)
		u := ulStart(t, edge, ulOptions("cloud", "mqtts://"+cloud.addr)) // system roots: the test CA is unknown
		ulWait(t, 10*time.Second, "two failed attempts", func() bool { return u.Status().Failures >= 2 })
		if st := u.Status(); ulBacklog(t, edge) != 1 || st.LastError == "" {
			t.Errorf("status %+v, backlog %d: want a TLS error and the message kept", st, ulBacklog(t, edge))
		}
	})
}

// ulSubscriber is an MQTT 5 client that records the payloads it receives, in order.
type ulSubscriber struct {
	mu     sync.Mutex
	got    [][]byte
	topics []string
	dup    []bool // the DUP flag of each: set when the broker redelivers from the session
	c      *paho.Client
}

func (s *ulSubscriber) record(p *paho.Publish) {
	s.mu.Lock()
	s.got = append(s.got, append([]byte(nil), p.Payload...))
	s.topics = append(s.topics, p.Topic)
	s.dup = append(s.dup, p.Duplicate())
	s.mu.Unlock()
}

// repeats counts the payloads s got more than once, by the DUP flag of the repeat: redelivered by
// the broker from the session (flag set), or sent to the broker again by the publisher (not set).
func (s *ulSubscriber) repeats() (redelivered, resent int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	for i, p := range s.got {
		switch {
		case !seen[string(p)]:
			seen[string(p)] = true
		case s.dup[i]:
			redelivered++
		default:
			resent++
		}
	}
	return redelivered, resent
}

func (s *ulSubscriber) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

// unique is how many distinct payloads s got: duplicates do not count.
func (s *ulSubscriber) unique() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[string]bool, len(s.got))
	for _, p := range s.got {
		seen[string(p)] = true
	}
	return len(seen)
}

func (s *ulSubscriber) payloads() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.got...)
}

// connect (re)connects s to addr with a persistent session and subscribes to filter (when not "").
func (s *ulSubscriber) connect(t testing.TB, addr, id, filter string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{ClientID: id, Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			s.record(p.Packet)
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	expiry, window := uint32(3600), uint16(subscriberWindow)
	ca, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: false,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry, ReceiveMaximum: &window}})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("subscriber connect: %v %+v", err, ca)
	}
	t.Logf("subscriber %s: session present %v", id, ca.SessionPresent)
	if filter != "" {
		if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}}); err != nil {
			t.Fatalf("subscribe: %v", err)
		}
	}
	s.c = c
}

func (s *ulSubscriber) close() {
	if s.c == nil {
		return
	}
	_ = s.c.Disconnect(&paho.Disconnect{})
	select {
	case <-s.c.Done():
	case <-time.After(5 * time.Second):
	}
	s.c = nil
}

// ulFreePort returns a loopback address with a port that was free a moment ago.
func ulFreePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// subscriberWindow bounds the QoS 1 messages a broker may have sent to a ulSubscriber and not yet
// had acknowledged: its MQTT 5 Receive Maximum (paho's default is 65535).
const subscriberWindow = 100

// ulMosquitto runs Debian's mosquitto on addr as a child process (persistence in dir); stop ends it.
func ulMosquitto(t testing.TB, dir, addr string) (stop func()) {
	t.Helper()
	path, err := exec.LookPath("mosquitto")
	if err != nil {
		t.Fatalf("mosquitto is not installed (apt-get install mosquitto): %v", err)
	}
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(dir, "mosquitto.conf")
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	// user: mosquitto started as root switches to user mosquitto, which could not write into dir.
	text := fmt.Sprintf("user %s\nlistener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n"+
		"autosave_interval 0\nmax_queued_messages 0\nmax_inflight_messages 100\nlog_dest stderr\nlog_type error\n", me.Username, port, dir)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(path, "-c", conf)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM) // mosquitto saves its persistence file on SIGTERM
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	t.Cleanup(stop)
	ulWait(t, 10*time.Second, "mosquitto to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return stop
}

// TestUplinkMosquitto: Sluice → Mosquitto (Debian's), MQTT 5 and 3.1.1, with a restart of Mosquitto
// under a steady load: the subscriber behind Mosquitto gets every message, in order per topic.
func TestUplinkMosquitto(t *testing.T) {
	for _, version := range []int{5, 4} {
		t.Run(fmt.Sprintf("protocol=%d", version), func(t *testing.T) {
			dir := t.TempDir()
			addr := ulFreePort(t)
			stop := ulMosquitto(t, dir, addr)
			sub := &ulSubscriber{}
			sub.connect(t, addr, "backend", "sites/#")
			defer func() { sub.close() }()

			edge := ulOpenEdge(t, t.TempDir(), ulEdgeConfig())
			defer edge.Close()
			o := ulOptions("mosquitto", "mqtt://"+addr)
			o.ProtocolVersion = version
			o.Topic = bridge.TopicRewrite{Template: "sites/{gateway}/{topic}"}
			u := ulStart(t, edge, o)

			topics := []string{"d/0", "d/1"}
			const perTopic = 600
			ulEnqueue(t, edge, topics, 0, perTopic/2)
			ulWait(t, 20*time.Second, "the first half upstream", func() bool { return sub.unique() >= perTopic })
			stop()
			ulWait(t, 10*time.Second, "the uplink to notice", func() bool { return u.Status().State == "connecting" })
			ulEnqueue(t, edge, topics, perTopic/2, perTopic/2) // piles up during the outage
			stop = ulMosquitto(t, dir, addr)
			sub.close()
			sub.connect(t, addr, "backend", "") // the persistent session kept the subscription
			_ = stop
			ulWait(t, 30*time.Second, "the backlog to drain", func() bool { return ulBacklog(t, edge) == 0 })
			deadline := time.Now().Add(10 * time.Second)
			for sub.unique() < perTopic*len(topics) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			dups := ulCheck(t, sub.payloads(), map[string]int{"d/0": perTopic, "d/1": perTopic})
			// At-least-once on two hops, each bounded by its window: after the restart the uplink
			// resends what Mosquitto had not acknowledged to it, and Mosquitto redelivers (DUP set)
			// from the subscriber's session what the subscriber had not acknowledged when it
			// stopped (the test waits for the first half to arrive, not for its acks to reach
			// Mosquitto). Both make duplicates at the subscriber.
			redelivered, resent := sub.repeats()
			t.Logf("%d duplicates: %d resent by the uplink, %d redelivered by Mosquitto", dups, resent, redelivered)
			if resent > o.MaxInFlight {
				t.Errorf("the uplink resent %d messages, more than its in-flight window (%d)", resent, o.MaxInFlight)
			}
			if redelivered > subscriberWindow {
				t.Errorf("Mosquitto redelivered %d messages, more than the subscriber's receive maximum (%d)", redelivered, subscriberWindow)
			}
			sub.mu.Lock()
			for _, tp := range sub.topics {
				if tp != "sites/gw1/d/0" && tp != "sites/gw1/d/1" {
					t.Fatalf("subscriber got topic %q", tp)
				}
			}
			sub.mu.Unlock()
		})
	}
}

// TestUplinkDownlink: a command published upstream reaches a local subscriber, rewritten.
func TestUplinkDownlink(t *testing.T) {
	cloud := ulStartCloud(t, mqtt.Options{})
	local, err := mqtt.New(mqtt.Options{Listeners: []mqtt.Listener{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0", AllowAnonymous: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := local.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = local.Shutdown(ctx)
	}()
	localAddr := local.Addr("tcp").String()
	device := &ulSubscriber{}
	device.connect(t, localAddr, "device", "cmd/#")
	defer device.close()

	lc, err := bridge.NewLocalClient(bridge.LocalClientOptions{URL: "tcp://" + localAddr})
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	edge := ulOpenEdge(t, t.TempDir(), ulEdgeConfig())
	defer edge.Close()
	o := ulOptions("cloud", cloud.url())
	o.Downlink = &bridge.Downlink{Filters: []string{"sites/gw1/cmd/#"}, QoS: 1,
		Topic: bridge.TopicRewrite{StripPrefix: "sites/gw1/"}, Publisher: lc}
	u := ulStart(t, edge, o)
	ulWait(t, 10*time.Second, "the uplink to connect", func() bool { return u.Status().State == "connected" })

	backend := &ulSubscriber{}
	backend.connect(t, cloud.addr, "backend", "")
	defer backend.close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		if _, err := backend.c.Publish(ctx, &paho.Publish{Topic: "sites/gw1/cmd/reboot", QoS: 1, Payload: ulPayload("cmd/reboot", i)}); err != nil {
			t.Fatal(err)
		}
	}
	ulWait(t, 10*time.Second, "the commands to reach the device", func() bool { return device.count() >= 3 })
	ulCheck(t, device.payloads(), map[string]int{"cmd/reboot": 3})
	device.mu.Lock()
	defer device.mu.Unlock()
	for _, tp := range device.topics {
		if tp != "cmd/reboot" {
			t.Errorf("device got topic %q, want cmd/reboot", tp)
		}
	}
}
