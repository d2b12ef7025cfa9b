package bridge_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/bridge"
	"github.com/sluicemq/sluice/mqtt"
	"github.com/sluicemq/sluice/queue"
)

// Helpers of the uplink tests are prefixed ul: they share package bridge_test with bridge_test.go.

// ulCloud is the upstream: a Sluice broker whose bridge writes every publish into its queue "cloud",
// so what arrived, in which order, can be read back after the fact.
type ulCloud struct {
	t    testing.TB
	qm   *queue.Manager
	br   *bridge.Bridge
	opts mqtt.Options
	mu   sync.Mutex
	srv  *mqtt.Server
	addr string // fixed by the first start, reused by restarts
}

func ulStartCloud(t testing.TB, opts mqtt.Options) *ulCloud {
	t.Helper()
	qm, err := queue.Open(t.TempDir(), queue.Options{Queues: map[string]queue.Config{"cloud": {Sync: "none"}}})
	if err != nil {
		t.Fatal(err)
	}
	br, err := bridge.New(qm, bridge.Options{Rules: []bridge.Rule{{Filter: "#", Queue: "cloud"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(opts.Listeners) == 0 {
		opts.Listeners = []mqtt.Listener{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0", AllowAnonymous: true}}
	}
	c := &ulCloud{t: t, qm: qm, br: br, opts: opts}
	c.start()
	t.Cleanup(func() {
		c.stop()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := br.Close(ctx); err != nil {
			t.Errorf("close cloud bridge: %v", err)
		}
		if err := qm.Close(); err != nil {
			t.Errorf("close cloud queues: %v", err)
		}
	})
	return c
}

func (c *ulCloud) start() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	opts := c.opts
	if c.addr != "" {
		ls := append([]mqtt.Listener(nil), opts.Listeners...)
		ls[0].Address = c.addr
		opts.Listeners = ls
	}
	srv, err := mqtt.New(opts)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := srv.AddHook(c.br.Hook(), nil); err != nil {
		c.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err = srv.Start()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // the port of the previous run may linger briefly
	}
	if err != nil {
		c.t.Fatal(err)
	}
	c.srv = srv
	c.addr = srv.Addr(opts.Listeners[0].Name).String()
}

func (c *ulCloud) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.srv.Shutdown(ctx); err != nil {
		c.t.Errorf("shutdown cloud: %v", err)
	}
	c.srv = nil
}

func (c *ulCloud) url() string { return "tcp://" + c.addr }

// received is how many publishes the cloud has stored.
func (c *ulCloud) received() int64 {
	st, err := c.qm.Stats("cloud")
	if err != nil {
		c.t.Fatal(err)
	}
	return int64(st.Enqueued)
}

// messages reads (and acks) everything the cloud stored, in arrival order.
func (c *ulCloud) messages() []queue.Delivery {
	c.t.Helper()
	var all []queue.Delivery
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		ds, err := c.qm.Receive(ctx, "cloud", 1000, time.Minute)
		cancel()
		if err != nil {
			c.t.Fatal(err)
		}
		if len(ds) == 0 {
			return all
		}
		all = append(all, ds...)
		rs := make([]string, len(ds))
		for i, d := range ds {
			rs[i] = d.Receipt
		}
		if _, err := c.qm.Ack("cloud", rs); err != nil {
			c.t.Fatal(err)
		}
	}
}

// ulEdgeConfig is the edge queue's settings in the tests: quick retries, durable.
func ulEdgeConfig() queue.Config {
	return queue.Config{MaxAttempts: 100, Backoff: queue.Backoff{Initial: 20 * time.Millisecond, Multiplier: 2, Max: 200 * time.Millisecond}}
}

func ulOpenEdge(t testing.TB, dir string, cfg queue.Config) *queue.Manager {
	t.Helper()
	qm, err := queue.Open(dir, queue.Options{Queues: map[string]queue.Config{"up": cfg}})
	if err != nil {
		t.Fatal(err)
	}
	return qm
}

// ulPayload is what the tests send: the original topic and a per-topic sequence number.
func ulPayload(topic string, seq int) []byte { return []byte(topic + " " + strconv.Itoa(seq)) }

// ulEnqueue writes n messages per topic into the edge queue "up", in batches.
func ulEnqueue(t testing.TB, qm *queue.Manager, topics []string, from, n int) {
	t.Helper()
	batch := make([]queue.Message, 0, 256)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if _, err := qm.Enqueue(context.Background(), "up", batch); err != nil {
			t.Fatal(err)
		}
		batch = batch[:0]
	}
	for s := from; s < from+n; s++ {
		for _, tp := range topics {
			batch = append(batch, queue.Message{Topic: tp, QoS: 1, Payload: ulPayload(tp, s)})
			if len(batch) == cap(batch) {
				flush()
			}
		}
	}
	flush()
}

// ulCheck checks what arrived upstream: every message of want (topic → count, sequence numbers from 0)
// arrived, and the first copy of each came after the first copies of all earlier ones of its topic.
// It returns the number of duplicates.
func ulCheck(t testing.TB, got [][]byte, want map[string]int) (dups int) {
	t.Helper()
	next := map[string]int{}
	seen := map[string]map[int]bool{}
	for _, p := range got {
		topic, num, ok := strings.Cut(string(p), " ")
		seq, err := strconv.Atoi(num)
		if !ok || err != nil {
			t.Fatalf("unexpected payload %q", p)
		}
		if seen[topic] == nil {
			seen[topic] = map[int]bool{}
		}
		if seen[topic][seq] {
			dups++
			continue
		}
		seen[topic][seq] = true
		if seq != next[topic] {
			t.Errorf("topic %s: message %d arrived before message %d", topic, seq, next[topic])
			return dups
		}
		next[topic]++
	}
	for topic, n := range want {
		if next[topic] != n {
			t.Errorf("topic %s: %d of %d messages arrived", topic, next[topic], n)
		}
	}
	return dups
}

func ulPayloads(ds []queue.Delivery) [][]byte {
	out := make([][]byte, len(ds))
	for i, d := range ds {
		out[i] = d.Payload
	}
	return out
}

// ulWait polls cond until it holds or limit passes.
func ulWait(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func ulBacklog(t testing.TB, qm *queue.Manager) int64 {
	t.Helper()
	st, err := qm.Stats("up")
	if err != nil {
		t.Fatal(err)
	}
	return st.Ready + st.Leased + st.Delayed
}

// ulMetric reads one series of reg (a counter or gauge) whose labels include labels; it fails the
// test when there is none.
func ulMetric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	v, ok := series(t, reg, name, labels...)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	return v
}

func ulOptions(name, url string) bridge.UplinkOptions {
	return bridge.UplinkOptions{
		Name:        name,
		URL:         url,
		Queue:       "up",
		Gateway:     "gw1",
		MaxInFlight: 64,
		Lease:       4 * time.Second,
		Backoff:     bridge.ReconnectBackoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
		Timeout:     2 * time.Second,
		Logger:      zerolog.Nop(),
	}
}

func ulStart(t testing.TB, qm *queue.Manager, o bridge.UplinkOptions) *bridge.Uplink {
	t.Helper()
	u, err := bridge.NewUplink(qm, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ulClose(t, u) })
	return u
}

func ulClose(t testing.TB, u *bridge.Uplink) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := u.Close(ctx); err != nil && !errors.Is(err, bridge.ErrUplinkClosed) {
		t.Errorf("close uplink: %v", err)
	}
}

// TestUplinkForwardsInOrder: Sluice → Sluice, several topics, topic rewrite, QoS 1 and 2.
func TestUplinkForwardsInOrder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		qos     byte
		version int
	}{
		{"qos=1/v5", 1, 5},
		{"qos=2/v5", 2, 5},
		{"qos=1/v3.1.1", 1, 4},
		{"qos=2/v3.1.1", 2, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cloud := ulStartCloud(t, mqtt.Options{})
			edge := ulOpenEdge(t, t.TempDir(), ulEdgeConfig())
			defer edge.Close()
			topics := []string{"devices/a/telemetry", "devices/b/telemetry", "devices/c/status"}
			const n = 300
			ulEnqueue(t, edge, topics, 0, n)
			o := ulOptions("cloud", cloud.url())
			o.QoS, o.ProtocolVersion = tc.qos, tc.version
			o.Topic = bridge.TopicRewrite{StripPrefix: "devices/", Template: "sites/{gateway}/{topic}"}
			u := ulStart(t, edge, o)
			ulWait(t, 30*time.Second, "the backlog to drain", func() bool { return ulBacklog(t, edge) == 0 })
			got := cloud.messages()
			want := map[string]int{}
			for _, tp := range topics {
				want[tp] = n
			}
			if dups := ulCheck(t, ulPayloads(got), want); dups != 0 {
				t.Errorf("%d duplicates without a reconnect", dups)
			}
			for _, d := range got {
				orig, _, _ := strings.Cut(string(d.Payload), " ")
				if w := "sites/gw1/" + strings.TrimPrefix(orig, "devices/"); d.Topic != w {
					t.Fatalf("upstream topic %q, want %q", d.Topic, w)
				}
				if d.QoS != tc.qos {
					t.Fatalf("upstream QoS %d, want %d", d.QoS, tc.qos)
				}
			}
			if st := u.Status(); st.Forwarded != uint64(len(topics)*n) || st.State != "connected" || st.Backlog != 0 {
				t.Errorf("status %+v, want %d forwarded, connected, no backlog", st, len(topics)*n)
			}
		})
	}
}

// TestUplinkOutage: under a steady load the upstream goes away for a while and comes back: nothing is
// lost, each topic's order holds, the backlog drains, and the metrics say what happened.
func TestUplinkOutage(t *testing.T) {
	cloud := ulStartCloud(t, mqtt.Options{})
	edge := ulOpenEdge(t, t.TempDir(), ulEdgeConfig())
	defer edge.Close()
	reg := prometheus.NewRegistry()
	o := ulOptions("cloud", cloud.url())
	o.Registerer = reg
	u := ulStart(t, edge, o)

	topics := []string{"d/0", "d/1", "d/2", "d/3"}
	const perTopic = 700 // 2800 messages at 800/s
	produced := make(chan struct{})
	go func() { // the steady load: 8 messages every 10ms
		defer close(produced)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for s := 0; s < perTopic; s += 10 / len(topics) {
			<-tick.C
			var batch []queue.Message
			for k := s; k < min(perTopic, s+10/len(topics)); k++ {
				for _, tp := range topics {
					batch = append(batch, queue.Message{Topic: tp, QoS: 1, Payload: ulPayload(tp, k)})
				}
			}
			if _, err := edge.Enqueue(context.Background(), "up", batch); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	ulWait(t, 20*time.Second, "the first messages upstream", func() bool { return cloud.received() >= 300 })
	cloud.stop()
	ulWait(t, 10*time.Second, "the uplink to notice", func() bool { return u.Status().State == "connecting" })
	if ulMetric(t, reg, "sluice_uplink_state", "uplink", "cloud") != bridge.UplinkConnecting {
		t.Error("state gauge is not 1 (connecting) during the outage")
	}
	before := ulBacklog(t, edge)
	ulWait(t, 20*time.Second, "a backlog to build up", func() bool { return ulBacklog(t, edge) >= before+400 })
	if b := ulMetric(t, reg, "sluice_uplink_backlog_messages", "uplink", "cloud"); b < float64(before+400) {
		t.Errorf("backlog gauge %v during the outage, want ≥ %d", b, before+400)
	}
	cloud.start()
	<-produced
	ulWait(t, 30*time.Second, "the backlog to drain", func() bool { return ulBacklog(t, edge) == 0 })

	want := map[string]int{}
	for _, tp := range topics {
		want[tp] = perTopic
	}
	dups := ulCheck(t, ulPayloads(cloud.messages()), want)
	if dups > o.MaxInFlight {
		t.Errorf("%d duplicates, more than the in-flight window %d", dups, o.MaxInFlight)
	}
	total := float64(perTopic * len(topics))
	if f := ulMetric(t, reg, "sluice_uplink_forwarded_total", "uplink", "cloud"); f != total {
		t.Errorf("forwarded_total %v, want %v", f, total)
	}
	if l := ulMetric(t, reg, "sluice_uplink_failures_total", "uplink", "cloud", "reason", "connection_lost"); l < 1 {
		t.Errorf("failures_total{reason=connection_lost} %v, want ≥ 1", l)
	}
	if b := ulMetric(t, reg, "sluice_uplink_backlog_messages", "uplink", "cloud"); b != 0 {
		t.Errorf("backlog gauge %v after the drain", b)
	}
	if s := ulMetric(t, reg, "sluice_uplink_state", "uplink", "cloud"); s != bridge.UplinkConnected {
		t.Errorf("state gauge %v after the outage, want 2", s)
	}
	st, err := edge.Stats("up")
	if err != nil {
		t.Fatal(err)
	}
	if st.Dead != 0 || st.Nacked != 0 {
		t.Errorf("the outage cost attempts: %d nacked, %d dead", st.Nacked, st.Dead)
	}
	t.Logf("duplicates %d, failures %d", dups, u.Status().Failures)
}

// TestUplinkFullQueueDuringOutage: with the upstream unreachable, the edge queue fills and its
// overflow policy decides; what it kept is forwarded when the upstream comes.
func TestUplinkFullQueueDuringOutage(t *testing.T) {
	for _, tc := range []struct {
		overflow string
		wantFrom int // the first sequence number kept
	}{
		{"reject", 0},
		{"drop_oldest", 100},
	} {
		t.Run("overflow="+tc.overflow, func(t *testing.T) {
			// Reserve a port for the upstream, unreachable until the cloud starts on it.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close()
			cfg := ulEdgeConfig()
			cfg.MaxMessages, cfg.Overflow = 200, tc.overflow
			edge := ulOpenEdge(t, t.TempDir(), cfg)
			defer edge.Close()
			u := ulStart(t, edge, ulOptions("cloud", "tcp://"+addr))
			ulWait(t, 10*time.Second, "a failed connection attempt", func() bool { return u.Status().Failures >= 1 })
			rejected := 0
			for s := range 300 {
				_, err := edge.Enqueue(context.Background(), "up", []queue.Message{{Topic: "t", QoS: 1, Payload: ulPayload("t", s)}})
				switch {
				case errors.Is(err, queue.ErrFull):
					rejected++
				case err != nil:
					t.Fatal(err)
				}
			}
			st, _ := edge.Stats("up")
			if tc.overflow == "reject" && (rejected != 100 || st.Ready != 200) {
				t.Fatalf("reject: %d rejected, %d ready; want 100 and 200", rejected, st.Ready)
			}
			if tc.overflow == "drop_oldest" && (rejected != 0 || st.Dropped != 100 || st.Ready != 200) {
				t.Fatalf("drop_oldest: %d rejected, %d dropped, %d ready; want 0, 100, 200", rejected, st.Dropped, st.Ready)
			}
			cloud := ulStartCloud(t, mqtt.Options{Listeners: []mqtt.Listener{{Name: "tcp", Type: "tcp", Address: addr, AllowAnonymous: true}}})
			ulWait(t, 20*time.Second, "the backlog to drain", func() bool { return ulBacklog(t, edge) == 0 })
			got := cloud.messages()
			if len(got) != 200 {
				t.Fatalf("%d messages upstream, want 200", len(got))
			}
			for i, d := range got {
				if w := string(ulPayload("t", tc.wantFrom+i)); string(d.Payload) != w {
					t.Fatalf("message %d upstream is %q, want %q", i, d.Payload, w)
				}
			}
		})
	}
}

// TestUplinkRefusedGoesToDeadLetters: messages the upstream will not take go back to the queue with
// its backoff, each attempt counted, and end in the dead-letter queue; the rest go through. Refusals
// come as an MQTT 5 reason code (ACL: 0x87), as a packet above the upstream's maximum size (0x95,
// found before sending), or as the upstream dropping the connection (a topic too deep for it).
func TestUplinkRefusedGoesToDeadLetters(t *testing.T) {
	deep := strings.Repeat("x/", 40) + "x"
	for _, tc := range []struct {
		name string
		opts mqtt.Options
		bad  queue.Message
	}{
		{"reason code", mqtt.Options{ACL: []mqtt.ACLRule{{Publish: []string{"ok/#"}}}},
			queue.Message{Topic: "denied/1", Payload: []byte("no")}},
		{"too large", mqtt.Options{Limits: mqtt.Limits{MaxPacketSize: 1024}},
			queue.Message{Topic: "big/1", Payload: make([]byte, 2000)}},
		{"disconnects", mqtt.Options{},
			queue.Message{Topic: deep, Payload: []byte("deep")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cloud := ulStartCloud(t, tc.opts)
			cfg := ulEdgeConfig()
			cfg.MaxAttempts = 3
			edge := ulOpenEdge(t, t.TempDir(), cfg)
			defer edge.Close()
			ulEnqueue(t, edge, []string{"ok/1"}, 0, 2)
			if _, err := edge.Enqueue(context.Background(), "up", []queue.Message{tc.bad}); err != nil {
				t.Fatal(err)
			}
			ulEnqueue(t, edge, []string{"ok/1"}, 2, 3)
			reg := prometheus.NewRegistry()
			o := ulOptions("cloud", cloud.url())
			o.Registerer = reg
			ulStart(t, edge, o)
			ulWait(t, 30*time.Second, "the refused message to reach the dead-letter queue", func() bool {
				st, _ := edge.Stats("up")
				return st.Dead == 1 && st.Ready+st.Leased+st.Delayed == 0
			})
			ulCheck(t, ulPayloads(cloud.messages()), map[string]int{"ok/1": 5})
			dead, err := edge.PeekDead("up", 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(dead) != 1 || dead[0].Topic != tc.bad.Topic || dead[0].Attempts != 3 {
				t.Errorf("dead letters %+v; want %s after 3 attempts", dead, tc.bad.Topic)
			}
			if r := ulMetric(t, reg, "sluice_uplink_failures_total", "uplink", "cloud", "reason", "refused"); r != 3 {
				t.Errorf("failures_total{reason=refused} = %v, want 3 (one message × 3 attempts)", r)
			}
		})
	}
}

// TestUplinkBadCredentials: a refusing upstream is retried with backoff and the messages are kept.
func TestUplinkBadCredentials(t *testing.T) {
	cloud := ulStartCloud(t, mqtt.Options{Listeners: []mqtt.Listener{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0"}}})
	edge := ulOpenEdge(t, t.TempDir(), ulEdgeConfig())
	defer edge.Close()
	ulEnqueue(t, edge, []string{"t"}, 0, 3)
	o := ulOptions("cloud", cloud.url())
	o.Username, o.Password = "mallory", "nope"
	u := ulStart(t, edge, o)
	ulWait(t, 10*time.Second, "three failed attempts", func() bool { return u.Status().Failures >= 3 })
	st := u.Status()
	if !strings.Contains(st.LastError, "refused with code 0x") || st.State != "connecting" {
		t.Errorf("status %+v: want a CONNACK refusal and state connecting", st)
	}
	if b := ulBacklog(t, edge); b != 3 {
		t.Errorf("backlog %d, want the 3 messages kept", b)
	}
	if n := cloud.received(); n != 0 {
		t.Errorf("%d messages reached the upstream", n)
	}
}

func TestNewUplinkRejectsBadOptions(t *testing.T) {
	edge := ulOpenEdge(t, t.TempDir(), ulEdgeConfig())
	defer edge.Close()
	for _, tc := range []struct {
		name string
		edit func(*bridge.UplinkOptions)
		want error
	}{
		{"no name", func(o *bridge.UplinkOptions) { o.Name = "" }, bridge.ErrInvalidUplink},
		{"bad scheme", func(o *bridge.UplinkOptions) { o.URL = "http://x:1" }, bridge.ErrInvalidUplink},
		{"no port", func(o *bridge.UplinkOptions) { o.URL = "mqtt://x" }, bridge.ErrInvalidUplink},
		{"not a url", func(o *bridge.UplinkOptions) { o.URL = "x:1883" }, bridge.ErrInvalidUplink},
		{"qos 3", func(o *bridge.UplinkOptions) { o.QoS = 3 }, bridge.ErrInvalidUplink},
		{"version 3", func(o *bridge.UplinkOptions) { o.ProtocolVersion = 3 }, bridge.ErrInvalidUplink},
		{"wildcard template", func(o *bridge.UplinkOptions) { o.Topic.Template = "a/#" }, bridge.ErrInvalidUplink},
		{"unknown placeholder", func(o *bridge.UplinkOptions) { o.Topic.Template = "{site}/{topic}" }, bridge.ErrInvalidUplink},
		{"tls on plain", func(o *bridge.UplinkOptions) { o.TLS.CAFile = "ca.pem" }, bridge.ErrInvalidUplink},
		{"missing ca", func(o *bridge.UplinkOptions) { o.URL = "mqtts://x:8883"; o.TLS.CAFile = "/nonexistent.pem" }, bridge.ErrInvalidUplink},
		{"unknown queue", func(o *bridge.UplinkOptions) { o.Queue = "nope" }, queue.ErrNotFound},
		{"downlink without publisher", func(o *bridge.UplinkOptions) { o.Downlink = &bridge.Downlink{Filters: []string{"c/#"}} }, bridge.ErrInvalidUplink},
		{"downlink bad filter", func(o *bridge.UplinkOptions) {
			o.Downlink = &bridge.Downlink{Filters: []string{"c/#/x"}, Publisher: &bridge.LocalClient{}}
		}, bridge.ErrInvalidUplink},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := ulOptions("x", "tcp://127.0.0.1:1")
			tc.edit(&o)
			_, err := bridge.NewUplink(edge, o)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestUplinkCloseIsIdempotent(t *testing.T) {
	edge := ulOpenEdge(t, t.TempDir(), ulEdgeConfig())
	defer edge.Close()
	u, err := bridge.NewUplink(edge, ulOptions("x", "tcp://127.0.0.1:1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Start(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := u.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := u.Close(ctx); !errors.Is(err, bridge.ErrUplinkClosed) {
		t.Fatalf("second Close = %v, want ErrUplinkClosed", err)
	}
	if err := u.Start(); !errors.Is(err, bridge.ErrUplinkClosed) {
		t.Fatalf("Start after Close = %v, want ErrUplinkClosed", err)
	}
	if s := u.Status().State; s != "stopped" {
		t.Fatalf("state %q after Close", s)
	}
}

// TestUplinkLongOutageKeepsLeases: an outage many leases long costs the messages the uplink holds no
// delivery attempt: their leases are renewed while it reconnects, and they go out first, in order.
func TestUplinkLongOutageKeepsLeases(t *testing.T) {
	cloud := ulStartCloud(t, mqtt.Options{})
	edge := ulOpenEdge(t, t.TempDir(), ulEdgeConfig())
	defer edge.Close()
	reg := prometheus.NewRegistry()
	o := ulOptions("cloud", cloud.url())
	o.Lease, o.Timeout, o.Rate, o.Burst, o.Registerer = 300*time.Millisecond, 100*time.Millisecond, 200, 1, reg
	u := ulStart(t, edge, o)
	ulEnqueue(t, edge, []string{"a", "b"}, 0, 200)
	ulWait(t, 10*time.Second, "the first messages upstream", func() bool { return cloud.received() >= 50 })
	cloud.stop()
	if st, _ := edge.Stats("up"); st.Leased == 0 {
		t.Fatal("the uplink holds no message at the start of the outage; the test proves nothing")
	}
	// Reconnect attempts back off up to 200ms: 15 failed attempts take several leases.
	ulWait(t, 20*time.Second, "a long outage", func() bool { return u.Status().Failures >= 15 })
	cloud.start()
	ulWait(t, 30*time.Second, "the backlog to drain", func() bool { return ulBacklog(t, edge) == 0 })
	ulCheck(t, ulPayloads(cloud.messages()), map[string]int{"a": 200, "b": 200})
	st, err := edge.Stats("up")
	if err != nil {
		t.Fatal(err)
	}
	if st.Nacked != 0 || st.Dead != 0 {
		t.Errorf("the outage cost attempts: %d nacked, %d dead", st.Nacked, st.Dead)
	}
	if s := ulMetric(t, reg, "sluice_uplink_failures_total", "uplink", "cloud", "reason", "stale_receipt"); s != 0 {
		t.Errorf("%v leases ran out during the outage", s)
	}
}
