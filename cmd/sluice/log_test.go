package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestNewLogger(t *testing.T) {
	for _, tt := range []struct {
		level, format string
		json          bool
	}{
		{"info", "json", true},
		{"debug", "auto", true}, // a buffer is not a terminal
		{"warn", "console", false},
	} {
		var buf bytes.Buffer
		log, err := newLogger(&buf, tt.level, tt.format)
		if err != nil {
			t.Fatal(err)
		}
		log.Info().Str("component", "test").Msg("hello")
		line := strings.TrimSpace(buf.String())
		var m map[string]any
		isJSON := json.Unmarshal([]byte(line), &m) == nil
		switch {
		case tt.level == "warn" && line != "":
			t.Errorf("level warn logged an info line: %q", line)
		case tt.level != "warn" && isJSON != tt.json:
			t.Errorf("format %s: line %q, JSON %v", tt.format, line, isJSON)
		case tt.json && (m["message"] != "hello" || m["level"] != "info" || m["time"] == nil):
			t.Errorf("format %s: line %q", tt.format, line)
		}
	}
	var buf bytes.Buffer
	log, _ := newLogger(&buf, "warn", "console")
	log.Warn().Msg("careful")
	if s := buf.String(); !strings.Contains(s, "careful") || strings.HasPrefix(s, "{") {
		t.Errorf("console line %q", s)
	}
	for _, bad := range []string{"", "loud", "fatal", "panic", "disabled"} {
		if _, err := newLogger(&buf, bad, "json"); err == nil {
			t.Errorf("level %q accepted", bad)
		}
	}
}
