package mqtt

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	paho "github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemq/sluice/mqtt/mqtttest"
)

// rawConnect opens a TCP connection, sends an MQTT CONNECT (version 4 or 5) and reads the CONNACK.
func rawConnect(t testing.TB, addr string, version byte, id string) net.Conn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if _, err := nc.Write(connectPacket(version, id)); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(nc, hdr); err != nil || hdr[0] != 0x20 {
		t.Fatalf("read CONNACK: %v %x", err, hdr)
	}
	body := make([]byte, hdr[1])
	if _, err := io.ReadFull(nc, body); err != nil || body[1] != 0 {
		t.Fatalf("CONNACK body %x: %v", body, err)
	}
	_ = nc.SetReadDeadline(time.Time{})
	return nc
}

func connectPacket(version byte, id string) []byte {
	var vh bytes.Buffer
	vh.Write([]byte{0, 4, 'M', 'Q', 'T', 'T', version, 0x02, 0, 60})
	if version == 5 {
		vh.WriteByte(0) // no properties
	}
	vh.Write([]byte{byte(len(id) >> 8), byte(len(id))})
	vh.WriteString(id)
	return append([]byte{0x10, byte(vh.Len())}, vh.Bytes()...)
}

// publishPacket is a QoS 0 PUBLISH with a raw topic (which may be invalid) and payload.
func publishPacket(version byte, topic []byte, payload []byte) []byte {
	var b bytes.Buffer
	b.Write([]byte{byte(len(topic) >> 8), byte(len(topic))})
	b.Write(topic)
	if version == 5 {
		b.WriteByte(0)
	}
	b.Write(payload)
	return append(mqtttest.AppendHeader(nil, 0x30, b.Len()), b.Bytes()...)
}

// expectClose reads until the server closes nc and returns what it sent before.
func expectClose(t testing.TB, nc net.Conn) []byte {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(nc)
	if err != nil {
		t.Fatalf("server did not close the connection: %v", err)
	}
	return b
}

func TestBadInput(t *testing.T) {
	srv := startServer(t, Options{Limits: Limits{MaxPacketSize: 1024, MaxTopicLength: 32, MaxTopicLevels: 4}})
	addr := srv.Addr("tcp").String()
	watcher := mustV5(t, addr, v5opts{id: "watcher"})
	watcher.sub(t, "#", 0)

	tests := []struct {
		name     string
		version  byte
		send     []byte
		wantDisc byte // reason code of the DISCONNECT expected before close (v5); 0 = just closed
	}{
		{"oversized packet v5", 5, publishPacket(5, []byte("big"), make([]byte, 2000)), 0},
		{"oversized packet v3", 4, publishPacket(4, []byte("big"), make([]byte, 2000)), 0},
		{"invalid utf8 topic", 5, publishPacket(5, []byte{'a', 0xff, 0xfe}, []byte("x")), 0},
		{"wildcard in topic v5", 5, publishPacket(5, []byte("a/+/b"), []byte("x")), 0x82},
		{"topic too long v5", 5, publishPacket(5, bytes.Repeat([]byte("t"), 40), []byte("x")), 0x90},
		{"too many levels v5", 5, publishPacket(5, []byte("a/b/c/d/e"), []byte("x")), 0x90},
		{"topic too long v3", 4, publishPacket(4, bytes.Repeat([]byte("t"), 40), []byte("x")), 0},
		{"second connect v5", 5, connectPacket(5, "again"), 0x82},
		{"second connect v3", 4, connectPacket(4, "again"), 0},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc := rawConnect(t, addr, tt.version, fmt.Sprintf("bad-%d", i))
			if _, err := nc.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			got := expectClose(t, nc)
			if tt.wantDisc != 0 {
				if len(got) < 3 || got[0] != 0xE0 || got[2] != tt.wantDisc {
					t.Fatalf("got %x before close, want DISCONNECT with reason %#x", got, tt.wantDisc)
				}
			}
		})
	}
	watcher.none(t, 200*time.Millisecond)
	// The broker is unharmed.
	c := mustV5(t, addr, v5opts{id: "after"})
	c.pub(t, "ok", 1, "fine")
	if p := watcher.next(t, 5*time.Second); p.Topic != "ok" {
		t.Fatalf("watcher got %s", p.Topic)
	}
}

func TestTakeover(t *testing.T) {
	srv := startServer(t, Options{})
	addr := srv.Addr("tcp").String()
	first := mustV5(t, addr, v5opts{id: "same", expiry: 60})
	first.sub(t, "take/#", 1)
	second, _, err := dialV5(t, addr, v5opts{id: "same", expiry: 60})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-first.disc:
		if d.ReasonCode != 0x8E {
			t.Fatalf("first client disconnected with %#x, want 0x8E session taken over", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first client was not disconnected")
	}
	// The session (with its subscription) moved to the second connection.
	pub := mustV5(t, addr, v5opts{id: "pub"})
	pub.pub(t, "take/x", 1, "y")
	if p := second.next(t, 5*time.Second); string(p.Payload) != "y" {
		t.Fatalf("got %q", p.Payload)
	}
}

func TestRetainedWillsShared(t *testing.T) {
	srv := startServer(t, Options{})
	addr := srv.Addr("tcp").String()

	t.Run("retained", func(t *testing.T) {
		pub := mustV5(t, addr, v5opts{id: "r-pub"})
		ctxPub(t, pub, &paho.Publish{Topic: "r/a", QoS: 1, Retain: true, Payload: []byte("kept")})
		sub := mustV5(t, addr, v5opts{id: "r-sub"})
		sub.sub(t, "r/#", 1)
		p := sub.next(t, 5*time.Second)
		if string(p.Payload) != "kept" || !p.Retain {
			t.Fatalf("retained: %q retain=%v", p.Payload, p.Retain)
		}
	})
	t.Run("will", func(t *testing.T) {
		sub := mustV5(t, addr, v5opts{id: "w-sub"})
		sub.sub(t, "will/#", 1)
		nc, _ := net.Dial("tcp", addr)
		mustV5(t, "", v5opts{id: "w-dev", conn: nc, will: &paho.WillMessage{Topic: "will/dev", QoS: 1, Payload: []byte("gone")}})
		nc.Close() // abrupt: no DISCONNECT
		if p := sub.next(t, 5*time.Second); string(p.Payload) != "gone" {
			t.Fatalf("will: %q", p.Payload)
		}
	})
	t.Run("will delay", func(t *testing.T) {
		sub := mustV5(t, addr, v5opts{id: "wd-sub"})
		sub.sub(t, "willd/#", 1)
		nc, _ := net.Dial("tcp", addr)
		mustV5(t, "", v5opts{id: "wd-dev", conn: nc, expiry: 30,
			will: &paho.WillMessage{Topic: "willd/dev", QoS: 1, Payload: []byte("late")}, willProps: &paho.WillProperties{WillDelayInterval: ptr(uint32(2))}})
		start := time.Now()
		nc.Close()
		p := sub.next(t, 10*time.Second)
		if string(p.Payload) != "late" {
			t.Fatalf("delayed will: %q", p.Payload)
		}
		if d := time.Since(start); d < 1500*time.Millisecond {
			t.Fatalf("will delivered after %s, want ≥ 2s delay", d)
		}
	})
	t.Run("shared subscription", func(t *testing.T) {
		a := mustV5(t, addr, v5opts{id: "sh-a"})
		b := mustV5(t, addr, v5opts{id: "sh-b"})
		a.sub(t, "$share/g/jobs/#", 1)
		b.sub(t, "$share/g/jobs/#", 1)
		pub := mustV5(t, addr, v5opts{id: "sh-pub"})
		const n = 40
		for i := range n {
			pub.pub(t, "jobs/x", 1, fmt.Sprint(i))
		}
		seen := map[string]bool{}
		waitFor(t, 5*time.Second, "all shared messages", func() bool {
			a.mu.Lock()
			b.mu.Lock()
			defer a.mu.Unlock()
			defer b.mu.Unlock()
			return len(a.msgs)+len(b.msgs) >= n
		})
		a.mu.Lock()
		b.mu.Lock()
		for _, m := range append(append([]*paho.Publish{}, a.msgs...), b.msgs...) {
			if seen[string(m.Payload)] {
				t.Errorf("message %s delivered to both members", m.Payload)
			}
			seen[string(m.Payload)] = true
		}
		total := len(a.msgs) + len(b.msgs)
		a.mu.Unlock()
		b.mu.Unlock()
		if total != n {
			t.Fatalf("group got %d messages, want %d", total, n)
		}
	})
}

func ptr[T any](v T) *T { return &v }

func ctxPub(t testing.TB, c *v5, p *paho.Publish) *paho.PublishResponse {
	t.Helper()
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	r, err := c.Publish(ctx, p)
	if err != nil && r == nil {
		t.Fatalf("publish %s: %v", p.Topic, err)
	}
	return r
}

func TestV5Properties(t *testing.T) {
	srv := startServer(t, Options{Limits: Limits{KeepAliveMax: 120, KeepAliveMin: 10}})
	addr := srv.Addr("tcp").String()

	t.Run("server keep alive", func(t *testing.T) {
		for _, tc := range []struct{ ask, want uint16 }{{0, 120}, {1000, 120}, {2, 10}, {60, 0}} {
			_, ca, err := dialV5(t, addr, v5opts{id: fmt.Sprint("ka", tc.ask), keepAlive: tc.ask, keepAliveZero: tc.ask == 0})
			if err != nil {
				t.Fatal(err)
			}
			got := uint16(0)
			if ca.Properties.ServerKeepAlive != nil {
				got = *ca.Properties.ServerKeepAlive
			}
			if got != tc.want {
				t.Fatalf("keep alive %d: CONNACK server keep alive %d, want %d", tc.ask, got, tc.want)
			}
			if ca.Properties.MaximumPacketSize == nil || *ca.Properties.MaximumPacketSize != 1<<20 {
				t.Fatalf("CONNACK maximum packet size %v", ca.Properties.MaximumPacketSize)
			}
		}
	})
	t.Run("v3 keep alive over max refused", func(t *testing.T) {
		nc, _ := net.Dial("tcp", addr)
		defer nc.Close()
		pk := connectPacket(4, "v3ka")
		pk[10], pk[11] = 0x0F, 0xFF // keep alive 4095 s
		nc.Write(pk)
		got := expectClose(t, nc)
		if len(got) < 4 || got[0] != 0x20 || got[3] != 0x02 {
			t.Fatalf("got %x, want CONNACK identifier rejected", got)
		}
	})
	t.Run("request response and user properties", func(t *testing.T) {
		sub := mustV5(t, addr, v5opts{id: "rr-sub", noProblemInfo: true})
		sub.sub(t, "req/#", 1)
		pub := mustV5(t, addr, v5opts{id: "rr-pub", noProblemInfo: true})
		r := ctxPub(t, pub, &paho.Publish{Topic: "req/1", QoS: 1, Payload: []byte("q"), Properties: &paho.PublishProperties{
			ResponseTopic: "resp/1", CorrelationData: []byte("c-42"), User: paho.UserProperties{{Key: "k", Value: "v"}},
			MessageExpiry: ptr(uint32(60)), ContentType: "text/plain"}})
		if r.Properties != nil && len(r.Properties.User) != 0 {
			t.Fatalf("PUBACK echoed user properties %v", r.Properties.User)
		}
		p := sub.next(t, 5*time.Second)
		if p.Properties == nil || p.Properties.ResponseTopic != "resp/1" || string(p.Properties.CorrelationData) != "c-42" ||
			p.Properties.User.Get("k") != "v" || p.Properties.ContentType != "text/plain" || p.Properties.MessageExpiry == nil {
			t.Fatalf("properties not forwarded: %+v", p.Properties)
		}
	})
	t.Run("topic alias", func(t *testing.T) {
		sub := mustV5(t, addr, v5opts{id: "ta-sub"})
		sub.sub(t, "alias/#", 1)
		pub := mustV5(t, addr, v5opts{id: "ta-pub"})
		ctxPub(t, pub, &paho.Publish{Topic: "alias/long/topic", QoS: 1, Payload: []byte("1"), Properties: &paho.PublishProperties{TopicAlias: ptr(uint16(3))}})
		ctxPub(t, pub, &paho.Publish{Topic: "", QoS: 1, Payload: []byte("2"), Properties: &paho.PublishProperties{TopicAlias: ptr(uint16(3))}})
		for _, want := range []string{"1", "2"} {
			p := sub.next(t, 5*time.Second)
			if p.Topic != "alias/long/topic" || string(p.Payload) != want {
				t.Fatalf("alias: got %s %q", p.Topic, p.Payload)
			}
		}
	})
	t.Run("session expiry", func(t *testing.T) {
		c := mustV5(t, addr, v5opts{id: "se", expiry: 1})
		c.sub(t, "se/#", 1)
		c.Disconnect(&paho.Disconnect{})
		_, ca, err := dialV5(t, addr, v5opts{id: "se", expiry: 1})
		if err != nil || !ca.SessionPresent {
			t.Fatalf("session within expiry: present=%v err=%v", ca != nil && ca.SessionPresent, err)
		}
	})
	t.Run("message expiry", func(t *testing.T) {
		c := mustV5(t, addr, v5opts{id: "me", expiry: 60})
		c.sub(t, "me/#", 1)
		c.Disconnect(&paho.Disconnect{})
		pub := mustV5(t, addr, v5opts{id: "me-pub"})
		ctxPub(t, pub, &paho.Publish{Topic: "me/short", QoS: 1, Payload: []byte("short"), Properties: &paho.PublishProperties{MessageExpiry: ptr(uint32(1))}})
		ctxPub(t, pub, &paho.Publish{Topic: "me/long", QoS: 1, Payload: []byte("long"), Properties: &paho.PublishProperties{MessageExpiry: ptr(uint32(60))}})
		time.Sleep(3 * time.Second) // the behaviour under test is expiry with time
		c2 := mustV5(t, addr, v5opts{id: "me", expiry: 60})
		p := c2.next(t, 5*time.Second)
		if string(p.Payload) != "long" {
			t.Fatalf("got %q, want only the unexpired message", p.Payload)
		}
		c2.none(t, 300*time.Millisecond)
	})
}

func TestEchoUserProperties(t *testing.T) {
	srv := startServer(t, Options{EchoUserProperties: true})
	pub := mustV5(t, srv.Addr("tcp").String(), v5opts{id: "echo"})
	r := ctxPub(t, pub, &paho.Publish{Topic: "e", QoS: 1, Payload: []byte("x"), Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "k", Value: "v"}}}})
	if r.Properties == nil || r.Properties.User.Get("k") != "v" {
		t.Fatalf("PUBACK properties %+v, want the user property echoed", r.Properties)
	}
}

func TestShutdownDisconnectsClients(t *testing.T) {
	srv := startServer(t, Options{})
	addr := srv.Addr("tcp").String()
	c := mustV5(t, addr, v5opts{id: "bye"})
	idle, err := net.Dial("tcp", addr) // never sends CONNECT
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	waitFor(t, 5*time.Second, "idle connection admitted", func() bool { return srv.conns.Load() == 2 })
	ctx, cancel := contextWithTimeout(5 * time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown took %s with an idle pre-CONNECT socket open", d)
	}
	select {
	case d := <-c.disc:
		if d.ReasonCode != 0x8B {
			t.Fatalf("DISCONNECT reason %#x, want 0x8B server shutting down", d.ReasonCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("client got no DISCONNECT")
	}
	expectClose(t, idle)
	if srv.Ready() {
		t.Fatal("Ready after Shutdown")
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("listener still accepting after Shutdown")
	}
}

func TestSysTopics(t *testing.T) {
	srv := startServer(t, Options{SysInterval: time.Second})
	c := mustV5(t, srv.Addr("tcp").String(), v5opts{id: "sys"})
	c.sub(t, "$SYS/broker/clients/connected", 0)
	p := c.next(t, 5*time.Second)
	if p.Topic != "$SYS/broker/clients/connected" || len(p.Payload) == 0 {
		t.Fatalf("got %s %q", p.Topic, p.Payload)
	}
}

func TestPublishRate(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv := startServer(t, Options{Limits: Limits{PublishRate: 20, PublishBurst: 2}, Registerer: reg})
	c := mustV5(t, srv.Addr("tcp").String(), v5opts{id: "chatty"})
	start := time.Now()
	for i := range 10 {
		c.pub(t, "rate", 1, fmt.Sprint(i))
	}
	// 2 from the burst, then 8 at 20/s: at least 400 ms.
	if d := time.Since(start); d < 350*time.Millisecond {
		t.Fatalf("10 publishes at 20/s (burst 2) took %s", d)
	}
	if got := counterValue(t, reg, "sluice_mqtt_publish_rate_limited_total", nil); got < 7 {
		t.Fatalf("rate limited %v, want ≥ 7", got)
	}
}

func TestBackpressure(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv := startServer(t, Options{
		Limits:     Limits{MaxInflight: 8},
		Slow:       SlowSubscribers{Policy: PolicyBackpressure, DisconnectAfter: time.Minute},
		Registerer: reg,
	})
	addr := srv.Addr("tcp").String()
	// A QoS 1 subscriber that does not ack (raw socket, never reads).
	nc := rawConnect(t, addr, 5, "lazy")
	sub := []byte{0x82, 0, 0, 1, 0, 0, 4, 'b', 'p', '/', '#', 1}
	sub[1] = byte(len(sub) - 2)
	nc.Write(sub)
	waitFor(t, 5*time.Second, "subscription", func() bool {
		return counterValue(t, reg, "sluice_mqtt_subscriptions", nil) == 1
	})
	pub := mustV5(t, addr, v5opts{id: "eager"})
	acked := make(chan struct{}, 100)
	go func() {
		for i := range 20 {
			ctx, cancel := contextWithTimeout(20 * time.Second)
			_, err := pub.Publish(ctx, &paho.Publish{Topic: "bp/x", QoS: 1, Payload: []byte(fmt.Sprint(i))})
			cancel()
			if err != nil {
				return
			}
			acked <- struct{}{}
		}
	}()
	// The subscriber's window (3/4 of MaxInflight = 6) fills; then the publisher is held.
	waitFor(t, 5*time.Second, "window filled", func() bool { return len(acked) >= 6 })
	time.Sleep(300 * time.Millisecond) // give a publisher that is not held time to run ahead
	if n := len(acked); n > 8 {
		t.Fatalf("%d publishes acked while the subscriber acked none; want the publisher held", n)
	}
	if got := counterValue(t, reg, "sluice_mqtt_dropped_messages_total", nil) + counterValue(t, reg, "sluice_mqtt_inflight_full_dropped_total", nil); got != 0 {
		t.Fatalf("%v messages dropped under backpressure", got)
	}
	// Closing the subscriber releases the publisher.
	nc.Close()
	waitFor(t, 10*time.Second, "publisher released", func() bool { return len(acked) == 20 })
}
