package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Against Sluice (mochi v2.7.9) the tests subscribe at QoS 0: mochi's Inflight.NextImmediate takes
// a read lock twice, so a QoS 1 subscriber acking while publishers add to its inflight map can
// deadlock the broker.

// TestLoadtestCommand runs scenarios against an in-process Sluice through the CLI, with a
// comparison, the JSON and HTML reports and process sampling.
func TestLoadtestCommand(t *testing.T) {
	a := startApp(t, queuesConfig(t, t.TempDir()))
	broker := "tcp://" + a.MQTTAddr("tcp").String()
	dir := t.TempDir()
	jsonOut, htmlOut := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	pid := strconv.Itoa(os.Getpid())
	code, stdout, stderr := runCLI(t, "loadtest", "--broker", broker, "--compare", broker, "--label", "sluice", "--compare-label", "again",
		"--kind", "fan-in", "--publishers", "3", "--subscribers", "2", "--rate", "300/s", "--qos", "1", "--subscribe-qos", "0",
		"--duration", "700ms", "--pid", pid, "--compare-pid", pid, "--json", jsonOut, "--html", htmlOut)
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	for _, want := range []string{"== fan-in: 3 publishers → 2 subscribers", "again/sluice", "receive rate", "latency p99", "broker peak RSS"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("table lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "running fan-in @ sluice") {
		t.Errorf("no progress on stderr: %q", stderr)
	}
	var rep struct {
		Brokers   []string `json:"brokers"`
		Scenarios []struct {
			Results []struct {
				Sent uint64 `json:"sent"`
				Lost uint64 `json:"lost"`
			} `json:"results"`
			Ratios map[string]float64 `json:"ratios"`
		} `json:"scenarios"`
	}
	data, err := os.ReadFile(jsonOut)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Scenarios) != 1 || len(rep.Scenarios[0].Results) != 2 || rep.Scenarios[0].Results[0].Sent == 0 || rep.Scenarios[0].Ratios["send rate"] == 0 {
		t.Errorf("JSON report: %s", data)
	}
	page, err := os.ReadFile(htmlOut)
	if err != nil || !strings.Contains(string(page), "<svg") || strings.Contains(string(page), "<script") {
		t.Errorf("HTML report: %v", err)
	}
}

// TestLoadtestBridgeQueue: devices publish over MQTT into the bridged topic and the load tester's
// consumers receive and ack over Sluice's HTTP queue API; nothing is lost.
func TestLoadtestBridgeQueue(t *testing.T) {
	a := startApp(t, queuesConfig(t, t.TempDir()))
	code, stdout, stderr := runCLI(t, "loadtest", "--broker", "tcp://"+a.MQTTAddr("tcp").String(), "--kind", "bridge-queue",
		"--queue-api", "http://"+a.HTTPAddr().String(), "--queue-api-key", testAPIKey, "--publishers", "4", "--rate", "200/s",
		"--duration", "700ms", "--consumers", "2", "--queue-wait", "100ms", "--no-progress")
	if code != 0 || !strings.Contains(stdout, "== bridge-queue:") {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	// A wrong key is reported before any load starts.
	code, _, stderr = runCLI(t, "loadtest", "--broker", "tcp://"+a.MQTTAddr("tcp").String(), "--kind", "bridge-queue",
		"--queue-api", "http://"+a.HTTPAddr().String(), "--queue-api-key", "wrong", "--duration", "1s", "--no-progress")
	if code != 1 || !strings.Contains(stderr, "401") {
		t.Errorf("wrong API key: exit %d, %q", code, stderr)
	}
}

// TestLoadtestScenarioFiles runs shortened standard scenario files.
func TestLoadtestScenarioFiles(t *testing.T) {
	a := startApp(t, queuesConfig(t, t.TempDir()))
	broker := "tcp://" + a.MQTTAddr("tcp").String()
	code, stdout, stderr := runCLI(t, "loadtest", "--broker", broker, "--no-progress",
		"--scenario", "../../configs/loadtest/storm.yaml", "--scenario", "../../configs/loadtest/p2p.yaml",
		"--connections", "40", "--pairs", "3", "--rate", "300/s", "--duration", "500ms", "--warmup", "0s", "--subscribe-qos", "0")
	if code != 0 || !strings.Contains(stdout, "== storm: 40 connections at once") || !strings.Contains(stdout, "== p2p: 3 pairs") {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
}

// dropHook drops every Nth publish (QoS 0 traffic of the load tester).
type dropHook struct {
	mqtt.HookBase
	every int64
	n     atomic.Int64
}

func (h *dropHook) ID() string           { return "drop" }
func (h *dropHook) Provides(b byte) bool { return b == mqtt.OnPublish }
func (h *dropHook) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if strings.HasPrefix(pk.TopicName, "sluice-loadtest/") && h.n.Add(1)%h.every == 0 {
		return pk, packets.ErrRejectPacket
	}
	return pk, nil
}

// TestLoadtestLossFailsTheRun: lost messages give exit code 1, so a scenario can gate CI.
func TestLoadtestLossFailsTheRun(t *testing.T) {
	s := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.AddHook(&dropHook{every: 10}, nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := s.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	code, stdout, stderr := runCLI(t, "loadtest", "--broker", "tcp://"+l.Address(), "--kind", "fan-in", "--publishers", "2",
		"--rate", "400/s", "--qos", "0", "--duration", "500ms", "--drain", "200ms", "--no-progress")
	if code != 1 || !strings.Contains(stderr, "messages were lost (") || !strings.Contains(stderr, " in fan-in)") {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
}

func TestLoadtestBadInput(t *testing.T) {
	dir := t.TempDir()
	bad := writeText(t, dir, "s.yaml", "kind: fan-in\nrate: 100/s\npublisherz: 3\n")
	closed := closedPort(t)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"unknown key", []string{"--scenario", bad}, 2, bad + `:3: unknown key "publisherz".`},
		{"bad rate", []string{"--rate", "lots"}, 2, `--rate: rate "lots" is not valid`},
		{"bad duration", []string{"--duration", "1 minute"}, 2, `--duration: duration "1 minute" is not valid`},
		{"bad kind", []string{"--kind", "fan-sideways"}, 2, `kind "fan-sideways" is not a scenario`},
		{"bad broker", []string{"--broker", "http://x:1"}, 2, `has scheme "http"`},
		{"bad pid", []string{"--pid", "999999999"}, 2, "read broker process 999999999"},
		{"compare pid alone", []string{"--compare-pid", "1"}, 2, "--compare-pid needs --compare."},
		{"unreachable", []string{"--broker", closed, "--duration", "1s", "--no-progress"}, 1, "cannot connect to broker " + closed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, append([]string{"loadtest"}, tt.args...)...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.wantErr) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr, tt.wantCode, tt.wantErr)
			}
		})
	}
}
