package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// config is what a scenario changes in the broker's configuration; the rest is written by
// writeConfig: listeners on 127.0.0.1:0, JSON logs at info, data under dataDir.
type config struct {
	dataDir string
	limits  string // YAML lines under mqtt.limits, indented by 4
	mqtt    string // extra YAML lines under mqtt, indented by 2
	http    string // extra YAML lines under http, indented by 2
	queues  string // YAML of the queues section's body, indented by 2
	bridge  bool   // the rule devices/+/telemetry → telemetry
}

// writeConfig writes c into dir/sluice.yaml and returns its path.
func writeConfig(t testing.TB, dir string, c config) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("log: {level: info, format: json}\nmqtt:\n")
	b.WriteString("  listeners:\n    - {name: tcp, type: tcp, address: \"127.0.0.1:0\", allow_anonymous: true}\n")
	b.WriteString("  sys_interval: 1h\n")
	if c.limits != "" {
		b.WriteString("  limits:\n" + c.limits)
	}
	b.WriteString(c.mqtt)
	b.WriteString("http:\n  address: \"127.0.0.1:0\"\n" + c.http)
	fmt.Fprintf(&b, "data_dir: %s\n", c.dataDir)
	if c.queues != "" {
		b.WriteString("queues:\n" + c.queues)
	}
	if c.bridge {
		b.WriteString("bridge: {rules: [{filter: devices/+/telemetry, queue: telemetry, min_qos: 0}]}\n")
	} else {
		b.WriteString("bridge: {rules: []}\n")
	}
	p := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// broker is one run of `sluice serve` as a child process.
type broker struct {
	t    testing.TB
	cmd  *exec.Cmd
	done chan struct{} // closed when the process exited and its stderr is read

	mqttAddr, httpAddr string

	mu     sync.Mutex
	lines  []string // stderr, JSON log lines, the last 2000
	code   int      // exit code; negative: killed by that signal
	status string   // how it ended, for messages
}

// startBroker starts the binary on cfgPath and waits for its "started" log line. It fails the test
// if the process exits before (a start that fails on corruption lands here).
func startBroker(t testing.TB, cfgPath string) *broker {
	t.Helper()
	b, err := tryStartBroker(t, cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func tryStartBroker(t testing.TB, cfgPath string) (*broker, error) {
	b := &broker{t: t, cmd: exec.Command(st.bin, "serve", "--config", cfgPath), done: make(chan struct{})}
	stderr, err := b.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	b.cmd.Stdout = io.Discard
	if err := b.cmd.Start(); err != nil {
		return nil, err
	}
	started := make(chan map[string]any, 1)
	go func() {
		defer close(b.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			b.mu.Lock()
			b.lines = append(b.lines, line)
			if len(b.lines) > 2000 {
				b.lines = b.lines[1000:]
			}
			b.mu.Unlock()
			if !sent && strings.Contains(line, `"started"`) {
				var m map[string]any
				if json.Unmarshal([]byte(line), &m) == nil && m["message"] == "started" {
					started <- m
					sent = true
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		err := b.cmd.Wait()
		b.mu.Lock()
		b.status = "exit 0"
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			b.code = ee.ExitCode()
			b.status = ee.Error()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				b.code = -int(ws.Signal())
			}
		} else if err != nil {
			b.code, b.status = -1000, err.Error()
		}
		b.mu.Unlock()
	}()
	t.Cleanup(b.kill)
	select {
	case m := <-started:
		ls, _ := m["listeners"].(map[string]any)
		b.mqttAddr, _ = ls["tcp"].(string)
		b.httpAddr, _ = m["http"].(string)
		if b.mqttAddr == "" || b.httpAddr == "" {
			b.kill()
			return nil, fmt.Errorf("started line without addresses: %v", m)
		}
		return b, nil
	case <-b.done:
		return nil, fmt.Errorf("sluice exited before it started (%s):\n%s", b.exitStatus(), b.stderr(40))
	case <-time.After(60 * time.Second):
		b.kill()
		return nil, fmt.Errorf("sluice did not log \"started\" within 60s:\n%s", b.stderr(40))
	}
}

// kill sends SIGKILL (if the process still runs) and waits for it to end.
func (b *broker) kill() {
	select {
	case <-b.done:
		return
	default:
	}
	_ = b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.done
}

// stop sends SIGTERM and waits for a graceful exit; it fails the test on any other exit code.
func (b *broker) stop() {
	b.t.Helper()
	if b.alive() {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-b.done:
	case <-time.After(30 * time.Second):
		b.kill()
		b.t.Errorf("sluice did not stop within 30s of SIGTERM")
		return
	}
	if code := b.exitCode(); code != 0 {
		b.t.Errorf("sluice exited with %s after SIGTERM:\n%s", b.exitStatus(), b.stderr(40))
	}
}

func (b *broker) alive() bool {
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

func (b *broker) exitCode() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.code
}

func (b *broker) exitStatus() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status
}

// stderr returns the last n log lines.
func (b *broker) stderr(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.lines
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// pid is the process id of the broker.
func (b *broker) pid() int { return b.cmd.Process.Pid }

// rss returns the broker's resident set size in bytes (VmRSS of /proc/PID/status).
func (b *broker) rss() int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", b.pid()))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// url returns the HTTP URL of path on the broker's admin listener.
func (b *broker) url(path string) string { return "http://" + b.httpAddr + path }

// healthy reports whether the process runs and /healthz answers 200.
func (b *broker) healthy() error {
	if !b.alive() {
		return fmt.Errorf("sluice is not running (%s):\n%s", b.exitStatus(), b.stderr(40))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.url("/healthz"), nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return fmt.Errorf("/healthz: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/healthz answered %d", resp.StatusCode)
	}
	return nil
}

// metrics scrapes /metrics and returns each sample by its full name with labels, as printed
// (e.g. `sluice_mqtt_dropped_messages_total{reason="slow_subscriber_qos0"}`).
func (b *broker) metrics() (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.url("/metrics"), nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics answered %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// metric returns one sample from /metrics (0 when absent), failing the test when the scrape fails.
func (b *broker) metric(t testing.TB, name string) float64 {
	t.Helper()
	m, err := b.metrics()
	if err != nil {
		t.Fatalf("scrape /metrics: %v", err)
	}
	return m[name]
}

// httpClient is the suite's HTTP client for health and metrics (bounded by each call's ctx).
var httpClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableKeepAlives: true}}

// waitFor polls cond every 10ms until it is true or timeout passes, then fails the test.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// poll polls cond every 10ms until it is true (true) or timeout passes (false).
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}
