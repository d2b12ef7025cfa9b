package mqtt

import (
	"errors"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
)

// reinjector is what the bridge's pipelining does, reduced: it holds every QoS 1 publish back
// (ErrRejectPacket) and re-injects it from another goroutine through Server.InjectPacket.
type reinjector struct {
	mochi.HookBase
	srv *Server
	ch  chan func()
	wg  sync.WaitGroup
}

const reinjectMark = 0x7e57

func (h *reinjector) ID() string           { return "reinjector" }
func (h *reinjector) Provides(b byte) bool { return b == mochi.OnPublish }
func (h *reinjector) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.Mods.MaxSize == reinjectMark {
		pk.Mods.MaxSize = 0
		return pk, nil
	}
	if pk.FixedHeader.Qos != 1 {
		return pk, nil
	}
	pk.Mods.MaxSize = reinjectMark
	h.ch <- func() { _ = h.srv.InjectPacket(cl, pk) }
	return pk, packets.ErrRejectPacket
}

// TestInjectPacket: a publish re-injected through InjectPacket is acked and delivered once, counted
// once in messages_received_total, and the ACL still answers 0x87 for a denied topic.
func TestInjectPacket(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := &reinjector{ch: make(chan func(), 16)}
	srv := startServerWith(t, Options{Registerer: reg, ACL: []ACLRule{{Publish: []string{"ok/#"}, Subscribe: []string{"#"}}}},
		func(s *Server) {
			h.srv = s
			if err := s.AddHook(h, nil); err != nil {
				t.Fatal(err)
			}
		})
	h.wg.Go(func() {
		for f := range h.ch {
			f()
		}
	})
	t.Cleanup(func() { close(h.ch); h.wg.Wait() })
	if err := srv.InjectPacket(nil, packets.Packet{}); !errors.Is(err, ErrInjectNoClient) {
		t.Fatalf("InjectPacket(nil): %v, want ErrInjectNoClient", err)
	}
	addr := srv.Addr("tcp").String()
	sub := mustV5(t, addr, v5opts{id: "sub"})
	sub.sub(t, "ok/#", 1)
	pub := mustV5(t, addr, v5opts{id: "pub"})
	for i := range 3 {
		if r := pub.pub(t, "ok/x", 1, "m"); r.ReasonCode != 0 {
			t.Fatalf("publish %d: reason %#x", i, r.ReasonCode)
		}
	}
	if r := pub.pub(t, "denied/x", 1, "no"); r.ReasonCode != 0x87 {
		t.Fatalf("denied publish: reason %#x, want 0x87", r.ReasonCode)
	}
	for range 3 {
		if p := sub.next(t, 5*time.Second); p == nil || p.Topic != "ok/x" {
			t.Fatalf("subscriber got %v", p)
		}
	}
	sub.none(t, 200*time.Millisecond)
	if v := counterValue(t, reg, "sluice_mqtt_messages_received_total", map[string]string{"qos": "1"}); v != 4 {
		t.Errorf("messages_received_total{qos=1} = %v, want 4 (each publish once)", v)
	}
}
