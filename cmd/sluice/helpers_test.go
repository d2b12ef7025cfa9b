package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/goleak"
)

// binPath is the sluice binary TestMain builds once for the end-to-end tests.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "sluice")
	args := []string{"build", "-o", binPath}
	if raceEnabled {
		args = append(args, "-race") // the test binary's packages are already built with -race: cheap
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build sluice:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		// Goroutines of closed connections may still be on their way out on a loaded machine: a leak is
		// what is still there after a few seconds.
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		var err error
		for range 5 {
			if err = goleak.Find(); err == nil {
				break
			}
			time.Sleep(time.Second)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// runCLI runs `sluice args...` in-process and returns its exit code, stdout and stderr.
func runCLI(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// writeText writes text to dir/name and returns its path.
func writeText(t testing.TB, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testConfig writes a configuration for tests into dir: every listener on 127.0.0.1:0, JSON logs, data
// under dir/data, no bridge rule. mqtt is the YAML of the mqtt section's extra keys (indented by 2).
func testConfig(t testing.TB, dir, mqttExtra string) string {
	t.Helper()
	cfg := fmt.Sprintf(`log: {level: info, format: json}
mqtt:
  listeners:
    - {name: tcp, type: tcp, address: "127.0.0.1:0", allow_anonymous: true}
    - {name: ws, type: ws, address: "127.0.0.1:0", allow_anonymous: true}
%s
http: {address: "127.0.0.1:0"}
data_dir: %s
bridge: {rules: []}
`, mqttExtra, filepath.Join(dir, "data"))
	return writeText(t, dir, "sluice.yaml", cfg)
}

// waitFor polls cond until it is true or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// proc is the sluice binary running as a child process, its stderr parsed as JSON log lines.
type proc struct {
	t    testing.TB
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited and its output is read

	mu     sync.Mutex
	lines  []string
	stdout bytes.Buffer
	code   int
}

func startProc(t testing.TB, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, cmd: exec.Command(binPath, args...), done: make(chan struct{})}
	p.cmd.Stdout = &lockedWriter{mu: &p.mu, w: &p.stdout}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
		err := p.cmd.Wait()
		var ee *exec.ExitError
		p.mu.Lock()
		switch {
		case errors.As(err, &ee):
			p.code = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				p.code = -int(ws.Signal())
			}
		case err != nil:
			p.code = -1000
		}
		p.mu.Unlock()
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("sluice %s stderr:\n%s", strings.Join(args, " "), p.stderr())
		}
	})
	return p
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (p *proc) stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// logLine returns the first JSON log line whose message is msg and that comes after skip such lines.
func (p *proc) findLog(msg string, skip int) (map[string]any, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil || m["message"] != msg {
			continue
		}
		if skip == 0 {
			return m, true
		}
		skip--
	}
	return nil, false
}

// waitLog waits for the (skip+1)-th log line with message msg.
func (p *proc) waitLog(msg string, skip int, timeout time.Duration) map[string]any {
	p.t.Helper()
	var m map[string]any
	waitFor(p.t, timeout, fmt.Sprintf("log line %q", msg), func() bool {
		var ok bool
		m, ok = p.findLog(msg, skip)
		if !ok && p.exited() {
			p.t.Fatalf("sluice exited before logging %q:\n%s", msg, p.stderr())
		}
		return ok
	})
	return m
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// started waits for the "started" line and returns the bound MQTT tcp address and HTTP address.
func (p *proc) started() (mqttAddr, httpAddr string) {
	p.t.Helper()
	m := p.waitLog("started", 0, 60*time.Second)
	ls, _ := m["listeners"].(map[string]any)
	mqttAddr, _ = ls["tcp"].(string)
	httpAddr, _ = m["http"].(string)
	if mqttAddr == "" || httpAddr == "" {
		p.t.Fatalf("started line without addresses: %v", m)
	}
	return mqttAddr, httpAddr
}

// wait waits for the process to exit and returns its exit code (negative: killed by that signal).
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("sluice did not exit within %v", timeout)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.code
}

func (p *proc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// mqttClient is a paho.golang (MQTT 5) client whose received publishes arrive on msgs.
type mqttClient struct {
	c    *paho.Client
	msgs chan *paho.Publish
	lost chan struct{} // closed when the server disconnects it or the connection fails

	once sync.Once
	mu   sync.Mutex
	disc *paho.Disconnect
}

type dialOpts struct {
	user, pass string
	persistent bool // clean start false, session expiry 1 h
}

// dialMQTT connects a client to addr. It returns the CONNACK's error (a refused CONNECT is an error).
func dialMQTT(t testing.TB, addr, id string, o dialOpts) (*mqttClient, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	mc := &mqttClient{msgs: make(chan *paho.Publish, 10000), lost: make(chan struct{})}
	mc.c = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			mc.msgs <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) {
			mc.mu.Lock()
			mc.disc = d
			mc.mu.Unlock()
			mc.once.Do(func() { close(mc.lost) })
		},
		OnClientError: func(error) { mc.once.Do(func() { close(mc.lost) }) },
	})
	cp := &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: !o.persistent}
	if o.persistent {
		exp := uint32(3600)
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &exp}
	}
	if o.user != "" {
		cp.Username, cp.UsernameFlag = o.user, true
		cp.Password, cp.PasswordFlag = []byte(o.pass), true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := mc.c.Connect(ctx, cp); err != nil {
		conn.Close()
		return nil, err
	}
	t.Cleanup(mc.close)
	return mc, nil
}

// close disconnects (if still connected) and waits for the client's goroutines.
func (mc *mqttClient) close() {
	_ = mc.c.Disconnect(&paho.Disconnect{ReasonCode: 0})
	select {
	case <-mc.c.Done():
	case <-time.After(10 * time.Second):
	}
}

func (mc *mqttClient) subscribe(t testing.TB, filter string, qos byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := mc.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	if err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	if len(sa.Reasons) != 1 || sa.Reasons[0] > 2 {
		t.Fatalf("subscribe %s: reason codes %v", filter, sa.Reasons)
	}
}

func (mc *mqttClient) publish(t testing.TB, topic string, qos byte, retain bool, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := mc.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Retain: retain, Payload: []byte(payload)})
	if err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
	if qos > 0 && (resp == nil || resp.ReasonCode >= 0x80) {
		t.Fatalf("publish %s: response %+v", topic, resp)
	}
}

// expect waits for a publish on msgs and checks its topic and payload.
func (mc *mqttClient) expect(t testing.TB, topic, payload string) {
	t.Helper()
	select {
	case m := <-mc.msgs:
		if m.Topic != topic || string(m.Payload) != payload {
			t.Fatalf("received %s %q, want %s %q", m.Topic, m.Payload, topic, payload)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no message on %s within 10s", topic)
	}
}

func (mc *mqttClient) isLost() bool {
	select {
	case <-mc.lost:
		return true
	default:
		return false
	}
}
