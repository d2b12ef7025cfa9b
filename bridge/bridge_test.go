package bridge_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"golang.org/x/crypto/bcrypt"

	"github.com/sluicemq/sluice/bridge"
	"github.com/sluicemq/sluice/mqtt"
	"github.com/sluicemq/sluice/queue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rig is a broker with the bridge over real queues, on 127.0.0.1:0.
type rig struct {
	m    *queue.Manager
	b    *bridge.Bridge
	srv  *mqtt.Server
	addr string
	reg  *prometheus.Registry
}

type rigOptions struct {
	rules  []bridge.Rule
	queues map[string]queue.Config
	wrap   func(bridge.Enqueuer) bridge.Enqueuer // fault injection around the real manager
	bopts  bridge.Options
	// pipeline runs the bridge with pipelined acks (PUBACKs gated through mqtt.Server.GateAck,
	// as sluice serve does); otherwise the bridge blocks in OnPublish.
	pipeline bool
	acl      []mqtt.ACLRule // none: everything allowed
	mqtt     mqtt.Options   // Limits and Slow of the broker (its metrics go to the rig's registry)
}

// forModes runs a test with the blocking bridge and with the pipelined one.
func forModes(t *testing.T, test func(t *testing.T, pipeline bool)) {
	t.Run("pipeline=off", func(t *testing.T) { test(t, false) })
	t.Run("pipeline=on", func(t *testing.T) { test(t, true) })
}

func newRig(t testing.TB, o rigOptions) *rig {
	t.Helper()
	if o.queues == nil {
		o.queues = map[string]queue.Config{}
	}
	for _, r := range o.rules {
		if _, ok := o.queues[r.Queue]; !ok {
			o.queues[r.Queue] = queue.Config{}
		}
	}
	reg := prometheus.NewRegistry()
	m, err := queue.Open(t.TempDir(), queue.Options{Queues: o.queues, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	var enq bridge.Enqueuer = m
	if o.wrap != nil {
		enq = o.wrap(m)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := mqtt.New(mqtt.Options{
		Listeners:  []mqtt.Listener{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0", AllowAnonymous: true}},
		Users:      []mqtt.User{{Username: "alice", PasswordHash: string(hash)}},
		ACL:        o.acl,
		Limits:     o.mqtt.Limits,
		Slow:       o.mqtt.Slow,
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	bo := o.bopts
	bo.Rules, bo.Registerer = o.rules, reg
	if o.pipeline {
		bo.Pipeline = srv
	}
	b, err := bridge.New(enq, bo)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.AddHook(b.Hook(), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	addr, shutdown := srv.Addr("tcp").String(), srv.Shutdown
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := shutdown(ctx); err != nil {
			t.Errorf("shutdown broker: %v", err)
		}
		if err := b.Close(ctx); err != nil && err != bridge.ErrClosed {
			t.Errorf("close bridge: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Errorf("close queues: %v", err)
		}
	})
	return &rig{m: m, b: b, srv: srv, addr: addr, reg: reg}
}

// v5 connects an anonymous MQTT 5 client (paho.golang). Received publishes go to onMsg (may be nil).
func (r *rig) v5(t testing.TB, id string, onMsg func(*paho.Publish)) *paho.Client {
	t.Helper()
	return r.v5as(t, id, "", onMsg)
}

// v5as connects an MQTT 5 client as user (password "pw"), or anonymously when user is "".
func (r *rig) v5as(t testing.TB, id, user string, onMsg func(*paho.Publish)) *paho.Client {
	t.Helper()
	conn, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := paho.ClientConfig{ClientID: id, Conn: conn}
	if onMsg != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(p paho.PublishReceived) (bool, error) {
			onMsg(p.Packet)
			return true, nil
		}}
	}
	c := paho.NewClient(cfg)
	rm := uint16(100)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cp := &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30, Properties: &paho.ConnectProperties{ReceiveMaximum: &rm}}
	if user != "" {
		cp.Username, cp.UsernameFlag, cp.Password, cp.PasswordFlag = user, true, []byte("pw"), true
	}
	ca, err := c.Connect(ctx, cp)
	if err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	if ca.ReasonCode != 0 {
		t.Fatalf("connect %s: reason %#x", id, ca.ReasonCode)
	}
	t.Cleanup(func() {
		_ = c.Disconnect(&paho.Disconnect{})
		select {
		case <-c.Done():
		case <-time.After(10 * time.Second):
			t.Errorf("client %s did not stop", id)
		}
	})
	return c
}

// v3 connects an MQTT 3.1.1 client (paho.mqtt.golang).
func (r *rig) v3(t testing.TB, id string) paho3.Client {
	t.Helper()
	o := paho3.NewClientOptions().AddBroker("tcp://" + r.addr).SetClientID(id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(true).SetKeepAlive(30 * time.Second).
		SetWriteTimeout(10 * time.Second)
	c := paho3.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func publish(t testing.TB, c *paho.Client, p *paho.Publish) *paho.PublishResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Publish(ctx, p)
	if resp == nil && err != nil {
		t.Fatalf("publish to %s: %v", p.Topic, err)
	}
	return resp
}

// drain receives every ready message of q.
func drain(t testing.TB, m *queue.Manager, q string) []queue.Delivery {
	t.Helper()
	var all []queue.Delivery
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		ds, err := m.Receive(ctx, q, 1000, time.Minute)
		cancel()
		if err != nil {
			t.Fatalf("receive %s: %v", q, err)
		}
		if len(ds) == 0 {
			return all
		}
		all = append(all, ds...)
	}
}

func ready(t testing.TB, m *queue.Manager, q string) int64 {
	t.Helper()
	st, err := m.Stats(q)
	if err != nil {
		t.Fatal(err)
	}
	return st.Ready
}

// eventually polls cond until it holds or 10s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestQoS1DurableBeforePuback(t *testing.T) { forModes(t, testQoS1DurableBeforePuback) }

func testQoS1DurableBeforePuback(t *testing.T, pipeline bool) {
	r := newRig(t, rigOptions{pipeline: pipeline, rules: []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}}})
	got := make(chan *paho.Publish, 100)
	sub := r.v5(t, "sub", func(p *paho.Publish) { got <- p })
	if _, err := sub.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	dev := r.v5as(t, "d1", "alice", nil)
	pf, exp := byte(1), uint32(3600)
	for i := range 20 {
		resp := publish(t, dev, &paho.Publish{QoS: 1, Topic: "devices/d1/telemetry", Retain: i == 0, Payload: fmt.Appendf(nil, "m%d", i),
			Properties: &paho.PublishProperties{ContentType: "text/plain", PayloadFormat: &pf, MessageExpiry: &exp,
				CorrelationData: []byte{1, 2}, ResponseTopic: "devices/d1/reply", User: paho.UserProperties{{Key: "seq", Value: fmt.Sprint(i)}}}})
		if resp.ReasonCode != 0 {
			t.Fatalf("puback %d: reason %#x", i, resp.ReasonCode)
		}
		// The PUBACK came after the record was stored: it is already in the queue.
		if n := ready(t, r.m, "telemetry"); n != int64(i+1) {
			t.Fatalf("after PUBACK %d the queue holds %d messages", i, n)
		}
	}
	// An unbridged topic is not stored.
	if resp := publish(t, dev, &paho.Publish{QoS: 1, Topic: "devices/d1/status", Payload: []byte("up")}); resp.ReasonCode != 0 {
		t.Fatalf("unbridged puback: %#x", resp.ReasonCode)
	}
	ds := drain(t, r.m, "telemetry")
	if len(ds) != 20 {
		t.Fatalf("queue holds %d messages, want 20", len(ds))
	}
	d := ds[0]
	p := d.Properties
	if d.Topic != "devices/d1/telemetry" || d.ClientID != "d1" || d.Username != "alice" || d.QoS != 1 || !d.Retain ||
		string(d.Payload) != "m0" || d.ReceivedAt.IsZero() || d.ID == "" ||
		p.ContentType != "text/plain" || p.PayloadFormat == nil || *p.PayloadFormat != 1 || p.MessageExpiry == nil ||
		*p.MessageExpiry != 3600 || string(p.CorrelationData) != "\x01\x02" || p.ResponseTopic != "devices/d1/reply" ||
		len(p.UserProperties) != 1 || p.UserProperties[0] != (queue.UserProperty{Key: "seq", Value: "0"}) {
		t.Errorf("record does not keep the publish: %+v", d)
	}
	if ds[1].Retain || ds[1].ID <= ds[0].ID {
		t.Errorf("second record: retain %v, id %q after %q (ids must sort)", ds[1].Retain, ds[1].ID, ds[0].ID)
	}
	// Bridged messages still reach MQTT subscribers (20 bridged + 1 status).
	for i := range 21 {
		select {
		case <-got:
		case <-time.After(10 * time.Second):
			t.Fatalf("subscriber got %d of 21 messages", i)
		}
	}
	if v := counter(t, r.reg, "sluice_bridge_enqueued_total", "queue", "telemetry", "qos", "1"); v != 20 {
		t.Errorf("sluice_bridge_enqueued_total{qos=1} = %v, want 20", v)
	}
}

// counter returns the value of the counter series name{labels...} (0 if absent).
func counter(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	v, _ := series(t, reg, name, labels...)
	return v
}

// series returns the value of the first counter or gauge series of reg named name whose labels
// include the pairs in labels, and whether there is one.
func series(t testing.TB, reg *prometheus.Registry, name string, labels ...string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue(), true
			}
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}

func TestSeveralRulesOneCopyPerQueue(t *testing.T) { forModes(t, testSeveralRulesOneCopyPerQueue) }

func testSeveralRulesOneCopyPerQueue(t *testing.T, pipeline bool) {
	r := newRig(t, rigOptions{pipeline: pipeline, rules: []bridge.Rule{
		{Filter: "devices/+/telemetry", Queue: "telemetry"},
		{Filter: "devices/#", Queue: "all"},
		{Filter: "devices/+/+", Queue: "telemetry"},
		{Filter: "devices/+/alarm", Queue: "alarms", MinQoS: 1},
	}})
	dev := r.v5(t, "d1", nil)
	publish(t, dev, &paho.Publish{QoS: 1, Topic: "devices/d1/telemetry", Payload: []byte("t")})
	publish(t, dev, &paho.Publish{QoS: 1, Topic: "devices/d1/alarm", Payload: []byte("a1")})
	publish(t, dev, &paho.Publish{QoS: 0, Topic: "devices/d1/alarm", Payload: []byte("a0")})
	// The QoS 0 alarm is written in the background: wait for it in both queues, then check no more came.
	eventually(t, "the QoS 0 alarm in all and telemetry", func() bool {
		return ready(t, r.m, "all") == 3 && ready(t, r.m, "telemetry") == 3
	})
	publish(t, dev, &paho.Publish{QoS: 1, Topic: "devices/d1/telemetry", Payload: []byte("t2")})
	if n := ready(t, r.m, "telemetry"); n != 4 {
		t.Errorf("telemetry holds %d, want 4 (t, a1, a0, t2 — each once)", n)
	}
	if n := ready(t, r.m, "all"); n != 4 {
		t.Errorf("all holds %d, want 4", n)
	}
	if n := ready(t, r.m, "alarms"); n != 1 {
		t.Errorf("alarms holds %d, want 1 (min_qos 1 keeps the QoS 0 alarm out)", n)
	}
}

func TestQoS0IsBridgedInBackground(t *testing.T) { forModes(t, testQoS0IsBridgedInBackground) }

func testQoS0IsBridgedInBackground(t *testing.T, pipeline bool) {
	r := newRig(t, rigOptions{pipeline: pipeline, rules: []bridge.Rule{{Filter: "t/#", Queue: "q"}}})
	dev := r.v3(t, "d3")
	for i := range 500 {
		if tok := dev.Publish("t/x", 0, false, fmt.Sprint(i)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	eventually(t, "500 QoS 0 messages in the queue", func() bool { return ready(t, r.m, "q") == 500 })
}

// blockingEnqueuer holds Add calls for one queue until released: a slow disk for that queue only.
type blockingEnqueuer struct {
	bridge.Enqueuer
	queue   string
	entered chan struct{}
	release chan struct{}

	held chan func() // AddAsync calls, forwarded in order once released
}

func (b *blockingEnqueuer) Add(ctx context.Context, q string, msgs []queue.Message) error {
	if q == b.queue {
		select {
		case b.entered <- struct{}{}:
		default:
		}
		select {
		case <-b.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return b.Enqueuer.Add(ctx, q, msgs)
}

// AddAsync holds pipelined writes to the queue the same way, as a slow disk does: the caller goes
// on, and the writes reach the queue, in order, once released.
func (b *blockingEnqueuer) AddAsync(q string, msgs []queue.Message, done func(error)) error {
	if q != b.queue {
		return b.Enqueuer.AddAsync(q, msgs, done)
	}
	select {
	case b.entered <- struct{}{}:
	default:
	}
	b.held <- func() {
		if err := b.Enqueuer.AddAsync(q, msgs, done); err != nil {
			done(err)
		}
	}
	return nil
}

// newBlockingEnqueuer holds the writes to queue q until release is closed.
func newBlockingEnqueuer(t *testing.T, q string) *blockingEnqueuer {
	b := &blockingEnqueuer{queue: q, entered: make(chan struct{}, 1), release: make(chan struct{}),
		held: make(chan func(), 1024)}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) }) // after the rig's cleanup (registered later, run first)
	go func() {
		select {
		case <-b.release:
		case <-stop:
			return
		}
		for {
			select {
			case f := <-b.held:
				f()
			case <-stop:
				return
			}
		}
	}()
	return b
}

func TestSlowQueueDoesNotStallOtherTopics(t *testing.T) {
	forModes(t, testSlowQueueDoesNotStallOtherTopics)
}

func testSlowQueueDoesNotStallOtherTopics(t *testing.T, pipeline bool) {
	blk := newBlockingEnqueuer(t, "slow")
	r := newRig(t, rigOptions{pipeline: pipeline,
		rules: []bridge.Rule{{Filter: "slow/#", Queue: "slow"}, {Filter: "fast/#", Queue: "fast"}},
		wrap:  func(e bridge.Enqueuer) bridge.Enqueuer { blk.Enqueuer = e; return blk },
		bopts: bridge.Options{EnqueueTimeout: time.Minute},
	})
	slowDev, fastDev := r.v5(t, "slowdev", nil), r.v5(t, "fastdev", nil)
	slowDone := make(chan *paho.PublishResponse, 1)
	go func() {
		resp, _ := slowDev.Publish(context.Background(), &paho.Publish{QoS: 1, Topic: "slow/1", Payload: []byte("s")})
		slowDone <- resp
	}()
	<-blk.entered // the slow publish is stuck in OnPublish
	for i := range 50 {
		if resp := publish(t, fastDev, &paho.Publish{QoS: 1, Topic: "fast/1", Payload: []byte("f")}); resp.ReasonCode != 0 {
			t.Fatalf("fast publish %d: %#x", i, resp.ReasonCode)
		}
		publish(t, fastDev, &paho.Publish{QoS: 1, Topic: "plain/1", Payload: []byte("p")})
	}
	if n := ready(t, r.m, "fast"); n != 50 {
		t.Fatalf("fast queue holds %d, want 50", n)
	}
	select {
	case <-slowDone:
		t.Fatal("the slow publish was acked before its queue stored it")
	default:
	}
	close(blk.release)
	select {
	case resp := <-slowDone:
		if resp == nil || resp.ReasonCode != 0 {
			t.Fatalf("slow publish answered %+v", resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("slow publish not acked after release")
	}
	if n := ready(t, r.m, "slow"); n != 1 {
		t.Errorf("slow queue holds %d, want 1", n)
	}
}

func TestEnqueueTimeoutIsUnspecifiedError(t *testing.T) {
	forModes(t, testEnqueueTimeoutIsUnspecifiedError)
}

func testEnqueueTimeoutIsUnspecifiedError(t *testing.T, pipeline bool) {
	blk := newBlockingEnqueuer(t, "stuck")
	r := newRig(t, rigOptions{pipeline: pipeline,
		rules: []bridge.Rule{{Filter: "stuck", Queue: "stuck"}},
		wrap:  func(e bridge.Enqueuer) bridge.Enqueuer { blk.Enqueuer = e; return blk },
		bopts: bridge.Options{EnqueueTimeout: 100 * time.Millisecond},
	})
	dev := r.v5(t, "d", nil)
	resp := publish(t, dev, &paho.Publish{QoS: 1, Topic: "stuck", Payload: []byte("x")})
	if resp.ReasonCode != 0x80 {
		t.Fatalf("reason %#x, want 0x80", resp.ReasonCode)
	}
	if v := counter(t, r.reg, "sluice_bridge_failures_total", "queue", "stuck", "reason", "timeout"); v != 1 {
		t.Errorf("failures{reason=timeout} = %v, want 1", v)
	}
}

func TestFullQueueRejects(t *testing.T) { forModes(t, testFullQueueRejects) }

func testFullQueueRejects(t *testing.T, pipeline bool) {
	r := newRig(t, rigOptions{pipeline: pipeline,
		rules:  []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}},
		queues: map[string]queue.Config{"telemetry": {MaxMessages: 5, Overflow: "reject"}},
	})
	other := make(chan *paho.Publish, 10)
	sub := r.v5(t, "sub", func(p *paho.Publish) { other <- p })
	if _, err := sub.Subscribe(context.Background(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "other/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	v5 := r.v5(t, "v5dev", nil)
	for i := range 5 {
		if resp := publish(t, v5, &paho.Publish{QoS: 1, Topic: "devices/v5/telemetry", Payload: fmt.Appendf(nil, "kept%d", i)}); resp.ReasonCode != 0 {
			t.Fatalf("publish %d: %#x", i, resp.ReasonCode)
		}
	}
	// MQTT 5, QoS 1: PUBACK 0x97.
	if resp := publish(t, v5, &paho.Publish{QoS: 1, Topic: "devices/v5/telemetry", Payload: []byte("over")}); resp.ReasonCode != 0x97 {
		t.Fatalf("QoS 1 into a full queue: reason %#x, want 0x97", resp.ReasonCode)
	}
	// MQTT 5, QoS 2: PUBREC 0x97 (not a PUBACK).
	if resp := publish(t, v5, &paho.Publish{QoS: 2, Topic: "devices/v5/telemetry", Payload: []byte("over2")}); resp.ReasonCode != 0x97 {
		t.Fatalf("QoS 2 into a full queue: reason %#x, want 0x97", resp.ReasonCode)
	}
	// MQTT 3.1.1: no ack. The next publish on the same connection (unbridged) is acked, and mochi
	// answers in order, so the first one got nothing.
	v3 := r.v3(t, "v3dev")
	rejected := v3.Publish("devices/v3/telemetry", 1, false, "over3")
	if tok := v3.Publish("other/v3", 1, false, "fine"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("unbridged publish after a rejected one: %v", tok.Error())
	}
	if rejected.WaitTimeout(0) {
		t.Fatal("MQTT 3.1.1 publish into a full queue was acked")
	}
	// Other topics flow; the bridged ones did not reach subscribers... of other topics only, which got theirs.
	select {
	case p := <-other:
		if string(p.Payload) != "fine" {
			t.Errorf("subscriber got %q", p.Payload)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("publishing to another topic stopped")
	}
	// Nothing stored was dropped.
	ds := drain(t, r.m, "telemetry")
	if len(ds) != 5 {
		t.Fatalf("queue holds %d, want the 5 stored before it was full", len(ds))
	}
	for i, d := range ds {
		if want := fmt.Sprintf("kept%d", i); string(d.Payload) != want {
			t.Errorf("message %d is %q, want %q", i, d.Payload, want)
		}
	}
	if v := counter(t, r.reg, "sluice_bridge_failures_total", "queue", "telemetry", "reason", "full"); v != 3 {
		t.Errorf("failures{reason=full} = %v, want 3", v)
	}
}

// TestQoS2ResendIsNotEnqueuedTwice speaks MQTT 5 by hand to resend a QoS 2 PUBLISH with DUP
// before PUBREL, as a device does after a lost PUBREC.
func TestQoS2ResendIsNotEnqueuedTwice(t *testing.T) { forModes(t, testQoS2ResendIsNotEnqueuedTwice) }

func testQoS2ResendIsNotEnqueuedTwice(t *testing.T, pipeline bool) {
	r := newRig(t, rigOptions{pipeline: pipeline, rules: []bridge.Rule{{Filter: "q2/#", Queue: "q2"}}})
	conn, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	cp := packets.NewControlPacket(packets.CONNECT)
	c := cp.Content.(*packets.Connect)
	c.ProtocolName, c.ProtocolVersion, c.ClientID, c.CleanStart, c.KeepAlive = "MQTT", 5, "raw", true, 30
	if _, err := cp.WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	expect := func(typ byte) *packets.ControlPacket {
		t.Helper()
		for {
			p, err := packets.ReadPacket(conn)
			if err != nil {
				t.Fatalf("waiting for packet type %d: %v", typ, err)
			}
			if p.Type == typ {
				return p
			}
		}
	}
	expect(packets.CONNACK)
	send := func(dup bool) {
		t.Helper()
		pp := packets.NewControlPacket(packets.PUBLISH)
		pub := pp.Content.(*packets.Publish)
		pub.Topic, pub.QoS, pub.PacketID, pub.Duplicate, pub.Payload = "q2/a", 2, 7, dup, []byte("once")
		if _, err := pp.WriteTo(conn); err != nil {
			t.Fatal(err)
		}
	}
	send(false)
	expect(packets.PUBREC)
	send(true) // resend before PUBREL
	if rec := expect(packets.PUBREC).Content.(*packets.Pubrec); rec.ReasonCode != 0 {
		// [MQTT-4.3.3-10]; stock mochi v2.7.9 answers 0x91 (packet identifier in use).
		t.Fatalf("PUBREC to the resend: reason %#x, want 0x00", rec.ReasonCode)
	}
	rel := packets.NewControlPacket(packets.PUBREL)
	rel.Content.(*packets.Pubrel).PacketID = 7
	if _, err := rel.WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	expect(packets.PUBCOMP)
	if n := ready(t, r.m, "q2"); n != 1 {
		t.Fatalf("queue holds %d copies, want 1", n)
	}
	// The packet id is free again: a new message with it is a new message.
	send(false)
	expect(packets.PUBREC)
	if n := ready(t, r.m, "q2"); n != 2 {
		t.Fatalf("queue holds %d, want 2 after a new message reused the id", n)
	}
}

func TestClosedBridgeRejects(t *testing.T) { forModes(t, testClosedBridgeRejects) }

func testClosedBridgeRejects(t *testing.T, pipeline bool) {
	r := newRig(t, rigOptions{pipeline: pipeline, rules: []bridge.Rule{{Filter: "x", Queue: "x"}}})
	dev := r.v5(t, "d", nil)
	if err := r.b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.b.Close(context.Background()); err != bridge.ErrClosed {
		t.Fatalf("second Close: %v, want ErrClosed", err)
	}
	if resp := publish(t, dev, &paho.Publish{QoS: 1, Topic: "x", Payload: []byte("late")}); resp.ReasonCode != 0x80 {
		t.Fatalf("publish after Close: reason %#x, want 0x80", resp.ReasonCode)
	}
}

// TestManyDevicesEveryPubackedMessageArrives is the test 1 at the bridge level:
// 50 devices (MQTT 5 and 3.1.1) publish QoS 1 with sequence numbers while a consumer drains the queue.
func TestManyDevicesEveryPubackedMessageArrives(t *testing.T) {
	forModes(t, testManyDevicesEveryPubackedMessageArrives)
}

func testManyDevicesEveryPubackedMessageArrives(t *testing.T, pipeline bool) {
	r := newRig(t, rigOptions{pipeline: pipeline, rules: []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}}})
	const devices, perDevice = 50, 40
	acked := make([][]bool, devices)
	var wg sync.WaitGroup
	for d := range devices {
		acked[d] = make([]bool, perDevice)
		id := fmt.Sprintf("dev%02d", d)
		topic := "devices/" + id + "/telemetry"
		if d%5 == 0 {
			c := r.v3(t, id)
			wg.Go(func() {
				for s := range perDevice {
					tok := c.Publish(topic, 1, false, fmt.Sprintf("%s/%d", id, s))
					acked[d][s] = tok.WaitTimeout(10*time.Second) && tok.Error() == nil
				}
			})
			continue
		}
		c := r.v5(t, id, nil)
		wg.Go(func() {
			for s := range perDevice {
				resp, err := c.Publish(context.Background(), &paho.Publish{QoS: 1, Topic: topic, Payload: fmt.Appendf(nil, "%s/%d", id, s)})
				acked[d][s] = err == nil && resp.ReasonCode == 0
			}
		})
	}
	seen := map[string]int{}
	stop := make(chan struct{})
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			ds, err := r.m.Receive(ctx, "telemetry", 500, time.Minute)
			cancel()
			if err != nil {
				t.Error(err)
				return
			}
			rs := make([]string, len(ds))
			for i, d := range ds {
				seen[string(d.Payload)]++
				rs[i] = d.Receipt
			}
			if len(rs) > 0 {
				if _, err := r.m.Ack("telemetry", rs); err != nil {
					t.Error(err)
					return
				}
				continue
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-consumed
	missing := 0
	for d := range devices {
		for s := range perDevice {
			if !acked[d][s] {
				t.Errorf("dev%02d message %d was not acked", d, s)
				continue
			}
			if seen[fmt.Sprintf("dev%02d/%d", d, s)] == 0 {
				missing++
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d PUBACKed messages never reached the consumer", missing)
	}
	dups := 0
	for k, n := range seen {
		if n > 1 || !strings.HasPrefix(k, "dev") {
			dups++
		}
	}
	if dups > 0 {
		t.Errorf("%d messages delivered twice without any failure", dups)
	}
}
