package loadtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/sluicemq/sluice/devices"
	"github.com/sluicemq/sluice/mqtt"
)

// startSluice runs Sluice's MQTT broker in-process on 127.0.0.1:0 (tcp and ws) and returns its
// URLs. With a user, anonymous clients are refused.
func startSluice(t *testing.T, user, pass string) (tcpURL, wsURL string) {
	t.Helper()
	opts := mqtt.Options{Listeners: []mqtt.Listener{
		{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0", AllowAnonymous: user == ""},
		{Name: "ws", Type: "ws", Address: "127.0.0.1:0", AllowAnonymous: user == ""},
	}}
	if user != "" {
		h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		opts.Users = []mqtt.User{{Username: user, PasswordHash: string(h)}}
	}
	s, err := mqtt.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return "tcp://" + s.Addr("tcp").String(), "ws://" + s.Addr("ws").String()
}

// TestAgainstSluice is a short real run of the messaging scenarios against Sluice's broker, with
// QoS 1 subscriptions (Sluice switches off mochi's deadlocking send quota).
func TestAgainstSluice(t *testing.T) {
	tcp, ws := startSluice(t, "", "")
	q1 := func() *devices.QoS { q := devices.QoS(1); return &q }
	short := dur(600 * time.Millisecond)
	for _, tt := range []struct {
		sc     Scenario
		broker string
	}{
		{Scenario{Kind: FanIn, Publishers: 4, Subscribers: 1, Rate: 400, QoS: 1, SubscribeQoS: q1(), Duration: short}, tcp},
		{Scenario{Kind: FanOut, Publishers: 1, Subscribers: 4, Rate: 100, QoS: 1, SubscribeQoS: q1(), Duration: short}, ws},
		{Scenario{Kind: P2P, Pairs: 3, Rate: 300, QoS: 1, SubscribeQoS: q1(), Duration: short, Protocol: devices.MQTT311}, ws},
		{Scenario{Kind: Shared, Publishers: 2, Subscribers: 2, Rate: 200, QoS: 1, SubscribeQoS: q1(), Duration: short}, tcp},
		{Scenario{Kind: Storm, Connections: 50, Duration: dur(100 * time.Millisecond)}, tcp},
	} {
		sc := tt.sc.WithDefaults()
		t.Run(sc.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			res, err := Run(ctx, sc, Target{Broker: tt.broker}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if !res.OK() || res.Duplicates != 0 {
				t.Fatalf("lost %d, dups %d, problems %v", res.Lost, res.Duplicates, res.Problems)
			}
			if sc.Kind != Storm && (res.Unique == 0 || res.Unique != res.Expected || res.Acked != res.Sent) {
				t.Errorf("sent %d acked %d expected %d unique %d", res.Sent, res.Acked, res.Expected, res.Unique)
			}
		})
	}
}

// TestSluiceRefusesCredentials: refused credentials stop the run before any load, with a
// ConnectError that says so.
func TestSluiceRefusesCredentials(t *testing.T) {
	tcp, _ := startSluice(t, "lt", "right")
	for _, k := range []Kind{FanIn, Idle} {
		_, err := Run(context.Background(), Scenario{Kind: k, Username: "lt", Password: "wrong", Duration: dur(time.Second), Connections: 5, Publishers: 2},
			Target{Broker: tcp}, Options{})
		if !errors.Is(err, devices.ErrRefused) {
			t.Errorf("%s: %v, want a refused connection", k, err)
		}
	}
	res, err := Run(context.Background(), testScenario(Scenario{Kind: FanIn, Username: "lt", Password: "right", Publishers: 2, Rate: 100, Duration: dur(300 * time.Millisecond)}),
		Target{Broker: tcp}, Options{})
	if err != nil || !res.OK() {
		t.Fatalf("with the right password: %v %+v", err, res)
	}
}
