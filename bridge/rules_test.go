package bridge

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
		{"a/+", "a/b", true},
		{"a/+", "a", false},
		{"a/+", "a/", true}, // empty level
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
		{"+/+", "a/b", true},
		{"+", "a/b", false},
		{"#", "a/b/c", true},
		{"a/#", "a", true}, // '#' matches the parent level
		{"a/#", "a/b/c", true},
		{"a/#", "b/c", false},
		{"+/#", "a", true},
		{"devices/+/telemetry", "devices/d1/telemetry", true},
		{"devices/+/telemetry", "devices/d1/status", false},
		{"devices/+/telemetry", "devices/d1/telemetry/x", false},
		{"#", "$SYS/broker", false}, // [MQTT-4.7.2-1]
		{"+/broker", "$SYS/broker", false},
		{"$SYS/#", "$SYS/broker", true},
		{"$SYS/+", "$SYS/broker", true},
		{"/a", "/a", true},
		{"+/a", "/a", true},
		{"a//b", "a//b", true},
		{"a/+/b", "a//b", true},
	}
	for _, tt := range tests {
		t.Run(tt.filter+"|"+tt.topic, func(t *testing.T) {
			if got := Match(tt.filter, tt.topic); got != tt.want {
				t.Errorf("Match(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
			}
		})
	}
}

func TestValidateRules(t *testing.T) {
	tests := []struct {
		name    string
		rules   []Rule
		wantErr string // substring; "" = valid
	}{
		{"default rule", []Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}}, ""},
		{"hash", []Rule{{Filter: "#", Queue: "all", MinQoS: 1}}, ""},
		{"empty filter", []Rule{{Filter: "", Queue: "q"}}, "empty"},
		{"hash not last", []Rule{{Filter: "a/#/b", Queue: "q"}}, "last level"},
		{"hash inside level", []Rule{{Filter: "a/b#", Queue: "q"}}, "whole level"},
		{"plus inside level", []Rule{{Filter: "a/b+/c", Queue: "q"}}, "whole level"},
		{"shared", []Rule{{Filter: "$share/g/a/b", Queue: "q"}}, "$share"},
		{"nul", []Rule{{Filter: "a/\x00", Queue: "q"}}, "NUL"},
		{"bad utf8", []Rule{{Filter: "a/\xff", Queue: "q"}}, "UTF-8"},
		{"too long", []Rule{{Filter: strings.Repeat("a", 70000), Queue: "q"}}, "limit"},
		{"no queue", []Rule{{Filter: "a", Queue: ""}}, "queue name is empty"},
		{"qos 3", []Rule{{Filter: "a", Queue: "q", MinQoS: 3}}, "min_qos"},
		{"second bad", []Rule{{Filter: "a", Queue: "q"}, {Filter: "#/x", Queue: "q"}}, "rule 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateRules(tt.rules)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateRules: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ValidateRules = %v, want an error containing %q", err, tt.wantErr)
			}
			if !errors.Is(err, ErrInvalidRule) {
				t.Errorf("error %v does not wrap ErrInvalidRule", err)
			}
		})
	}
}

func TestRoute(t *testing.T) {
	r := newRouter([]Rule{
		{Filter: "devices/+/telemetry", Queue: "telemetry"},
		{Filter: "devices/#", Queue: "all"},
		{Filter: "devices/+/+", Queue: "telemetry"}, // same queue again: once only
		{Filter: "devices/+/alarm", Queue: "alarms", MinQoS: 1},
	})
	tests := []struct {
		topic string
		qos   byte
		want  []string
	}{
		{"devices/d1/telemetry", 0, []string{"telemetry", "all"}},
		{"devices/d1/alarm", 0, []string{"all", "telemetry"}},
		{"devices/d1/alarm", 1, []string{"all", "telemetry", "alarms"}},
		{"other/topic", 2, nil},
		{"devices", 1, []string{"all"}},
	}
	for _, tt := range tests {
		if got := r.route(nil, tt.topic, tt.qos); !slices.Equal(got, tt.want) {
			t.Errorf("route(%q, %d) = %v, want %v", tt.topic, tt.qos, got, tt.want)
		}
	}
	if got, want := r.queues(), []string{"alarms", "all", "telemetry"}; !slices.Equal(got, want) {
		t.Errorf("queues() = %v, want %v", got, want)
	}
}

func BenchmarkMatch(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		Match("devices/+/telemetry", "devices/sensor-00042/telemetry")
	}
}

// matchRef is Match written the obvious way, to fuzz against.
func matchRef(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	f, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, l := range f {
		if l == "#" {
			return true
		}
		if i >= len(tl) || (l != "+" && l != tl[i]) {
			return false
		}
	}
	return len(f) == len(tl)
}

func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{{"a/+/c", "a/b/c"}, {"a/#", "a"}, {"#", "$SYS/x"}, {"+/+", "a//"}, {"a//#", "a/"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		if ValidateFilter(filter) != nil || topic == "" || strings.ContainsAny(topic, "+#") {
			return
		}
		if got, want := Match(filter, topic), matchRef(filter, topic); got != want {
			t.Fatalf("Match(%q, %q) = %v, reference says %v", filter, topic, got, want)
		}
	})
}
