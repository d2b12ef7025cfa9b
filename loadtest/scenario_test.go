package loadtest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicemq/sluice/devices"
)

func TestParseScenario(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string
		check   func(t *testing.T, s Scenario)
	}{
		{name: "defaults", yaml: "kind: fan-out\n", check: func(t *testing.T, s Scenario) {
			if s.Publishers != 1 || s.Subscribers != 100 || s.Rate != 1000 || s.Mode != Open || s.PayloadSize != 64 ||
				time.Duration(s.Duration) != 10*time.Second || s.Name != "fan-out" {
				t.Errorf("defaults: %+v", s)
			}
		}},
		{name: "bridge defaults", yaml: "kind: bridge-queue\nqueue: {consumers: 2}\n", check: func(t *testing.T, s Scenario) {
			if s.Queue.API != "http://127.0.0.1:8080" || s.Queue.Name != "telemetry" || s.Queue.Consumers != 2 || s.Topic != "devices/{id}/telemetry" {
				t.Errorf("bridge defaults: %+v", s)
			}
		}},
		{name: "closed mode has no rate", yaml: "kind: p2p\nmode: closed\npairs: 3\n", check: func(t *testing.T, s Scenario) {
			if s.Rate != 0 || s.Pairs != 3 {
				t.Errorf("closed: %+v", s)
			}
		}},
		{name: "unknown key", yaml: "kind: fan-in\npublisher: 3\n", wantErr: `s.yaml:2: unknown key "publisher"`},
		{name: "bad duration", yaml: "kind: fan-in\n\nduration: forever\n", wantErr: `s.yaml:3: duration "forever" is not valid`},
		{name: "bad rate", yaml: "rate: 10/fortnight\n", wantErr: `s.yaml:1: rate "10/fortnight" is not valid`},
		{name: "bad kind", yaml: "name: x\nkind: fan-sideways\n", wantErr: `s.yaml:2: kind "fan-sideways" is not a scenario`},
		{name: "bad mode", yaml: "mode: sometimes\n", wantErr: `s.yaml:1: mode "sometimes" must be open or closed`},
		{name: "bad inflight", yaml: "kind: fan-in\ninflight: 100000\n", wantErr: "s.yaml:2: inflight 100000 must be between"},
		{name: "warmup too long", yaml: "duration: 1s\nwarmup: 2s\n", wantErr: "s.yaml:2: warmup 2s must be shorter"},
		{name: "bad queue api", yaml: "kind: bridge-queue\nqueue:\n  api: ftp://x\n", wantErr: `s.yaml:3: queue.api "ftp://x" must be an http`},
		{name: "unknown queue key", yaml: "kind: bridge-queue\nqueue:\n  url: http://x\n", wantErr: `s.yaml:3: unknown key "url"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseScenario("s.yaml", []byte(tt.yaml))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				tt.check(t, s)
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrConfig) {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestStandardScenarioFiles keeps configs/loadtest/*.yaml loadable.
func TestStandardScenarioFiles(t *testing.T) {
	files, err := filepath.Glob("../configs/loadtest/*.yaml")
	if err != nil || len(files) < 7 {
		t.Fatalf("want the standard scenarios in configs/loadtest, got %v %v", files, err)
	}
	kinds := map[Kind]bool{}
	for _, f := range files {
		s, err := LoadScenario(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		kinds[s.Kind] = true
	}
	for _, k := range []Kind{FanIn, FanOut, P2P, Shared, Idle, Storm, Bridge} {
		if !kinds[k] {
			t.Errorf("no standard scenario of kind %s", k)
		}
	}
	if _, err := LoadScenario(filepath.Join(t.TempDir(), "none.yaml")); err == nil {
		t.Error("missing file accepted")
	}
	_ = os.ReadFile
	_ = devices.MQTT5
}

func FuzzParseScenario(f *testing.F) {
	f.Add([]byte("kind: fan-in\nrate: 100/s\n"))
	f.Add([]byte("kind: bridge-queue\nqueue: {api: http://x, batch: 0}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseScenario("fuzz.yaml", data)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("not a config error: %v", err)
			}
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("parsed scenario does not validate: %v", err)
		}
	})
}
