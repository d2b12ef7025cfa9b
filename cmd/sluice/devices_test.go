package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDevicesCommand runs `sluice devices` against an in-process Sluice with the default bridge
// rule: the telemetry lands in the queue.
func TestDevicesCommand(t *testing.T) {
	a := startApp(t, queuesConfig(t, t.TempDir()))
	broker := "tcp://" + a.MQTTAddr("tcp").String()
	code, _, stderr := runCLI(t, "devices", "--broker", broker, "--count", "5", "--interval", "50ms", "--qos", "1",
		"--duration", "1s", "--payload", "gps", "--status-interval", "200ms", "--status-topic", "devices/{id}/status")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !regexp.MustCompile(`connected 5/5 +published \d+`).MatchString(stderr) {
		t.Errorf("no status line with all devices connected:\n%s", stderr)
	}
	m := regexp.MustCompile(`5 devices for .*: published (\d+) .*acked (\d+), errors 0, reconnects 0`).FindStringSubmatch(stderr)
	if m == nil || m[1] == "0" || m[1] != m[2] {
		t.Fatalf("summary missing or wrong:\n%s", stderr)
	}
	st, err := apiClient(a.HTTPAddr().String()).Stats(context.Background(), "telemetry")
	if err != nil {
		t.Fatal(err)
	}
	if want := m[1]; st.Enqueued == 0 || want != strconv.FormatUint(st.Enqueued, 10) {
		t.Errorf("queue telemetry enqueued %d, devices had %s acked", st.Enqueued, want)
	}
}

// closedPort is a tcp:// URL on which nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return "tcp://" + addr
}

// TestDevicesFleetFileAndOverride: a fleet file runs as written, and a flag given on the command
// line overrides its key.
func TestDevicesFleetFileAndOverride(t *testing.T) {
	a := startApp(t, queuesConfig(t, t.TempDir()))
	fleet := filepath.Join(t.TempDir(), "fleet.yaml")
	yaml := "broker: tcp://" + a.MQTTAddr("tcp").String() + "\ncount: 2\ninterval: 50ms\nqos: 1\nduration: 500ms\nprotocol: \"3.1.1\"\n"
	if err := os.WriteFile(fleet, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, "devices", "--fleet", fleet, "--quiet")
	if code != 0 || !strings.Contains(stderr, "sluice devices: 2 devices for") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	code, _, stderr = runCLI(t, "devices", "--fleet", fleet, "--count", "3", "--quiet")
	if code != 0 || !strings.Contains(stderr, "sluice devices: 3 devices for") || strings.Contains(stderr, "connected ") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

func TestDevicesBadInput(t *testing.T) {
	dir := t.TempDir()
	fleet := writeText(t, dir, "fleet.yaml", "count: 2\nintervall: 1s\n")
	badDur := writeText(t, dir, "dur.yaml", "count: 2\ninterval: often\n")
	closed := closedPort(t)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"unknown key", []string{"--fleet", fleet}, 2, fleet + `:2: unknown key "intervall".`},
		{"bad duration in file", []string{"--fleet", badDur}, 2, badDur + `:2: duration "often" is not valid`},
		{"bad duration flag", []string{"--interval", "soon"}, 2, `--interval: duration "soon" is not valid`},
		{"bad rate flag", []string{"--connect-rate", "fast"}, 2, `--connect-rate: rate "fast" is not valid`},
		{"bad protocol", []string{"--protocol", "6"}, 2, `protocol "6" is not supported`},
		{"bad qos", []string{"--qos", "3"}, 2, "--qos 3 must be 0, 1 or 2."},
		{"bad payload", []string{"--payload", "xml"}, 2, `payload "xml" is not a profile`},
		{"missing fleet file", []string{"--fleet", filepath.Join(dir, "none.yaml")}, 2, "cannot read fleet file"},
		{"unreachable broker", []string{"--broker", closed, "--count", "3"}, 1, "cannot connect to broker " + closed},
		{"stray argument", []string{"extra"}, 2, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, append([]string{"devices"}, tt.args...)...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.wantErr) {
				t.Fatalf("exit %d, stderr %q; want exit %d and %q", code, stderr, tt.wantCode, tt.wantErr)
			}
			if tt.wantCode == 1 && strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("want one sentence, got %q", stderr)
			}
		})
	}
}
