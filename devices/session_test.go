package devices

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// kickHook drops the connection of the client that sends the Nth telemetry publish, before the
// broker acknowledges or delivers it.
type kickHook struct {
	mqtt.HookBase
	at int64
	n  atomic.Int64
}

func (h *kickHook) ID() string           { return "kick" }
func (h *kickHook) Provides(b byte) bool { return b == mqtt.OnPublish }
func (h *kickHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if strings.HasSuffix(pk.TopicName, "/telemetry") && h.n.Add(1) == h.at {
		cl.Stop(errors.New("test: connection dropped before the ack"))
		return pk, packets.ErrRejectPacket
	}
	return pk, nil
}

// TestPersistentSessionResendsUnacked: a QoS 1 publish whose connection dropped before the ack is
// sent again after the reconnect when the session is persistent, so the subscriber sees every
// sequence number; with a clean session that one is missing.
func TestPersistentSessionResendsUnacked(t *testing.T) {
	for _, tt := range []struct {
		proto      Protocol
		persistent bool
	}{{MQTT5, true}, {MQTT311, true}, {MQTT5, false}} {
		t.Run("protocol="+string(tt.proto)+"/persistent="+map[bool]string{true: "yes", false: "no"}[tt.persistent], func(t *testing.T) {
			broker, _ := startBroker(t, brokerOpts{hooks: []mqtt.Hook{&kickHook{at: 5}}})
			rec, _ := subscribe(t, broker, MQTT5, "devices/+/telemetry")
			f, err := NewFleet(Config{Broker: broker, Count: 1, Protocol: tt.proto, QoS: 1, Interval: Duration(20 * time.Millisecond),
				PersistentSession: tt.persistent, Payload: Payload{Kind: PayloadBlob, Size: 32},
				Reconnect: Backoff{Initial: Duration(10 * time.Millisecond), Max: Duration(20 * time.Millisecond)}}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- f.Run(ctx) }()
			seqs := func() map[uint64]bool {
				got := map[uint64]bool{}
				rec.find(func(m Message) bool {
					if st, err := DecodeStamp(m.Payload); err == nil {
						got[st.Seq] = true
					}
					return false
				})
				return got
			}
			waitFor(t, "publishes after the reconnect", 10*time.Second, func() bool { return f.Stats().Reconnects >= 1 && seqs()[10] })
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if got := seqs()[5]; got != tt.persistent {
				t.Errorf("sequence 5 delivered = %v, want %v", got, tt.persistent)
			}
		})
	}
}
