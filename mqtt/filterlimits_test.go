package mqtt

import (
	"strings"
	"testing"
)

// TestSubscribeFilterLimits: MaxTopicLength and MaxTopicLevels hold for SUBSCRIBE filters too. A
// filter over them gets 0x8F (topic filter invalid) and receives nothing; filters within them in the
// same connection keep working.
func TestSubscribeFilterLimits(t *testing.T) {
	srv := startServer(t, Options{Limits: Limits{MaxTopicLevels: 4, MaxTopicLength: 64}})
	addr := srv.Addr("tcp").String()
	c := mustV5(t, addr, v5opts{id: "filters"})
	for _, tc := range []struct {
		name, filter string
		ok           bool
	}{
		{"within", "a/b/c/#", true},
		{"shared within", "$share/g/a/b/c/d", true},
		{"too deep", "a/b/c/d/e", false},
		{"shared too deep", "$share/g/a/b/c/d/e", false},
		{"too long", strings.Repeat("x", 65), false},
	} {
		sa := c.sub(t, tc.filter, 1)
		if sa == nil || len(sa.Reasons) != 1 {
			t.Fatalf("%s: SUBACK %+v", tc.name, sa)
		}
		if got := sa.Reasons[0]; tc.ok && got != 1 || !tc.ok && got != 0x8F {
			t.Errorf("%s: SUBACK reason %#x for %q, want %v", tc.name, got, tc.filter, map[bool]string{true: "0x01", false: "0x8f"}[tc.ok])
		}
	}
	// The connection goes on: the allowed filter delivers.
	c.pub(t, "a/b/c/d", 1, "hello")
	if m := c.next(t, 5e9); m.Topic != "a/b/c/d" {
		t.Fatalf("got %q", m.Topic)
	}
}
