package chaos

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicemq/sluice/devices"
)

// TestHostileClients throws hostile traffic at one broker while a well-behaved client (the probe)
// does QoS 1 round trips: its latency must stay within a bound, the broker must stay up, and the
// limits (connect timeout, keep-alive, packet size, topic length and depth, max connections) hold.
func TestHostileClients(t *testing.T) {
	var (
		silent    = pick(200, 2000)   // sockets that never send CONNECT
		storm     = pick(1000, 10000) // connections held open at once
		hashSubs  = pick(100, 500)    // clients subscribed to #
		manySubs  = pick(2000, 20000) // subscriptions on one client
		fuzzFor   = pick(5*time.Second, 60*time.Second)
		reconnFor = pick(3*time.Second, 30*time.Second)
		fleetN    = pick(50, 200) // well-behaved devices publishing telemetry throughout
		seed      = uint64(time.Now().UnixNano())
	)
	if need := uint64(storm + fleetN + 500); fileLimit() < need {
		t.Fatalf("the storm needs %d open files in this process; the limit is %d (raise it: ulimit -n %d)", need, fileLimit(), need)
	}
	t.Logf("fuzzer seed %d", seed)
	dir := t.TempDir()
	maxConns := storm + fleetN + 20
	cfg := writeConfig(t, dir, config{
		dataDir: dir + "/data",
		limits: fmt.Sprintf("    connect_timeout: 2s\n    keep_alive_min: 1\n    max_packet_size: 65536\n"+
			"    max_connections: %d\n    max_topic_length: 1024\n    max_topic_levels: 32\n", maxConns),
	})
	b := startBroker(t, cfg)
	pr := startProbe(t, b.mqttAddr, 20*time.Millisecond)
	// The fleet: the project's device simulator, QoS 1 telemetry every second per device.
	fleet, err := devices.NewFleet(devices.Config{Broker: "tcp://" + b.mqttAddr, Count: fleetN, ConnectRate: 200, QoS: 1,
		IDPattern: "fleet-{n}", Topic: "fleet/{id}/telemetry", Interval: devices.Duration(pick(time.Second, 2*time.Second)),
		Jitter: devices.Duration(200 * time.Millisecond)}, devices.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fleetCtx, stopFleet := context.WithCancel(context.Background())
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- fleet.Run(fleetCtx) }()
	t.Cleanup(func() {
		stopFleet()
		<-fleetDone
	})
	waitFor(t, 60*time.Second, "the fleet to connect", func() bool { return fleet.Stats().Connected == int64(fleetN) })
	base := 1 + fleetN // connections of the probe and the fleet
	var checks []string
	var figures []string
	defer func() { report(t, strings.Join(checks, ", "), strings.Join(figures, "; ")) }()
	alive := func(phase string) {
		t.Helper()
		if err := b.healthy(); err != nil {
			t.Fatalf("after %s: %v", phase, err)
		}
	}
	// settle waits until only the probe and the fleet hold connections.
	settle := func(phase string) {
		t.Helper()
		if !poll(20*time.Second, func() bool { return b.metric(t, "sluice_mqtt_connections") <= float64(base) }) {
			t.Errorf("after %s: %v connections still open after 20s", phase, b.metric(t, "sluice_mqtt_connections"))
		}
	}

	// 1. Sockets that never send CONNECT are closed after connect_timeout (2s).
	{
		conns := make([]net.Conn, 0, silent)
		for range silent {
			c, err := net.DialTimeout("tcp", b.mqttAddr, 10*time.Second)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			conns = append(conns, c)
		}
		start := time.Now()
		open := closeAllWithin(conns, 10*time.Second)
		if open > 0 {
			t.Errorf("silent sockets: %d of %d still open 10s after connecting (connect_timeout 2s)", open, silent)
		}
		took := time.Since(start)
		if got := b.metric(t, "sluice_mqtt_connect_timeouts_total"); got < float64(silent) {
			t.Errorf("sluice_mqtt_connect_timeouts_total = %v, want ≥ %d", got, silent)
		}
		checks = append(checks, fmt.Sprintf("%d silent sockets closed", silent))
		figures = append(figures, fmt.Sprintf("silent sockets closed within %v", took.Round(100*time.Millisecond)))
		alive("silent sockets")
	}

	// 2. Half-open: a CONNECT cut in the middle is closed by the connect timeout; a client that
	// connected with keep-alive 1s and then went silent (a peer that vanished) is closed after 1.5×.
	{
		c, err := net.DialTimeout("tcp", b.mqttAddr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(encConnect("half", false, 60)[:7])
		if !closedWithin(c, 8*time.Second) {
			t.Error("half-written CONNECT: connection still open 8s later (connect_timeout 2s)")
		}
		c.Close()
		rc, err := dialRaw(b.mqttAddr, "vanished", false, 1, 0)
		if err != nil {
			t.Fatal(err)
		}
		if !closedWithin(rc, 6*time.Second) {
			t.Error("silent client with keep-alive 1s: still connected 6s later")
		}
		rc.Close()
		checks = append(checks, "half-open closed (connect timeout, keep-alive)")
		alive("half-open")
	}

	// 3. Oversized, malformed, invalid UTF-8, deep topics: refused, never delivered.
	{
		watch := newWatcher(t, b.mqttAddr)
		for _, tc := range []struct {
			name string
			v5   bool
			pkt  []byte
		}{
			{"oversized publish (header says 100 MB)", true, append([]byte{pktPublish<<4 | 2}, 0x80, 0x80, 0x80, 0x30, 0, 3, 'b', '/', 'x')},
			{"oversized publish v3 (128 KiB sent)", false, encPublish(false, "bad/big", 1, 1, make([]byte, 128<<10))},
			{"invalid UTF-8 topic v3", false, encPublish(false, "bad/\xff\xfe", 1, 1, []byte("x"))},
			{"invalid UTF-8 topic v5", true, encPublish(true, "bad/\xc3\x28", 1, 1, []byte("x"))},
			{"NUL in topic", true, encPublish(true, "bad/a\x00b", 1, 1, []byte("x"))},
			{"topic with 600 levels", true, encPublish(true, "bad"+strings.Repeat("/a", 600), 1, 1, []byte("x"))},
			{"topic of 60 KiB", false, encPublish(false, "bad/"+strings.Repeat("x", 60<<10), 1, 1, []byte("x"))},
			{"wildcard in published topic", true, encPublish(true, "bad/#", 1, 1, []byte("x"))},
			{"remaining length of 5 bytes", false, []byte{pktPublish << 4, 0xff, 0xff, 0xff, 0xff, 0x7f}},
			{"reserved packet type 0", true, []byte{0x00, 0x00}},
			{"second CONNECT", false, encConnect("again", false, 60)},
		} {
			rc, err := dialRaw(b.mqttAddr, "bad-"+tc.name[:12], tc.v5, 60, 0)
			if err != nil {
				t.Fatalf("%s: connect: %v", tc.name, err)
			}
			_ = rc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = rc.Write(tc.pkt)
			if ok, why := refused(rc); !ok {
				t.Errorf("%s: %s", tc.name, why)
			}
			rc.Close()
		}
		// Subscriptions that must be refused: invalid UTF-8, misplaced wildcard, and filters over
		// max_topic_levels or max_topic_length (limits meant for the topic tree, which stores filters).
		for _, tc := range []struct {
			name, filter string
		}{
			{"invalid UTF-8 filter", "bad/\xff/#"},
			{"misplaced #", "bad/#/x"},
			{"filter with 600 levels", strings.Repeat("+/", 600) + "#"},
			{"filter of 2 KiB", "bad/" + strings.Repeat("y", 2048)},
		} {
			rc, err := dialRaw(b.mqttAddr, "badsub", true, 60, 0)
			if err != nil {
				t.Fatalf("%s: connect: %v", tc.name, err)
			}
			codes, err := rc.subscribe(1, 0, tc.filter)
			if err == nil && (len(codes) != 1 || codes[0] < 0x80) {
				t.Errorf("%s: SUBACK codes %x, want a failure code or a disconnect", tc.name, codes)
			}
			rc.Close()
		}
		if n := watch.count(); n != 0 {
			t.Errorf("a subscriber to bad/# received %d of the refused publishes: %q", n, watch.topics())
		}
		watch.c.Close()
		checks = append(checks, "oversized/malformed/invalid-UTF-8/deep packets refused and not delivered")
		alive("malformed packets")
	}

	// 4. The fuzzer: random and mutated packets on the live listener.
	{
		n, bytes := fuzz(b.mqttAddr, seed, 4, fuzzFor)
		checks = append(checks, fmt.Sprintf("fuzzer %v", fuzzFor))
		figures = append(figures, fmt.Sprintf("fuzzer %d connections, %d KiB", n, bytes>>10))
		alive("fuzzer")
	}

	// 5. Many clients subscribed to # (raw sockets reading everything the fleet publishes), all
	// served: each gets every marker message.
	{
		var got atomic.Int64
		var readers sync.WaitGroup
		clients := make([]*rawClient, 0, hashSubs)
		retries := 0
		for i := range hashSubs {
			var rc *rawClient
			var err error
			for try := 0; try < 3; try++ { // the test process is busy (race detector): a slow CONNECT may time out
				if rc, err = dialRaw(b.mqttAddr, fmt.Sprintf("hash-%d", i), i%2 == 0, 600, 0); err == nil {
					break
				}
				retries++
			}
			if err != nil {
				t.Fatalf("# subscriber %d: %v", i, err)
			}
			if _, err := rc.subscribe(1, 0, "#"); err != nil {
				t.Fatalf("# subscriber %d: %v", i, err)
			}
			clients = append(clients, rc)
			readers.Add(1)
			go func() {
				defer readers.Done()
				for {
					first, body, err := readPacket(rc.r)
					if err != nil {
						return
					}
					if first>>4 == pktPublish && len(body) > 13 && string(body[2:13]) == "marker/hash" {
						got.Add(1)
					}
				}
			}()
		}
		drops := func() float64 {
			return b.metric(t, `sluice_mqtt_dropped_messages_total{reason="slow_subscriber_qos0"}`)
		}
		drops0 := drops()
		pub := mustDevice(t, b.mqttAddr, devices.ClientOptions{ClientID: "hash-pub", CleanSession: true})
		for range 10 {
			if err := pub.Publish(context.Background(), devices.Message{Topic: "marker/hash", QoS: 1, Payload: make([]byte, 256)}); err != nil {
				t.Fatalf("publish marker: %v", err)
			}
		}
		// Every marker arrives, or (the # subscribers also get all the fleet's telemetry, at QoS 0)
		// was dropped for a full subscriber queue and counted as such.
		want := int64(10 * hashSubs)
		poll(30*time.Second, func() bool { return got.Load() >= want })
		quiet(&got, time.Second)
		dropped := drops() - drops0
		if g := got.Load(); g < want && float64(want-g) > dropped || g < want/2 {
			t.Errorf("# subscribers: %d of %d marker messages arrived; %v QoS 0 drops counted meanwhile", g, want, dropped)
		}
		figures = append(figures, fmt.Sprintf("# subscribers: %d of %d markers arrived, %v drops counted", got.Load(), want, dropped))
		for _, c := range clients {
			c.Close()
		}
		readers.Wait()
		_ = pub.Close()
		checks = append(checks, fmt.Sprintf("%d # subscribers served", hashSubs))
		if retries > 0 {
			figures = append(figures, fmt.Sprintf("# subscribers: %d CONNECTs retried", retries))
		}
		settle("# subscribers")
		alive("# subscribers")
	}

	// 6. Thousands of subscriptions on one client; the last one still routes.
	{
		rc, err := dialRaw(b.mqttAddr, "many-subs", true, 60, 0)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for i := 0; i < manySubs; i += 100 {
			filters := make([]string, 0, 100)
			for j := i; j < i+100 && j < manySubs; j++ {
				filters = append(filters, fmt.Sprintf("many/%d/+", j))
			}
			codes, err := rc.subscribe(uint16(i/100+1), 0, filters...)
			if err != nil {
				t.Fatalf("subscription %d: %v", i, err)
			}
			for _, c := range codes {
				if c >= 0x80 {
					t.Fatalf("subscription %d refused: %#x", i, c)
				}
			}
		}
		took := time.Since(start)
		if subs := b.metric(t, "sluice_mqtt_subscriptions"); subs < float64(manySubs) {
			t.Errorf("sluice_mqtt_subscriptions = %v, want ≥ %d", subs, manySubs)
		}
		pub := mustDevice(t, b.mqttAddr, devices.ClientOptions{ClientID: "many-pub", CleanSession: true})
		topic := fmt.Sprintf("many/%d/x", manySubs-1)
		if err := pub.Publish(context.Background(), devices.Message{Topic: topic, QoS: 0, Payload: []byte("hit")}); err != nil {
			t.Fatal(err)
		}
		if !receivesTopic(rc, topic, 10*time.Second) {
			t.Errorf("a client with %d subscriptions did not receive %s", manySubs, topic)
		}
		rc.Close()
		_ = pub.Close()
		checks = append(checks, fmt.Sprintf("%d subscriptions on one client", manySubs))
		figures = append(figures, fmt.Sprintf("%d subscriptions in %v", manySubs, took.Round(time.Millisecond)))
		settle("many subscriptions")
		alive("many subscriptions")
	}

	// 7. Two loops reconnecting with the same client id (each takes the session over from the other).
	{
		var connects, refusals atomic.Int64
		ctx, cancel := context.WithTimeout(context.Background(), reconnFor)
		var wg sync.WaitGroup
		for g := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					rc, err := dialRaw(b.mqttAddr, "flapper", g == 0, 60, 0)
					if err != nil {
						refusals.Add(1)
						continue
					}
					connects.Add(1)
					_, _ = rc.Write(encPublish(g == 0, "flap/x", 0, 0, []byte("x")))
					if g == 0 {
						_, _ = rc.Write([]byte{pktDisconnect << 4, 0})
					}
					rc.Close()
				}
			}()
		}
		wg.Wait()
		cancel()
		if connects.Load() == 0 {
			t.Error("reconnect loop: no connection succeeded")
		}
		checks = append(checks, "same-id reconnect loop")
		figures = append(figures, fmt.Sprintf("%d reconnects in %v (%d failed)", connects.Load(), reconnFor, refusals.Load()))
		settle("reconnect loop")
		alive("reconnect loop")
	}

	// 8. A storm of connections held open at once, then max_connections holds.
	{
		settle("before the storm")
		start := time.Now()
		conns, failed := stormConnect(b.mqttAddr, storm, 200)
		took := time.Since(start)
		if failed > 0 {
			t.Errorf("storm: %d of %d connections failed", failed, storm)
		}
		rss := b.rss()
		held := len(conns)
		if got := b.metric(t, "sluice_mqtt_clients_connected"); got < float64(held) {
			t.Errorf("storm: clients_connected = %v, want ≥ %d", got, held)
		}
		// The limit: maxConns = storm + fleet + 20; base (probe, fleet) + storm are open, so of 40
		// more at least 20 are refused.
		rejectedBefore := b.metric(t, "sluice_mqtt_connections_rejected_total")
		extra, extraFailed := stormConnect(b.mqttAddr, 40, 40)
		wantRefused := 40 - (maxConns - storm - base)
		if extraFailed < wantRefused {
			t.Errorf("max_connections %d: %d of 40 connections beyond %d open ones were refused, want ≥ %d", maxConns, extraFailed, held+base, wantRefused)
		}
		if rej := b.metric(t, "sluice_mqtt_connections_rejected_total") - rejectedBefore; rej < float64(wantRefused) {
			t.Errorf("connections_rejected_total grew by %v, want ≥ %d", rej, wantRefused)
		}
		alive("storm")
		for _, c := range append(conns, extra...) {
			c.Close()
		}
		checks = append(checks, fmt.Sprintf("storm of %d connections, max_connections held", storm))
		figures = append(figures, fmt.Sprintf("storm %d conns in %v (%.0f/s), broker RSS %d MiB with them open", held,
			took.Round(time.Millisecond), float64(held)/took.Seconds(), rss>>20))
		settle("storm")
	}

	pr.halt()
	fs := fleet.Stats()
	stopFleet()
	if err := <-fleetDone; err != nil {
		t.Errorf("fleet: %v", err)
	}
	fleetDone <- nil // for the cleanup
	if fs.Errors != 0 || fs.Reconnects != 0 || fs.Acked+uint64(fleetN) < fs.Published {
		t.Errorf("fleet: %+v; want no errors, no reconnects, every publish acked", fs)
	}
	figures = append(figures, fmt.Sprintf("fleet of %d devices: %d published, %d acked, %d errors", fleetN, fs.Published, fs.Acked, fs.Errors))
	checks = append(checks, fmt.Sprintf("fleet of %d unaffected", fleetN))
	ps := pr.stats()
	figures = append([]string{ps.String()}, figures...)
	if len(ps.fails) > 0 {
		t.Errorf("probe: %d round trips failed, first: %s", len(ps.fails), ps.fails[0])
	}
	if ps.n < 50 {
		t.Errorf("probe: only %d round trips", ps.n)
	}
	if ps.p99 > time.Second {
		t.Errorf("probe: p99 %v > 1s under abuse", ps.p99)
	}
	checks = append(checks, "probe p99 < 1s", "/healthz 200 throughout")
	alive("the end")
	b.stop()
}

// closeAllWithin waits until the peer closed every conn, and returns how many were still open after d.
func closeAllWithin(conns []net.Conn, d time.Duration) int {
	var open atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !closedWithin(c, d) {
				open.Add(1)
			}
			c.Close()
		}()
	}
	wg.Wait()
	return int(open.Load())
}

// refused reports whether the broker refused what was just written on rc: it closes the
// connection (after a DISCONNECT or not) or answers a PUBACK with a failure code.
func refused(rc *rawClient) (bool, string) {
	_ = rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		first, body, err := readPacket(rc.r)
		if err != nil {
			var ne net.Error
			if ok := asNetErr(err, &ne); ok && ne.Timeout() {
				return false, "connection still open 5s later and no failure ack"
			}
			return true, ""
		}
		switch first >> 4 {
		case pktDisconnect:
			return true, ""
		case pktPuback:
			if rc.v5 && len(body) >= 3 && body[2] >= 0x80 {
				return true, ""
			}
			return false, fmt.Sprintf("PUBACK %x: accepted", body)
		}
	}
}

func asNetErr(err error, ne *net.Error) bool {
	e, ok := err.(net.Error)
	if ok {
		*ne = e
	}
	return ok
}

// receivesTopic reads rc until a PUBLISH on topic arrives (true) or d passes.
func receivesTopic(rc *rawClient, topic string, d time.Duration) bool {
	_ = rc.SetReadDeadline(time.Now().Add(d))
	for {
		first, body, err := readPacket(rc.r)
		if err != nil {
			return false
		}
		if first>>4 == pktPublish && len(body) >= 2 {
			n := int(body[0])<<8 | int(body[1])
			if len(body) >= 2+n && string(body[2:2+n]) == topic {
				return true
			}
		}
	}
}

// watcher subscribes to bad/# and counts what arrives.
type watcher struct {
	c  *devices.Client
	mu sync.Mutex
	ts []string
}

func newWatcher(t testing.TB, addr string) *watcher {
	w := &watcher{}
	w.c = mustDevice(t, addr, devices.ClientOptions{ClientID: "watcher", CleanSession: true, OnMessage: func(m devices.Message) {
		w.mu.Lock()
		w.ts = append(w.ts, m.Topic)
		w.mu.Unlock()
	}})
	if err := w.c.Subscribe(context.Background(), "bad/#", 1); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *watcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.ts)
}

func (w *watcher) topics() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.ts...)
}

// stormConnect opens n MQTT 3.1.1 connections (CONNECT, CONNACK) with par dialers at once and keeps
// them open. It returns the open ones and how many failed (refused, closed, timed out).
func stormConnect(addr string, n, par int) ([]net.Conn, int) {
	var mu sync.Mutex
	conns := make([]net.Conn, 0, n)
	failed := 0
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				c, err := stormOne(addr, fmt.Sprintf("storm-%d-%d", time.Now().UnixNano()%1e6, i))
				mu.Lock()
				if err != nil {
					failed++
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return conns, failed
}

func stormOne(addr, id string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := c.Write(encConnect(id, false, 600)); err != nil {
		c.Close()
		return nil, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil || ack[0] != pktConnack<<4 || ack[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("CONNACK %x: %v", ack, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// fuzz runs workers that connect and write random or mutated MQTT packets for d, reading (and
// discarding) what comes back. It returns the connections made and the bytes written.
func fuzz(addr string, seed uint64, workers int, d time.Duration) (int64, int64) {
	var conns, written atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			buf := make([]byte, 4096)
			for time.Now().Before(deadline) {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					continue
				}
				conns.Add(1)
				var out []byte
				if rng.IntN(4) != 0 { // mostly past CONNECT, where the packet parsers are
					out = append(out, mutate(rng, encConnect(fmt.Sprintf("fz%d", w), rng.IntN(2) == 0, 30), 0.02)...)
				}
				for range 1 + rng.IntN(8) {
					out = append(out, mutate(rng, fuzzPacket(rng), 0.05)...)
				}
				_ = c.SetDeadline(time.Now().Add(300 * time.Millisecond))
				n, _ := c.Write(out)
				written.Add(int64(n))
				for {
					if _, err := c.Read(buf); err != nil {
						break
					}
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	return conns.Load(), written.Load()
}

// fuzzPacket returns a valid-looking packet of a random kind.
func fuzzPacket(rng *rand.Rand) []byte {
	v5 := rng.IntN(2) == 0
	topic := randTopic(rng)
	switch rng.IntN(8) {
	case 0:
		return encPublish(v5, topic, byte(rng.IntN(3)), uint16(rng.Uint32()), randBytes(rng, rng.IntN(300)))
	case 1:
		return encSubscribe(uint16(rng.Uint32()), v5, byte(rng.IntN(4)), topic, randTopic(rng))
	case 2: // a header announcing far more than follows
		return append([]byte{byte(rng.IntN(16)) << 4, 0xff, 0xff, 0x7f}, randBytes(rng, 16)...)
	case 3:
		return []byte{byte(rng.IntN(16))<<4 | byte(rng.IntN(16)), 0}
	case 4:
		return frame(byte(rng.IntN(256)), randBytes(rng, rng.IntN(64)))
	case 5: // a publish with properties of random bytes
		b := appendStr(nil, topic)
		b = append(b, 0, 1)
		p := randBytes(rng, rng.IntN(40))
		b = appendVBI(b, len(p))
		b = append(b, p...)
		return frame(pktPublish<<4|2, b)
	case 6:
		return encConnect(string(randBytes(rng, rng.IntN(30))), v5, uint16(rng.Uint32()))
	default:
		return randBytes(rng, 1+rng.IntN(200))
	}
}

func randTopic(rng *rand.Rand) string {
	parts := []string{"a", "+", "#", "", "$SYS", "\xff", "x/y", "\x00", "devices", "telemetry"}
	var b strings.Builder
	for i := range 1 + rng.IntN(6) {
		if i > 0 {
			b.WriteByte('/')
		}
		b.WriteString(parts[rng.IntN(len(parts))])
	}
	return b.String()
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// mutate flips each byte of p with probability rate, and sometimes cuts or extends it.
func mutate(rng *rand.Rand, p []byte, rate float64) []byte {
	p = append([]byte(nil), p...)
	for i := range p {
		if rng.Float64() < rate {
			p[i] = byte(rng.Uint32())
		}
	}
	switch rng.IntN(10) {
	case 0:
		p = p[:rng.IntN(len(p)+1)]
	case 1:
		p = append(p, randBytes(rng, rng.IntN(32))...)
	}
	return p
}
