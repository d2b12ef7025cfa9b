package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/sluicemq/sluice/queue/client"
	"github.com/sluicemq/sluice/wal/waltest"
)

const testAPIKey = "e2e-admin-key-0123456789"

// queuesConfig writes a configuration with the bridge and queues for the end-to-end tests: MQTT and
// HTTP on 127.0.0.1:0, an admin API key, a telemetry queue with fast retries, a small rejecting queue.
func queuesConfig(t testing.TB, dir string) string {
	t.Helper()
	cfg := fmt.Sprintf(`log: {level: info, format: json}
mqtt:
  listeners:
    - {name: tcp, type: tcp, address: "127.0.0.1:0", allow_anonymous: true}
http:
  address: "127.0.0.1:0"
  api_keys:
    - {name: e2e, key: %q, queues: {"*": [admin]}}
data_dir: %s
queues:
  declare:
    telemetry: {visibility_timeout: 2s, max_attempts: 3, backoff: {initial: 10ms, multiplier: 1, max: 10ms, jitter: 0}}
    small: {max_messages: 3, overflow: reject}
bridge:
  rules:
    - {filter: "devices/+/telemetry", queue: telemetry}
    - {filter: "small/#", queue: small}
`, testAPIKey, filepath.Join(dir, "data"))
	return writeText(t, dir, "sluice.yaml", cfg)
}

func apiClient(httpAddr string) *client.Client {
	return &client.Client{BaseURL: "http://" + httpAddr, APIKey: testAPIKey}
}

// dialV3 connects an MQTT 3.1.1 client (paho.mqtt.golang) without automatic reconnection.
func dialV3(t testing.TB, addr, id string) (paho3.Client, error) {
	t.Helper()
	o := paho3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetCleanSession(true).SetKeepAlive(30 * time.Second).
		SetWriteTimeout(5 * time.Second).SetConnectTimeout(5 * time.Second)
	c := paho3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		c.Disconnect(0)
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, nil
}

// TestQueuesEndToEnd is the test 1 through the whole stack: 50 devices (MQTT 5 and 3.1.1)
// publish QoS 1 with sequence numbers into a bridged topic while a Go client Consumer receives over
// HTTP and acks; every PUBACKed message arrives.
func TestQueuesEndToEnd(t *testing.T) {
	a := startApp(t, queuesConfig(t, t.TempDir()))
	mqttAddr, httpAddr := a.MQTTAddr("tcp").String(), a.HTTPAddr().String()
	const devices, perDevice = 50, 30

	var mu sync.Mutex
	seen := map[string]int{}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	cons := &client.Consumer{Client: apiClient(httpAddr), Queue: "telemetry", Workers: 4, BatchSize: 100, Wait: time.Second,
		Handler: func(_ context.Context, m client.Message) error {
			mu.Lock()
			seen[string(m.Payload)]++
			mu.Unlock()
			return nil
		}}
	runErr := make(chan error, 1)
	go func() { runErr <- cons.Run(ctx) }()

	acked := make([][]bool, devices)
	var wg sync.WaitGroup
	for d := range devices {
		acked[d] = make([]bool, perDevice)
		id := fmt.Sprintf("dev%02d", d)
		topic := "devices/" + id + "/telemetry"
		if d%5 == 4 {
			c, err := dialV3(t, mqttAddr, id)
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				for s := range perDevice {
					tok := c.Publish(topic, 1, false, fmt.Sprintf("%s/%d", id, s))
					acked[d][s] = tok.WaitTimeout(10*time.Second) && tok.Error() == nil
				}
			})
			continue
		}
		mc, err := dialMQTT(t, mqttAddr, id, dialOpts{})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for s := range perDevice {
				pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := mc.c.Publish(pctx, &paho.Publish{QoS: 1, Topic: topic, Payload: fmt.Appendf(nil, "%s/%d", id, s)})
				cancel()
				acked[d][s] = err == nil && resp.ReasonCode == 0
			}
		})
	}
	wg.Wait()
	total := 0
	for d := range devices {
		for s := range perDevice {
			if !acked[d][s] {
				t.Fatalf("dev%02d message %d was not PUBACKed", d, s)
			}
			total++
		}
	}
	waitFor(t, 30*time.Second, "the consumer to see every PUBACKed message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == total
	})
	stop()
	if err := <-runErr; err != nil {
		t.Fatalf("consumer: %v", err)
	}
	st, err := apiClient(httpAddr).Stats(context.Background(), "telemetry")
	if err != nil {
		t.Fatal(err)
	}
	if st.Acked != uint64(total) || st.Ready != 0 || st.Leased != 0 {
		t.Errorf("stats %+v, want %d acked and nothing left", st, total)
	}
	mu.Lock()
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times without any failure", k, n)
		}
	}
	mu.Unlock()
	code, body := httpGet(t, "http://"+httpAddr+"/metrics")
	for _, name := range []string{"sluice_bridge_enqueued_total", "sluice_bridge_enqueue_duration_seconds", "sluice_queue_ready",
		"sluice_queue_acked_total", "sluice_http_requests_total"} {
		if code != 200 || !strings.Contains(body, name) {
			t.Errorf("/metrics (%d) lacks %s", code, name)
		}
	}
}

// TestQueuesFullRejectsThroughServe checks the reject policy through the wired broker: MQTT 5 gets
// 0x97, other topics flow, the stored messages stay.
func TestQueuesFullRejectsThroughServe(t *testing.T) {
	a := startApp(t, queuesConfig(t, t.TempDir()))
	mc, err := dialMQTT(t, a.MQTTAddr("tcp").String(), "filler", dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		mc.publish(t, "small/x", 1, false, fmt.Sprint(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, _ := mc.c.Publish(ctx, &paho.Publish{QoS: 1, Topic: "small/x", Payload: []byte("over")})
	if resp == nil || resp.ReasonCode != 0x97 {
		t.Fatalf("publish into the full queue answered %+v, want reason 0x97", resp)
	}
	mc.publish(t, "devices/d/telemetry", 1, false, "still flows")
	st, err := apiClient(a.HTTPAddr().String()).Stats(ctx, "small")
	if err != nil || st.Ready != 3 {
		t.Fatalf("small: %+v %v, want the 3 stored messages", st, err)
	}
}

// cliRun runs `sluice queue args...` against the API with stdin.
func cliRun(t *testing.T, httpAddr, key, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{"--url", "http://" + httpAddr, "--key", key}, args...)
	code := cmdQueueWithStdin(context.Background(), full, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestQueueCommand(t *testing.T) {
	a := startApp(t, queuesConfig(t, t.TempDir()))
	h := a.HTTPAddr().String()
	ok := func(stdin string, args ...string) string {
		t.Helper()
		code, out, errOut := cliRun(t, h, testAPIKey, stdin, args...)
		if code != 0 {
			t.Fatalf("sluice queue %v: exit %d, stderr %s", args, code, errOut)
		}
		return out
	}
	if out := ok("a\nb\nc\n", "send", "telemetry", "--topic", "cli/t"); !strings.Contains(out, "sent 3 messages") {
		t.Errorf("send: %q", out)
	}
	if out := ok("", "ls"); !regexp.MustCompile(`(?m)^\s*telemetry\s+3\s+0\s+0\s+0`).MatchString(out) {
		t.Errorf("ls:\n%s", out)
	}
	var st client.Stats
	if err := json.Unmarshal([]byte(ok("", "stats", "telemetry", "--json")), &st); err != nil || st.Ready != 3 {
		t.Errorf("stats --json: %+v %v", st, err)
	}
	if out := ok("", "stats", "telemetry"); !strings.Contains(out, "ready:") {
		t.Errorf("stats: %q", out)
	}
	out := ok("", "receive", "telemetry", "--max", "2", "--ack")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"payload":"a"`) || !strings.Contains(lines[0], `"topic":"cli/t"`) {
		t.Fatalf("receive --ack:\n%s", out)
	}
	// The last message: leased, never acked, nacked until it is dead (max_attempts 3).
	c := apiClient(h)
	for range 3 {
		var msgs []client.Message
		waitFor(t, 10*time.Second, "the message to be ready again", func() bool {
			var err error
			msgs, err = c.Receive(context.Background(), "telemetry", client.ReceiveOptions{Max: 1})
			return err == nil && len(msgs) == 1
		})
		if _, err := c.Nack(context.Background(), "telemetry", []string{msgs[0].Receipt}, time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "a dead letter", func() bool {
		return strings.Contains(ok("", "dead", "telemetry"), `"payload":"c"`)
	})
	if out := ok("", "redrive", "telemetry"); !strings.Contains(out, "redrove 1") {
		t.Errorf("redrive: %q", out)
	}
	// tail prints and acks until interrupted.
	tailCtx, stopTail := context.WithCancel(context.Background())
	var tailOut waltest.LogBuffer
	tailCode := make(chan int, 1)
	go func() {
		tailCode <- cmdQueueWithStdin(tailCtx, []string{"tail", "telemetry", "--url", "http://" + h, "--key", testAPIKey, "--batch", "10"},
			strings.NewReader(""), &tailOut, &tailOut)
	}()
	waitFor(t, 10*time.Second, "tail to print the redriven message", func() bool { return strings.Contains(tailOut.String(), `"payload":"c"`) })
	stopTail()
	if code := <-tailCode; code != 0 {
		t.Errorf("tail ended with %d: %s", code, tailOut.String())
	}
	waitFor(t, 10*time.Second, "tail's ack", func() bool {
		st, err := c.Stats(context.Background(), "telemetry")
		return err == nil && st.Ready == 0 && st.Leased == 0 && st.Dead == 0
	})
	ok("x\n", "send", "telemetry")
	for _, tt := range []struct {
		name string
		key  string
		args []string
		code int
		msg  string
	}{
		{"purge without yes", testAPIKey, []string{"purge", "telemetry"}, 2, "--yes"},
		{"no queue", testAPIKey, []string{"stats"}, 2, "queue name is required"},
		{"unknown command", testAPIKey, []string{"frob"}, 2, "unknown command"},
		{"bad flag", testAPIKey, []string{"receive", "telemetry", "--maxx", "1"}, 2, "maxx"},
		{"max too big", testAPIKey, []string{"receive", "telemetry", "--max", "5000"}, 2, "--max"},
		{"wrong key", "wrong", []string{"ls"}, 1, "401"},
		{"unknown queue", testAPIKey, []string{"stats", "nope"}, 1, "does not exist"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := cliRun(t, h, tt.key, "", tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.msg) {
				t.Errorf("exit %d stderr %q, want %d and %q", code, errOut, tt.code, tt.msg)
			}
		})
	}
	if out := ok("", "purge", "telemetry", "--yes"); !strings.Contains(out, "purged 1") {
		t.Errorf("purge: %q", out)
	}
	// The URL and key from the environment, and the command through the main command table.
	t.Setenv("SLUICE_URL", "http://"+h)
	t.Setenv("SLUICE_API_KEY", testAPIKey)
	if code, out, errOut := runCLI(t, "queue", "ls"); code != 0 || !strings.Contains(out, "telemetry") {
		t.Errorf("sluice queue ls with SLUICE_URL/SLUICE_API_KEY: exit %d, %q %q", code, out, errOut)
	}
}

// TestQueuesSurviveSIGKILL is the test 2: devices publish QoS 1 with sequence numbers while a
// consumer receives and acks over HTTP, and the broker, a child process, is killed with SIGKILL several
// times and restarted on the same data. No PUBACKed message is lost; duplicates are counted and stay
// within what was in flight at the kills.
func TestQueuesSurviveSIGKILL(t *testing.T) {
	cfgPath := queuesConfig(t, t.TempDir())
	const devices, v3devices, kills, batch = 8, 2, 3, 50

	type addrs struct{ mqtt, http string }
	var cur atomic.Pointer[addrs]
	start := func() *proc {
		t.Helper()
		p := startProc(t, "serve", "--config", cfgPath)
		m, h := p.started()
		cur.Store(&addrs{m, h})
		return p
	}
	p := start()

	stop := make(chan struct{})
	var acked atomic.Int64
	ackedSeqs := make([]map[int]bool, devices+v3devices)
	var wg sync.WaitGroup
	// MQTT 5 devices: publish seq after seq; on failure reconnect to the current broker and resend.
	for d := range devices {
		ackedSeqs[d] = map[int]bool{}
		id := fmt.Sprintf("k5-%d", d)
		wg.Go(func() {
			var mc *mqttClient
			for seq := 0; ; {
				select {
				case <-stop:
					return
				default:
				}
				if mc == nil || mc.isLost() {
					var err error
					if mc, err = dialMQTT(t, cur.Load().mqtt, id, dialOpts{}); err != nil {
						mc = nil
						time.Sleep(20 * time.Millisecond) // broker restarting: retry
						continue
					}
				}
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				lost := mc.lost
				go func() {
					select {
					case <-lost:
						cancel()
					case <-ctx.Done():
					}
				}()
				resp, err := mc.c.Publish(ctx, &paho.Publish{QoS: 1, Topic: "devices/" + id + "/telemetry", Payload: fmt.Appendf(nil, "%s/%d", id, seq)})
				cancel()
				if err == nil && resp.ReasonCode == 0 {
					ackedSeqs[d][seq] = true
					acked.Add(1)
					seq++
					continue
				}
				mc.close()
				mc = nil // resend seq on a new connection
			}
		})
	}
	// MQTT 3.1.1 devices.
	for d := devices; d < devices+v3devices; d++ {
		ackedSeqs[d] = map[int]bool{}
		id := fmt.Sprintf("k3-%d", d)
		wg.Go(func() {
			var c paho3.Client
			for seq := 0; ; {
				select {
				case <-stop:
					return
				default:
				}
				if c == nil || !c.IsConnectionOpen() {
					if c != nil {
						c.Disconnect(0)
					}
					var err error
					if c, err = dialV3(t, cur.Load().mqtt, id); err != nil {
						c = nil
						time.Sleep(20 * time.Millisecond)
						continue
					}
				}
				tok := c.Publish("devices/"+id+"/telemetry", 1, false, fmt.Sprintf("%s/%d", id, seq))
				if tok.WaitTimeout(3*time.Second) && tok.Error() == nil {
					ackedSeqs[d][seq] = true
					acked.Add(1)
					seq++
					continue
				}
				c.Disconnect(0)
				c = nil
			}
		})
	}
	// The consumer: receive, record, ack; across restarts.
	var mu sync.Mutex
	seen := map[string]int{}
	// record counts msgs in seen and returns their receipts.
	record := func(msgs []client.Message) []string {
		rs := make([]string, len(msgs))
		mu.Lock()
		defer mu.Unlock()
		for i, m := range msgs {
			seen[string(m.Payload)]++
			rs[i] = m.Receipt
		}
		return rs
	}
	consumerDone := make(chan struct{})
	go func() {
		defer close(consumerDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c := apiClient(cur.Load().http)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			msgs, err := c.Receive(ctx, "telemetry", client.ReceiveOptions{Max: batch, Wait: 200 * time.Millisecond, Lease: 10 * time.Second})
			if err != nil {
				cancel()
				time.Sleep(20 * time.Millisecond) // broker restarting: retry
				continue
			}
			rs := record(msgs)
			if len(rs) > 0 {
				_, _ = c.Ack(ctx, "telemetry", rs) // lost at a kill: redelivered, counted as duplicates
			}
			cancel()
		}
	}()

	for k := range kills {
		target := acked.Load() + 150
		waitFor(t, 60*time.Second, fmt.Sprintf("150 more PUBACKs before kill %d", k+1), func() bool { return acked.Load() >= target })
		p.signal(syscall.SIGKILL)
		if code := p.wait(10 * time.Second); code != -int(syscall.SIGKILL) {
			t.Fatalf("kill %d: exit code %d", k+1, code)
		}
		p = start()
	}
	target := acked.Load() + 150
	waitFor(t, 60*time.Second, "150 more PUBACKs after the last restart", func() bool { return acked.Load() >= target })
	close(stop)
	wg.Wait()

	// Every PUBACKed message must reach the consumer (drained after the publishers stopped).
	c := apiClient(cur.Load().http)
	total := 0
	for d := range ackedSeqs {
		total += len(ackedSeqs[d])
	}
	<-consumerDone
	waitFor(t, 60*time.Second, "the consumer to see every PUBACKed message", func() bool {
		msgs, err := c.Receive(context.Background(), "telemetry", client.ReceiveOptions{Max: 1000, Lease: time.Minute})
		if err != nil {
			return false
		}
		rs := record(msgs)
		if len(rs) > 0 {
			if _, err := c.Ack(context.Background(), "telemetry", rs); err != nil {
				return false
			}
		}
		mu.Lock()
		defer mu.Unlock()
		for d := range ackedSeqs {
			prefix := fmt.Sprintf("k5-%d/", d)
			if d >= devices {
				prefix = fmt.Sprintf("k3-%d/", d)
			}
			for seq := range ackedSeqs[d] {
				if seen[fmt.Sprintf("%s%d", prefix, seq)] == 0 {
					return false
				}
			}
		}
		return true
	})
	mu.Lock()
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	unacked := len(seen) - total // stored, but the device never got the PUBACK (in flight at a kill)
	mu.Unlock()
	// What was in flight at each kill: one publish per device, one received batch of the consumer.
	bound := kills * (devices + v3devices + batch)
	t.Logf("%d PUBACKed messages, all delivered; %d extra deliveries (duplicates), %d stored without PUBACK; bound %d",
		total, dups, unacked, bound)
	if dups+unacked > bound {
		t.Errorf("%d duplicates + %d unacknowledged copies exceed the bound %d", dups, unacked, bound)
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		t.Errorf("graceful shutdown after the test: exit code %d", code)
	}
}

// TestSpareProc: serve adds one P for the queues' fsyncs, and leaves a GOMAXPROCS the user set alone.
func TestSpareProc(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	if _, ok := spareProc("3"); ok || runtime.GOMAXPROCS(0) != before {
		t.Fatalf("GOMAXPROCS=3 set by the user: changed to %d", runtime.GOMAXPROCS(0))
	}
	if n, ok := spareProc(""); !ok || n != before+1 || runtime.GOMAXPROCS(0) != before+1 {
		t.Fatalf("spareProc: %d %v, GOMAXPROCS %d; want %d", n, ok, runtime.GOMAXPROCS(0), before+1)
	}
}
