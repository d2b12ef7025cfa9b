package devices

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(childBrokerEnv) == "1" {
		runChildBroker()
		return
	}
	goleak.VerifyTestMain(m)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(tb testing.TB, what string, d time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recorder is a subscriber that remembers what it got.
type recorder struct {
	mu   sync.Mutex
	msgs []Message
}

func (r *recorder) add(m Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m.Payload = append([]byte(nil), m.Payload...)
	r.msgs = append(r.msgs, m)
}

func (r *recorder) find(pred func(Message) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if pred(m) {
			n++
		}
	}
	return n
}

func subscribe(tb testing.TB, broker string, proto Protocol, filters ...string) (*recorder, *Client) {
	tb.Helper()
	u, err := ParseBroker(broker)
	if err != nil {
		tb.Fatal(err)
	}
	r := &recorder{}
	c, err := Dial(context.Background(), ClientOptions{Broker: u, Protocol: proto, ClientID: "observer", CleanSession: true, ReceiveMaximum: 1000, OnMessage: r.add})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	for _, f := range filters {
		// QoS 0: mochi v2.7.9's Inflight.NextImmediate read-locks twice, so a QoS 1 subscriber that
		// acks while publishers add to its inflight map can deadlock the in-process broker.
		if err := c.Subscribe(context.Background(), f, 0); err != nil {
			tb.Fatal(err)
		}
	}
	return r, c
}

func TestFleetEndToEnd(t *testing.T) {
	for _, proto := range []Protocol{MQTT5, MQTT311} {
		t.Run("protocol="+string(proto), func(t *testing.T) {
			broker, _ := startBroker(t, brokerOpts{})
			rec, obs := subscribe(t, broker, MQTT5, "devices/+/telemetry", "devices/+/status", "devices/+/commands/reply")
			f, err := NewFleet(Config{
				Broker: broker, Count: 4, Protocol: proto, QoS: 1, Interval: Duration(20 * time.Millisecond), Jitter: Duration(5 * time.Millisecond),
				StatusTopic: "devices/{id}/status", CommandTopic: "devices/{id}/commands", ConnectRate: 200,
			}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- f.Run(ctx) }()

			for _, id := range []string{"dev-1", "dev-2", "dev-3", "dev-4"} {
				waitFor(t, id+" telemetry", 10*time.Second, func() bool {
					return rec.find(func(m Message) bool {
						st, err := DecodeStamp(m.Payload)
						return err == nil && st.ID == id && st.Seq >= 3 && m.Topic == "devices/"+id+"/telemetry"
					}) > 0
				})
			}
			waitFor(t, "online status", 5*time.Second, func() bool {
				return rec.find(func(m Message) bool { return strings.Contains(string(m.Payload), `"online"`) }) == 4
			})
			if err := obs.Publish(context.Background(), Message{Topic: "devices/dev-2/commands", Payload: []byte("reboot"), QoS: 1}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "command reply", 5*time.Second, func() bool {
				return rec.find(func(m Message) bool {
					return m.Topic == "devices/dev-2/commands/reply" && strings.Contains(string(m.Payload), `"command":"reboot"`)
				}) == 1
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			waitFor(t, "offline status", 5*time.Second, func() bool {
				return rec.find(func(m Message) bool { return strings.Contains(string(m.Payload), `"offline"`) }) == 4
			})
			s := f.Stats()
			if s.Devices != 4 || s.Connected != 0 || s.Published < 12 || s.Acked == 0 || s.Acked > s.Published || s.Commands != 1 || s.Errors != 0 {
				t.Errorf("stats = %+v", s)
			}
			if err := f.Run(context.Background()); !errors.Is(err, ErrClosed) {
				t.Errorf("second Run = %v, want ErrClosed", err)
			}
		})
	}
}

func TestFleetRefusedAndUnreachable(t *testing.T) {
	broker, _ := startBroker(t, brokerOpts{user: "u", pass: "right"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "tcp://" + ln.Addr().String()
	_ = ln.Close()
	tests := []struct {
		name        string
		cfg         Config
		wantRefused bool
	}{
		{"bad password v5", Config{Broker: broker, Username: "u", Password: "wrong", Count: 3}, true},
		{"bad password v3", Config{Broker: broker, Username: "u", Password: "wrong", Count: 3, Protocol: MQTT311}, true},
		{"unreachable v5", Config{Broker: closed, Count: 3}, false},
		{"unreachable v3", Config{Broker: closed, Count: 3, Protocol: MQTT311}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := NewFleet(tt.cfg, Options{})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err = f.Run(ctx)
			var ce *ConnectError
			if !errors.As(err, &ce) || errors.Is(err, ErrRefused) != tt.wantRefused {
				t.Fatalf("Run = %v (refused=%v), want a ConnectError with refused=%v", err, errors.Is(err, ErrRefused), tt.wantRefused)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one sentence: %q", err)
			}
		})
	}
	f, err := NewFleet(Config{Broker: broker, Username: "u", Password: "right", Count: 2, Idle: true}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	waitFor(t, "authenticated devices", 5*time.Second, func() bool { return f.Stats().Connected == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestFleetFlapsAndReconnects(t *testing.T) {
	for _, proto := range []Protocol{MQTT5, MQTT311} {
		t.Run("protocol="+string(proto), func(t *testing.T) {
			broker, _ := startBroker(t, brokerOpts{})
			rec, _ := subscribe(t, broker, MQTT5, "devices/+/status")
			f, err := NewFleet(Config{
				Broker: broker, Count: 2, Protocol: proto, Idle: true, StatusTopic: "devices/{id}/status",
				Flaps: Flaps{Every: Duration(60 * time.Millisecond), Down: Duration(10 * time.Millisecond), Fraction: 1},
			}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- f.Run(ctx) }()
			waitFor(t, "reconnects after flaps", 10*time.Second, func() bool { s := f.Stats(); return s.Reconnects >= 4 && s.Flaps >= 4 })
			// A flap drops the connection without DISCONNECT: the broker publishes the will.
			waitFor(t, "will after a flap", 5*time.Second, func() bool {
				return rec.find(func(m Message) bool { return strings.Contains(string(m.Payload), `"offline"`) }) >= 1
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestFleetReconnectsAfterBrokerLoss(t *testing.T) {
	broker, srv := startBroker(t, brokerOpts{})
	f, err := NewFleet(Config{Broker: broker, Count: 3, Idle: true, Reconnect: Backoff{Initial: Duration(10 * time.Millisecond), Max: Duration(50 * time.Millisecond)}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	waitFor(t, "connected", 5*time.Second, func() bool { return f.Stats().Connected == 3 })
	for _, cl := range srv.Clients.GetAll() {
		cl.Stop(errors.New("test kick"))
	}
	waitFor(t, "reconnected", 10*time.Second, func() bool { s := f.Stats(); return s.Reconnects >= 3 && s.Connected == 3 })
	if s := f.Stats(); s.Errors < 3 {
		t.Errorf("lost connections not counted as errors: %+v", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestBackoff(t *testing.T) {
	f, err := NewFleet(Config{Reconnect: Backoff{Initial: Duration(100 * time.Millisecond), Max: Duration(time.Second), Multiplier: 2, Jitter: 0.1}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := f.newDevice(1)
	for attempt, base := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 30: time.Second} {
		for range 50 {
			got := d.backoff(attempt)
			if got < base*9/10 || got > base*11/10 {
				t.Fatalf("backoff(%d) = %v, want %v ± 10%%", attempt, got, base)
			}
		}
	}
}

func TestClientAsyncPublishAcks(t *testing.T) {
	broker, _ := startBroker(t, brokerOpts{})
	u, _ := ParseBroker(broker)
	for _, proto := range []Protocol{MQTT5, MQTT311} {
		t.Run("protocol="+string(proto), func(t *testing.T) {
			c, err := Dial(context.Background(), ClientOptions{Broker: u, Protocol: proto, ClientID: "async-" + string(proto), CleanSession: true, MaxInflight: 16})
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			acked, failed := 0, 0
			for i := range 500 {
				err := c.PublishAsync(context.Background(), Message{Topic: "t/async", Payload: []byte{byte(i)}, QoS: byte(1 + i%2)}, func(err error) {
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						failed++
					} else {
						acked++
					}
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "acks", 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return acked+failed == 500 })
			if failed != 0 {
				t.Errorf("%d publishes failed", failed)
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if err := c.Close(); !errors.Is(err, ErrClosed) {
				t.Errorf("second Close = %v", err)
			}
			if err := c.Publish(context.Background(), Message{Topic: "x", QoS: 1}); !errors.Is(err, ErrClosed) {
				t.Errorf("Publish after Close = %v", err)
			}
		})
	}
}

// TestPersistentSessionKeepsCommands: with a persistent session, a command sent while the device
// is down (a flap) is delivered by the broker when it reconnects, and answered.
func TestPersistentSessionKeepsCommands(t *testing.T) {
	for _, proto := range []Protocol{MQTT5, MQTT311} {
		t.Run("protocol="+string(proto), func(t *testing.T) {
			broker, _ := startBroker(t, brokerOpts{})
			rec, obs := subscribe(t, broker, MQTT5, "devices/+/commands/reply")
			f, err := NewFleet(Config{Broker: broker, Count: 1, Protocol: proto, Idle: true, PersistentSession: true,
				CommandTopic: "devices/{id}/commands", Flaps: Flaps{Every: Duration(100 * time.Millisecond), Down: Duration(400 * time.Millisecond), Fraction: 1}}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- f.Run(ctx) }()
			waitFor(t, "a flap", 10*time.Second, func() bool { s := f.Stats(); return s.Flaps >= 1 && s.Connected == 0 })
			if err := obs.Publish(context.Background(), Message{Topic: "devices/dev-1/commands", Payload: []byte("while-away"), QoS: 1}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the queued command answered after reconnecting", 10*time.Second, func() bool {
				return rec.find(func(m Message) bool { return strings.Contains(string(m.Payload), "while-away") }) >= 1
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}
