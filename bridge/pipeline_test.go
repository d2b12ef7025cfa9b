package bridge_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/sluicemq/sluice/bridge"
	"github.com/sluicemq/sluice/mqtt"
	"github.com/sluicemq/sluice/mqtt/mqtttest"
)

// publishPacket encodes an MQTT 5 QoS 1 PUBLISH.
func publishPacket(topic string, id uint16, payload []byte) []byte {
	var pb []byte
	pb = binary.BigEndian.AppendUint16(pb, uint16(len(topic)))
	pb = append(pb, topic...)
	pb = binary.BigEndian.AppendUint16(pb, id)
	pb = append(pb, 0)
	pb = append(pb, payload...)
	return append(mqtttest.AppendHeader(nil, 0x32, len(pb)), pb...)
}

// burst buffers n QoS 1 publishes to topic with packet ids 1..n and payloads "0".."n-1" (to flush).
func (rc *rawConn) burst(t testing.TB, topic string, n int) {
	t.Helper()
	for i := range n {
		if _, err := rc.bw.Write(publishPacket(topic, uint16(i+1), []byte(strconv.Itoa(i)))); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPipelineKeepsOrder: one connection with 100 publishes in flight, cycling through a topic
// bridged into two queues, one bridged into one of them, and an unbridged one. PUBACKs come back in
// the order of the PUBLISHes [MQTT-4.6.0-2], each topic reaches subscribers in order, and each queue
// holds its messages in order, once each.
func TestPipelineKeepsOrder(t *testing.T) {
	r := newRig(t, rigOptions{pipeline: true,
		rules: []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}, {Filter: "devices/gw/#", Queue: "gateway"}},
		// Room for all 600 in the subscriber's outbound queue: the default (256) drops QoS 0 to a
		// subscriber that falls behind on a loaded machine.
		mqtt: mqtt.Options{Limits: mqtt.Limits{MaxPendingWrites: 1024}}})
	var mu sync.Mutex
	got := map[string][]int{}
	all := make(chan struct{}, 1000)
	sub := r.v5(t, "sub", func(p *paho.Publish) {
		n, _ := strconv.Atoi(string(p.Payload))
		mu.Lock()
		got[p.Topic] = append(got[p.Topic], n)
		mu.Unlock()
		all <- struct{}{}
	})
	// QoS 0: with QoS 1 and a full receive window mochi itself may resend held messages out of order.
	if _, err := sub.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "#", QoS: 0}}}); err != nil {
		t.Fatal(err)
	}
	rc := dialRaw(t, r.addr, "gw", "unused", nil)
	defer rc.close()
	const n, window = 600, 100
	topics := []string{"devices/gw/telemetry", "devices/gw/status", "plain/gw"}
	errc := make(chan error, 1)
	slots := make(chan struct{}, window)
	go func() {
		for i := range n {
			typ, body, err := rc.readPacket()
			if err != nil {
				errc <- err
				return
			}
			if typ != 4 {
				errc <- fmt.Errorf("packet type %d, want PUBACK", typ)
				return
			}
			if id := binary.BigEndian.Uint16(body); id != uint16(i+1) {
				errc <- fmt.Errorf("PUBACK %d is for packet %d: out of order", i+1, id)
				return
			}
			<-slots
		}
		errc <- nil
	}()
	for i := range n {
		slots <- struct{}{}
		if _, err := rc.bw.Write(publishPacket(topics[i%3], uint16(i+1), []byte(strconv.Itoa(i)))); err != nil {
			t.Fatal(err)
		}
		if len(slots) == window || i == n-1 || i%7 == 0 {
			if err := rc.bw.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("PUBACKs did not all arrive")
	}
	for range n {
		select {
		case <-all:
		case <-time.After(10 * time.Second):
			t.Fatal("subscriber did not get every message")
		}
	}
	mu.Lock()
	for topic, seq := range got {
		for i := 1; i < len(seq); i++ {
			if seq[i] < seq[i-1] {
				t.Fatalf("%s delivered out of order: %d after %d", topic, seq[i], seq[i-1])
			}
		}
	}
	mu.Unlock()
	for q, want := range map[string]func(i int) bool{
		"telemetry": func(i int) bool { return i%3 == 0 },
		"gateway":   func(i int) bool { return i%3 != 2 },
	} {
		var seq []string
		for i := range n {
			if want(i) {
				seq = append(seq, strconv.Itoa(i))
			}
		}
		ds := drain(t, r.m, q)
		if len(ds) != len(seq) {
			t.Fatalf("queue %s holds %d, want %d", q, len(ds), len(seq))
		}
		for i, d := range ds {
			if string(d.Payload) != seq[i] {
				t.Fatalf("queue %s message %d is %q, want %s", q, i, d.Payload, seq[i])
			}
		}
	}
}

// TestPipelineQoS2WaitsForQoS1: a QoS 2 publish behind pipelined QoS 1 publishes is handled after
// them (its PUBREC after their PUBACKs, its record after theirs).
func TestPipelineQoS2WaitsForQoS1(t *testing.T) {
	r := newRig(t, rigOptions{pipeline: true, rules: []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}}})
	rc := dialRaw(t, r.addr, "gw2", "unused", nil)
	defer rc.close()
	const n = 50
	rc.burst(t, "devices/gw2/telemetry", n)
	q2 := publishPacket("devices/gw2/telemetry", n+1, []byte("qos2"))
	q2[0] = 0x34 // PUBLISH, QoS 2
	if _, err := rc.bw.Write(q2); err != nil {
		t.Fatal(err)
	}
	if err := rc.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = rc.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for i := range n + 1 {
		typ, body, err := rc.readPacket()
		if err != nil {
			t.Fatal(err)
		}
		id := binary.BigEndian.Uint16(body)
		switch {
		case i < n && (typ != 4 || id != uint16(i+1)):
			t.Fatalf("packet %d: type %d id %d, want PUBACK %d", i, typ, id, i+1)
		case i == n && (typ != 5 || id != n+1):
			t.Fatalf("last packet: type %d id %d, want PUBREC %d", typ, id, n+1)
		}
	}
	ds := drain(t, r.m, "telemetry")
	if len(ds) != n+1 || string(ds[n].Payload) != "qos2" {
		t.Fatalf("queue holds %d, last %q; want %d with the QoS 2 record last", len(ds), ds[len(ds)-1].Payload, n+1)
	}
}

// TestPipelineACLDenial: one connection with many publishes in flight, every third to a topic the
// ACL denies. Denied publishes get PUBACK 0x87 (MQTT 5) in their place among the others' PUBACKs
// [MQTT-4.6.0-2] and are not stored; the allowed ones are stored in order.
func TestPipelineACLDenial(t *testing.T) { forModes(t, testPipelineACLDenial) }

func testPipelineACLDenial(t *testing.T, pipeline bool) {
	r := newRig(t, rigOptions{pipeline: pipeline,
		rules: []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}},
		acl:   []mqtt.ACLRule{{Publish: []string{"devices/%c/#"}}},
	})
	rc := dialRaw(t, r.addr, "gw3", "unused", nil)
	defer rc.close()
	const n = 90
	denied := func(i int) bool { return i%3 == 2 }
	for i := range n {
		topic := "devices/gw3/telemetry"
		if denied(i) {
			topic = "devices/other/telemetry"
		}
		if _, err := rc.bw.Write(publishPacket(topic, uint16(i+1), []byte(strconv.Itoa(i)))); err != nil {
			t.Fatal(err)
		}
	}
	if err := rc.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = rc.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for i := range n {
		typ, body, err := rc.readPacket()
		if err != nil {
			t.Fatalf("PUBACK %d: %v", i+1, err)
		}
		if typ != 4 || len(body) < 2 {
			t.Fatalf("packet %d: type %d, want PUBACK", i, typ)
		}
		if id := binary.BigEndian.Uint16(body); id != uint16(i+1) {
			t.Fatalf("PUBACK %d is for packet %d: out of order", i+1, id)
		}
		var code byte
		if len(body) > 2 {
			code = body[2]
		}
		if want := map[bool]byte{true: 0x87, false: 0}[denied(i)]; code != want {
			t.Fatalf("PUBACK %d: reason %#x, want %#x", i+1, code, want)
		}
	}
	ds := drain(t, r.m, "telemetry")
	var want []string
	for i := range n {
		if !denied(i) {
			want = append(want, strconv.Itoa(i))
		}
	}
	if len(ds) != len(want) {
		t.Fatalf("queue holds %d, want the %d allowed", len(ds), len(want))
	}
	for i, d := range ds {
		if string(d.Payload) != want[i] {
			t.Fatalf("queue message %d is %q, want %s", i, d.Payload, want[i])
		}
	}
}

// TestPipelineACLCheckedWhenRead: the ACL changes while pipelined publishes wait for their queue.
// They were checked when read, so they are stored and acked with success; a publish read after
// the Reload is denied, and its 0x87 waits behind the PUBACKs of the publishes before it
// [MQTT-4.6.0-2], although the denial was decided first.
func TestPipelineACLCheckedWhenRead(t *testing.T) {
	blk := newBlockingEnqueuer(t, "telemetry")
	r := newRig(t, rigOptions{pipeline: true,
		rules: []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}},
		acl:   []mqtt.ACLRule{{Publish: []string{"devices/%c/#"}}},
		wrap:  func(e bridge.Enqueuer) bridge.Enqueuer { blk.Enqueuer = e; return blk },
		bopts: bridge.Options{EnqueueTimeout: time.Minute},
	})
	rc := dialRaw(t, r.addr, "gw4", "unused", nil)
	defer rc.close()
	const n = 5
	rc.burst(t, "devices/gw4/telemetry", n)
	ping := func() {
		t.Helper()
		rc.writePacket(0xc0, nil) // PINGREQ: its PINGRESP means the reader has handled what came before
		if err := rc.bw.Flush(); err != nil {
			t.Fatal(err)
		}
		_ = rc.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		if typ, _, err := rc.readPacket(); err != nil || typ != 13 {
			t.Fatalf("packet type %d (%v), want PINGRESP before any PUBACK", typ, err)
		}
	}
	ping()
	<-blk.entered // the first write waits for its queue; the others are behind it
	if err := r.srv.Reload(nil, []mqtt.ACLRule{{Publish: []string{"elsewhere/#"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.bw.Write(publishPacket("devices/gw4/telemetry", n+1, []byte("late"))); err != nil {
		t.Fatal(err)
	}
	ping() // the denial was decided; its PUBACK must not have overtaken the others
	close(blk.release)
	_ = rc.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for i := range n + 1 {
		typ, body, err := rc.readPacket()
		if err != nil {
			t.Fatalf("PUBACK %d: %v", i+1, err)
		}
		want := byte(0)
		if i == n {
			want = 0x87
		}
		var code byte
		if len(body) > 2 {
			code = body[2]
		}
		if typ != 4 || len(body) < 2 || binary.BigEndian.Uint16(body) != uint16(i+1) || code != want {
			t.Fatalf("packet %d: type %d body %v, want PUBACK %d with %#x", i, typ, body, i+1, want)
		}
	}
	if got := ready(t, r.m, "telemetry"); got != n {
		t.Fatalf("queue holds %d, want %d", got, n)
	}
}

// TestPipelineBackpressure: under the backpressure policy a subscriber that acks nothing holds a
// pipelined gateway without a deadlock and without dropping; once the subscriber is gone every publish is acked in order and
// stored.
func TestPipelineBackpressure(t *testing.T) {
	r := newRig(t, rigOptions{pipeline: true,
		rules: []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}},
		mqtt: mqtt.Options{Limits: mqtt.Limits{MaxInflight: 8},
			Slow: mqtt.SlowSubscribers{Policy: mqtt.PolicyBackpressure, DisconnectAfter: time.Minute}},
	})
	lazy := dialRaw(t, r.addr, "lazy", "unused", nil) // subscribes, never reads, never acks
	lazy.writePacket(0x82, []byte{0, 1, 0, 0, 9, 'd', 'e', 'v', 'i', 'c', 'e', 's', '/', '#', 1})
	if err := lazy.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = lazy.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if typ, _, err := lazy.readPacket(); err != nil || typ != 9 {
		t.Fatalf("SUBACK: type %d %v", typ, err)
	}
	rc := dialRaw(t, r.addr, "gw5", "unused", nil)
	defer rc.close()
	const n = 60
	rc.burst(t, "devices/gw5/telemetry", n)
	if err := rc.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = rc.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	read := func(i int) {
		t.Helper()
		typ, body, err := rc.readPacket()
		if err != nil || typ != 4 || binary.BigEndian.Uint16(body) != uint16(i+1) || (len(body) > 2 && body[2] != 0) {
			t.Fatalf("PUBACK %d: type %d body %v err %v", i+1, typ, body, err)
		}
	}
	const window = 6 // 3/4 of MaxInflight: then the gateway is held
	for i := range window {
		read(i)
	}
	// Held: no further PUBACK while the subscriber acks nothing (a gateway that is not held would
	// get them at once; one that is held never does, however loaded the machine).
	_ = rc.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if typ, body, err := rc.readPacket(); err == nil {
		t.Fatalf("packet type %d %v while the subscriber's window is full: the gateway is not held", typ, body)
	}
	if v := counter(t, r.reg, "sluice_mqtt_inflight_full_dropped_total"); v != 0 {
		t.Fatalf("inflight_full_dropped_total = %v under backpressure", v)
	}
	lazy.close() // releases the gateway
	_ = rc.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for i := window; i < n; i++ {
		read(i)
	}
	if got := ready(t, r.m, "telemetry"); got != n {
		t.Fatalf("queue holds %d, want %d", got, n)
	}
}

// TestPipelineEnqueueTimeout: pipelined publishes whose batch is not durable within EnqueueTimeout
// get PUBACK 0x80, in order, as a blocking publish would (failures{reason=timeout} counts them),
// and the connection goes on: once the queue takes the batch, the records are stored all the same
// (at least once).
func TestPipelineEnqueueTimeout(t *testing.T) {
	blk := newBlockingEnqueuer(t, "telemetry")
	r := newRig(t, rigOptions{pipeline: true,
		rules: []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}},
		wrap:  func(e bridge.Enqueuer) bridge.Enqueuer { blk.Enqueuer = e; return blk },
		bopts: bridge.Options{EnqueueTimeout: 200 * time.Millisecond},
	})
	rc := dialRaw(t, r.addr, "gw6", "unused", nil)
	defer rc.close()
	const n = 5
	rc.burst(t, "devices/gw6/telemetry", n)
	if err := rc.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = rc.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for i := range n {
		typ, body, err := rc.readPacket()
		if err != nil || typ != 4 || len(body) < 3 || binary.BigEndian.Uint16(body) != uint16(i+1) || body[2] != 0x80 {
			t.Fatalf("packet %d: type %d body %v err %v, want PUBACK %d with 0x80", i, typ, body, err, i+1)
		}
	}
	if v := counter(t, r.reg, "sluice_bridge_failures_total", "queue", "telemetry", "reason", "timeout"); v != n {
		t.Errorf("failures{reason=timeout} = %v, want %d", v, n)
	}
	close(blk.release)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := 0
	for got < n {
		ds, err := r.m.Receive(ctx, "telemetry", n, time.Minute) // long poll: returns once some are stored
		if err != nil {
			t.Fatalf("after the release, %d of %d stored: %v", got, n, err)
		}
		got += len(ds)
	}
}

// TestPipelineStuckConnectionHoldsOnlyItself: a client whose batch is being written stops reading
// meanwhile (its socket fills with deliveries, the broker's writes to it block); when its batch is
// durable its PUBACKs cannot be written, and another gateway's pipelined publishes are acked all
// the same.
func TestPipelineStuckConnectionHoldsOnlyItself(t *testing.T) {
	blk := newBlockingEnqueuer(t, "held")
	r := newRig(t, rigOptions{pipeline: true,
		rules: []bridge.Rule{{Filter: "stuck/#", Queue: "held"}, {Filter: "devices/+/telemetry", Queue: "telemetry"}},
		wrap:  func(e bridge.Enqueuer) bridge.Enqueuer { blk.Enqueuer = e; return blk },
		mqtt:  mqtt.Options{Slow: mqtt.SlowSubscribers{Policy: mqtt.PolicyDrop, DisconnectAfter: time.Minute}},
	})
	stuck := dialRaw(t, r.addr, "stuck", "unused", nil)
	defer stuck.close()
	if tc, ok := stuck.conn.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096)
	}
	stuck.writePacket(0x82, []byte{0, 1, 0, 0, 7, 'f', 'l', 'o', 'o', 'd', '/', '#', 0})
	if err := stuck.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = stuck.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if typ, _, err := stuck.readPacket(); err != nil || typ != 9 {
		t.Fatalf("SUBACK: type %d %v", typ, err)
	}
	stuck.burst(t, "stuck/data", 5)
	if err := stuck.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	<-blk.entered // its batch is on its way to the queue, held there
	// 16 MiB of QoS 0 deliveries it never reads: the broker's writes to it block.
	flood := dialRaw(t, r.addr, "flood", "unused", nil)
	defer flood.close()
	body := append([]byte{0, 7, 'f', 'l', 'o', 'o', 'd', '/', 'x', 0}, make([]byte, 64<<10)...)
	for range 256 {
		flood.writePacket(0x30, body)
	}
	flood.writePacket(0xc0, nil) // PINGREQ: its PINGRESP means the broker has routed the flood
	if err := flood.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = flood.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if typ, _, err := flood.readPacket(); err != nil || typ != 13 {
		t.Fatalf("PINGRESP after the flood: type %d %v", typ, err)
	}
	close(blk.release) // its batch becomes durable; its PUBACKs wait for a socket that is full
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for got := 0; got < 5; { // long polls: its records are in the queue, its acks on their way
		ds, err := r.m.Receive(ctx, "held", 5, time.Minute)
		if err != nil {
			t.Fatalf("held batch: %d of 5 stored: %v", got, err)
		}
		got += len(ds)
	}
	gw := dialRaw(t, r.addr, "gw7", "unused", nil)
	defer gw.close()
	gw.burst(t, "devices/gw7/telemetry", 5)
	if err := gw.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = gw.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i := range 5 {
		typ, body, err := gw.readPacket()
		if err != nil || typ != 4 || binary.BigEndian.Uint16(body) != uint16(i+1) || (len(body) > 2 && body[2] != 0) {
			t.Fatalf("gateway PUBACK %d while another connection is stuck: type %d body %v err %v", i+1, typ, body, err)
		}
	}
}
