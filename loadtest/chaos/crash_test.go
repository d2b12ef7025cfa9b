package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicemq/sluice/devices"
	"github.com/sluicemq/sluice/queue/client"
)

// target is where the broker currently listens; it moves on every restart (ports are 0).
type target struct {
	mu         sync.Mutex
	mqtt, http string
}

func (t *target) set(b *broker) {
	t.mu.Lock()
	t.mqtt, t.http = b.mqttAddr, b.httpAddr
	t.mu.Unlock()
}

func (t *target) get() (string, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mqtt, t.http
}

// ledger records what publishers had acknowledged and what consumers received, per publisher.
type ledger struct {
	mu    sync.Mutex
	acked map[string]map[int]bool // publisher → seq → acknowledged (QoS ≥ 1) or written (QoS 0)
	seen  map[string]map[int]int  // publisher → seq → deliveries
}

func newLedger() *ledger {
	return &ledger{acked: map[string]map[int]bool{}, seen: map[string]map[int]int{}}
}

func (l *ledger) ack(pub string, seq int) {
	l.mu.Lock()
	if l.acked[pub] == nil {
		l.acked[pub] = map[int]bool{}
	}
	l.acked[pub][seq] = true
	l.mu.Unlock()
}

func (l *ledger) see(pub string, seq int) {
	l.mu.Lock()
	if l.seen[pub] == nil {
		l.seen[pub] = map[int]int{}
	}
	l.seen[pub][seq]++
	l.mu.Unlock()
}

// missing returns the acknowledged messages of pub not seen yet, except those in exempt.
func (l *ledger) missing(pub string, exempt map[int]bool) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int
	for seq := range l.acked[pub] {
		if l.seen[pub][seq] == 0 && !exempt[seq] {
			out = append(out, seq)
		}
	}
	return out
}

// counts returns acknowledged, seen of those, and duplicate deliveries (beyond the first) for pub.
func (l *ledger) counts(pub string) (acked, seen, dups int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for seq := range l.acked[pub] {
		if l.seen[pub][seq] > 0 {
			seen++
		}
	}
	for _, n := range l.seen[pub] {
		dups += max(0, n-1)
	}
	return len(l.acked[pub]), seen, dups
}

// timeline records events of the crash loop (kills, restarts, session connects), to explain a loss.
type timeline struct {
	mu      sync.Mutex
	start   time.Time
	events  []string
	ackAt   map[int]time.Time // session publisher: seq → when its PUBACK arrived
	resumes [][2]time.Time    // session: [CONNECT sent, CONNACK received] of each reconnect
}

func (tl *timeline) acked(seq int) {
	tl.mu.Lock()
	tl.ackAt[seq] = time.Now()
	tl.mu.Unlock()
	tl.add("session PUBACK %d", seq)
}

func (tl *timeline) resumed(from, to time.Time) {
	tl.mu.Lock()
	tl.resumes = append(tl.resumes, [2]time.Time{from, to})
	tl.mu.Unlock()
	tl.add("session online (CONNECT sent %.3fs)", from.Sub(tl.start).Seconds())
}

// duringResume reports whether seq's PUBACK came while the session was being resumed: the
// publisher's PUBACK is written just before the fan-out, so the fan-out raced the takeover.
func (tl *timeline) duringResume(seq int) bool {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	at, ok := tl.ackAt[seq]
	if !ok {
		return false
	}
	for _, r := range tl.resumes {
		if !at.Before(r[0]) && !at.After(r[1].Add(50*time.Millisecond)) {
			return true
		}
	}
	return false
}

func (tl *timeline) add(format string, args ...any) {
	tl.mu.Lock()
	tl.events = append(tl.events, fmt.Sprintf("%8.3fs ", time.Since(tl.start).Seconds())+fmt.Sprintf(format, args...))
	tl.mu.Unlock()
}

func (tl *timeline) String() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return strings.Join(tl.events, "\n")
}

// filter returns the timeline without PUBACK lines, except those within 20 of a missing seq.
func (tl *timeline) filter(missing []int) string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var out []string
	for _, e := range tl.events {
		if i := strings.Index(e, "session PUBACK "); i >= 0 {
			n, _ := strconv.Atoi(e[i+len("session PUBACK "):])
			near := false
			for _, m := range missing {
				if n >= m-20 && n <= m+20 {
					near = true
				}
			}
			if !near {
				continue
			}
		}
		out = append(out, e)
	}
	return strings.Join(out, "\n")
}

// publisher describes one simulated device of the crash loop.
type publisher struct {
	id    string
	qos   byte
	proto devices.Protocol
}

// TestCrashLoop runs mixed load against the broker and kills it with SIGKILL at random moments,
// restarting it on the same data directory each time. Afterwards every bridged message a publisher
// got PUBACK/PUBCOMP for was delivered to the queue consumers, and the persistent session kept its
// subscription and its queued QoS 1 messages.
//
// What the broker promises the persistent session: mochi writes the publisher's PUBACK before it
// fans the message out to subscribers (server.go processPublish), and the fan-out is what stores a
// QoS 1 message in an offline session (the storage hook, written to the OS before it returns). So
// a kill can fall between the PUBACK of a message and its storage; it cannot fall after the PUBACK
// of the next message on the same connection, because one connection's packets are processed in
// order. The test therefore exempts exactly one message per killed connection of the session's
// publisher — the last one it got a PUBACK for — and requires every other acknowledged one.
func TestCrashLoop(t *testing.T) {
	var (
		rounds = pick(5, 25)
		seed   = uint64(time.Now().UnixNano())
	)
	rng := rand.New(rand.NewPCG(seed, 7))
	t.Logf("seed %d", seed)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, config{
		dataDir: dir + "/data",
		bridge:  true,
		queues: "  defaults:\n    visibility_timeout: 3s\n    max_attempts: 1000\n" +
			"    backoff: {initial: 50ms, multiplier: 2, max: 500ms, jitter: 0.2}\n",
	})
	var checks, figures []string
	defer func() { report(t, strings.Join(checks, ", "), strings.Join(figures, "; ")) }()

	b := startBroker(t, cfg)
	tg := &target{}
	tg.set(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	bridged := newLedger()
	session := newLedger()
	tl := &timeline{start: time.Now(), ackAt: map[int]time.Time{}}

	// Bridged publishers: QoS 0, 1 and 2, MQTT 5 and 3.1.1.
	pubs := []publisher{{"q1a", 1, devices.MQTT5}, {"q1b", 1, devices.MQTT5}, {"q1v3", 1, devices.MQTT311},
		{"q2", 2, devices.MQTT5}, {"q2v3", 2, devices.MQTT311}, {"q0", 0, devices.MQTT5}}
	pubCtx, stopPubs := context.WithCancel(ctx)
	defer stopPubs()
	for _, p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runPublisher(pubCtx, tg, p, "devices/"+p.id+"/telemetry", 0, func(seq int) { bridged.ack(p.id, seq) }, nil)
		}()
	}

	// The persistent session: subscribed once, then online and offline in turns.
	subCtx, stopToggling := context.WithCancel(ctx)
	defer stopToggling()
	var subWG sync.WaitGroup
	subWG.Add(1)
	var subscribed atomic.Bool
	var sessionGot atomic.Int64
	go func() {
		defer subWG.Done()
		runSession(ctx, subCtx, tg, rng.Uint64(), &subscribed, tl, func(seq int) { session.see("s", seq); sessionGot.Add(1) })
	}()
	waitFor(t, 30*time.Second, "the persistent session to subscribe", subscribed.Load)

	// The session's publisher: one connection at a time, in order; the last PUBACK of each
	// connection ended by a kill is exempt (see above).
	var exMu sync.Mutex
	exempt := map[int]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		runPublisher(pubCtx, tg, publisher{"sess-pub", 1, devices.MQTT5}, "chaos/session", 5*time.Millisecond,
			func(seq int) { session.ack("s", seq); tl.acked(seq) },
			func(lastAcked int) {
				tl.add("session publisher: connection ended after PUBACK of %d", lastAcked)
				exMu.Lock()
				exempt[lastAcked] = true
				exMu.Unlock()
			})
	}()

	// Queue consumers over HTTP.
	var consumed atomic.Int64
	conCtx, stopConsumers := context.WithCancel(ctx)
	defer stopConsumers()
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runConsumer(conCtx, tg, func(m client.Message) {
				pub, seq, ok := parseStamp(m.Payload)
				if ok {
					bridged.see(pub, seq)
					consumed.Add(1)
				}
			})
		}()
	}

	// The crash loop.
	starts, repairs := 1, 0
	for r := range rounds {
		time.Sleep(time.Duration(300+rng.IntN(1700)) * time.Millisecond) // load runs for a random time: the kill's moment
		tl.add("SIGKILL")
		b.kill()
		if code := b.exitCode(); code != -9 {
			t.Fatalf("round %d: broker ended with %s before the kill:\n%s", r, b.exitStatus(), b.stderr(40))
		}
		nb, err := tryStartBroker(t, cfg)
		if err != nil {
			t.Fatalf("round %d: restart after SIGKILL failed: %v", r, err)
		}
		repairs += strings.Count(nb.stderr(2000), "repair")
		b = nb
		tl.add("restarted")
		starts++
		tg.set(b)
	}
	time.Sleep(time.Second) // a last stretch of load on the final run

	// Stop the load, bring the session online for good, drain the queue.
	stopPubs()
	stopToggling()
	waitFor(t, 60*time.Second, "every acknowledged bridged message to be consumed", func() bool {
		for _, p := range pubs {
			if p.qos > 0 && len(bridged.missing(p.id, nil)) > 0 {
				return false
			}
		}
		return true
	})
	exMu.Lock()
	ex := make(map[int]bool, len(exempt))
	for k, v := range exempt {
		ex[k] = v
	}
	exMu.Unlock()
	var raced []int // lost to the takeover race (see below)
	// Wait for the session's backlog; stop early once nothing has arrived for 5s.
	last, lastAt := sessionGot.Load(), time.Now()
	if !poll(60*time.Second, func() bool {
		if n := sessionGot.Load(); n != last {
			last, lastAt = n, time.Now()
		}
		return len(session.missing("s", ex)) == 0 || time.Since(lastAt) > 5*time.Second
	}) || len(session.missing("s", ex)) > 0 {
		var other []int
		for _, seq := range session.missing("s", ex) {
			if tl.duringResume(seq) {
				raced = append(raced, seq)
				ex[seq] = true
			} else {
				other = append(other, seq)
			}
		}
		if len(other) > 0 {
			t.Errorf("persistent session: %d acknowledged messages never arrived (first: %v; exempt: %d); timeline:\n%s",
				len(other), firstN(other, 10), len(ex), tl.filter(other))
		}
	}
	if len(raced) > 0 {
		t.Errorf("session takeover: %d QoS 1 messages (%v) acknowledged to their publisher while the offline persistent "+
			"session was being resumed never arrived (mqtt/takeover.go guards mochi's inheritClientSession race). Timeline:\n%s",
			len(raced), raced, tl.filter(raced))
	}
	// Give the consumers a moment to see redeliveries settle, then stop.
	quiet(&consumed, 500*time.Millisecond)
	stopConsumers()
	cancel()
	wg.Wait()
	subWG.Wait()

	var totAcked, totLost, totDups, q0sent, q0seen int
	for _, p := range pubs {
		a, s, d := bridged.counts(p.id)
		if p.qos == 0 {
			q0sent, q0seen = a, s
			continue
		}
		totAcked += a
		totDups += d
		if m := bridged.missing(p.id, nil); len(m) > 0 {
			totLost += len(m)
			t.Errorf("publisher %s (QoS %d, %s): %d of %d acknowledged messages never reached the queue consumers: %v", p.id, p.qos, p.proto, len(m), a, firstN(m, 10))
		}
	}
	sa, ss, sd := session.counts("s")
	sLost := len(session.missing("s", ex))
	exArrived := 0
	for seq := range ex {
		session.mu.Lock()
		if session.seen["s"][seq] > 0 {
			exArrived++
		}
		session.mu.Unlock()
	}
	if totAcked == 0 || sa == 0 {
		t.Errorf("nothing was acknowledged (bridged %d, session %d)", totAcked, sa)
	}
	checks = append(checks, fmt.Sprintf("%d SIGKILLs, %d starts (none failed)", rounds, starts),
		"bridged QoS 1/2 acked ⇒ consumed", "persistent session kept subscription and queued QoS 1")
	figures = append(figures,
		fmt.Sprintf("bridged QoS 1/2: checked %d, lost %d, duplicated %d", totAcked, totLost, totDups),
		fmt.Sprintf("bridged QoS 0: %d of %d arrived", q0seen, q0sent),
		fmt.Sprintf("session QoS 1: checked %d, lost %d, duplicated %d, exempt %d (ack-before-fan-out window at a kill; %d arrived anyway), lost to the takeover race %d (must be 0), received %d",
			sa-len(ex), sLost, sd, len(ex)-len(raced), exArrived, len(raced), ss),
		fmt.Sprintf("log repairs %d", repairs))
	if err := b.healthy(); err != nil {
		t.Fatal(err)
	}
	b.stop()
}

func firstN(s []int, n int) []int {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// parseStamp reads a payload "publisher seq".
func parseStamp(p []byte) (string, int, bool) {
	pub, s, ok := strings.Cut(string(p), " ")
	if !ok {
		return "", 0, false
	}
	seq, err := strconv.Atoi(s)
	return pub, seq, err == nil
}

// runPublisher connects p to the current broker and publishes "id seq" to topic (every interval,
// or as fast as acknowledgements come) until ctx ends, reconnecting after each failure. ack is
// called for every acknowledged message (QoS 0: written); connEnded, if not nil, with the last
// acknowledged sequence number of each connection that ended with an error.
func runPublisher(ctx context.Context, tg *target, p publisher, topic string, interval time.Duration, ack func(int), connEnded func(int)) {
	seq := 0
	for ctx.Err() == nil {
		addr, _ := tg.get()
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := dialDevice(dctx, addr, devices.ClientOptions{ClientID: p.id, Protocol: p.proto, CleanSession: true, ConnectTimeout: 3 * time.Second})
		cancel()
		if err != nil {
			sleepCtx(ctx, 20*time.Millisecond)
			continue
		}
		// paho.golang keeps an unacknowledged publish for a resend and waits for its ack after
		// the connection died: end the wait when the connection is lost.
		cctx, cancelConn := context.WithCancel(ctx)
		go func() {
			select {
			case <-c.Done():
				cancelConn()
			case <-cctx.Done():
			}
		}()
		last := -1
		for ctx.Err() == nil {
			seq++
			err := c.Publish(cctx, devices.Message{Topic: topic, QoS: p.qos, Payload: []byte(p.id + " " + strconv.Itoa(seq))})
			if err != nil {
				if ctx.Err() == nil && connEnded != nil && last >= 0 {
					connEnded(last)
				}
				break
			}
			ack(seq)
			last = seq
			if interval > 0 {
				sleepCtx(cctx, interval)
			} else if p.qos == 0 {
				sleepCtx(cctx, time.Millisecond)
			}
		}
		cancelConn()
		_ = c.Close()
	}
}

// runSession keeps the persistent session "persist" (MQTT 5, session expiry 1h) on chaos/session:
// it subscribes once, then stays online and offline for random stretches while toggle is not done,
// and online after that until ctx ends. got is called for every message received.
func runSession(ctx, toggle context.Context, tg *target, seed uint64, subscribed *atomic.Bool, tl *timeline, got func(int)) {
	rng := rand.New(rand.NewPCG(seed, 11))
	for ctx.Err() == nil {
		addr, _ := tg.get()
		dialed := time.Now()
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := dialDevice(dctx, addr, devices.ClientOptions{ClientID: "persist", CleanSession: false, SessionExpiry: time.Hour,
			ConnectTimeout: 3 * time.Second, OnMessage: func(m devices.Message) {
				if _, seq, ok := parseStamp(m.Payload); ok {
					got(seq)
				}
			}})
		cancel()
		if err != nil {
			sleepCtx(ctx, 20*time.Millisecond)
			continue
		}
		tl.resumed(dialed, time.Now())
		if !subscribed.Load() {
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := c.Subscribe(sctx, "chaos/session", 1)
			cancel()
			if err != nil {
				_ = c.Close()
				continue
			}
			subscribed.Store(true)
		}
		online := time.Duration(100+rng.IntN(500)) * time.Millisecond
		if toggle.Err() != nil {
			online = time.Hour // stay until ctx ends or the connection drops
		}
		select {
		case <-c.Done(): // killed
			tl.add("session connection lost")
			_ = c.Close()
			continue
		case <-ctx.Done():
		case <-time.After(online):
		case <-toggleDone(toggle, online):
		}
		_ = c.Close() // DISCONNECT: the session stays, messages queue for it
		tl.add("session offline")
		if toggle.Err() == nil {
			sleepCtx(toggle, time.Duration(100+rng.IntN(500))*time.Millisecond)
		}
	}
}

// toggleDone is toggle.Done() while online is the toggling stretch, nil (never) once toggling ended.
func toggleDone(toggle context.Context, online time.Duration) <-chan struct{} {
	if online == time.Hour {
		return nil
	}
	return toggle.Done()
}

// runConsumer receives from queue telemetry and acks, against whichever broker runs, until ctx ends.
func runConsumer(ctx context.Context, tg *target, got func(client.Message)) {
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer hc.CloseIdleConnections()
	for ctx.Err() == nil {
		_, addr := tg.get()
		c := &client.Client{BaseURL: "http://" + addr, HTTPClient: hc}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		msgs, err := c.Receive(rctx, "telemetry", client.ReceiveOptions{Max: 100, Wait: time.Second, Lease: 3 * time.Second})
		cancel()
		if err != nil {
			sleepCtx(ctx, 20*time.Millisecond)
			continue
		}
		receipts := make([]string, 0, len(msgs))
		for _, m := range msgs {
			got(m)
			receipts = append(receipts, m.Receipt)
		}
		if len(receipts) > 0 {
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, _ = c.Ack(actx, "telemetry", receipts) // a kill may lose it: the message comes again
			cancel()
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
