package mqtt

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"
)

func TestPersistenceAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	opts := Options{StorageDir: dir}
	srv := startServer(t, opts)
	addr := srv.Addr("tcp").String()

	sub := mustV5(t, addr, v5opts{id: "p-sub", expiry: 3600})
	sub.sub(t, "p/#", 1)
	if err := sub.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	v3, err := dialV3(t, addr, "p-v3", "", "", false)
	if err != nil {
		t.Fatal(err)
	}
	if tok := v3.Subscribe("p/#", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("v3 subscribe: %v", tok.Error())
	}
	v3.Disconnect(100)

	pub := mustV5(t, addr, v5opts{id: "p-pub"})
	const n = 10
	for i := range n {
		pub.pub(t, "p/x", 1, fmt.Sprint(i))
	}
	ctxPub(t, pub, &paho.Publish{Topic: "ret/a", QoS: 1, Retain: true, Payload: []byte("kept")})
	pub.Disconnect(&paho.Disconnect{})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	srv2 := startServer(t, opts)
	addr = srv2.Addr("tcp").String()
	sub2, ca, err := dialV5(t, addr, v5opts{id: "p-sub", expiry: 3600})
	if err != nil {
		t.Fatal(err)
	}
	if !ca.SessionPresent {
		t.Fatal("session not present after restart")
	}
	var got bytes.Buffer
	for range n {
		got.Write(sub2.next(t, 5*time.Second).Payload)
	}
	if got.Len() != n {
		t.Fatalf("after restart got %q", got.String())
	}
	// The subscription survived too: a new message arrives.
	pub2 := mustV5(t, addr, v5opts{id: "p-pub2"})
	pub2.pub(t, "p/y", 1, "new")
	if p := sub2.next(t, 5*time.Second); string(p.Payload) != "new" {
		t.Fatalf("got %q, want new", p.Payload)
	}

	// MQTT 3.1.1 persistent session: the 10 queued + "new" arrive. (Wait until "new" is queued:
	// mochi routes to the session object it looked up, so a takeover racing with routing can miss
	// a message.)
	waitFor(t, 5*time.Second, "11 messages queued for the v3 session", func() bool {
		cl, ok := srv2.mochi.Clients.Get("p-v3")
		return ok && cl.State.Inflight.Len() == n+1
	})
	recv := make(chan string, 100)
	o := v3opts(addr, "p-v3")
	o.SetDefaultPublishHandler(func(_ pahov3Client, m pahov3Message) { recv <- string(m.Payload()) })
	c3 := connectV3(t, o)
	_ = c3
	for i := range n + 1 {
		select {
		case <-recv:
		case <-time.After(5 * time.Second):
			t.Fatalf("v3 session got %d of %d messages after restart", i, n+1)
		}
	}

	// Retained message survived.
	r := mustV5(t, addr, v5opts{id: "p-ret"})
	r.sub(t, "ret/#", 0)
	if p := r.next(t, 5*time.Second); string(p.Payload) != "kept" {
		t.Fatalf("retained after restart: %q", p.Payload)
	}
}

func TestSlowSubscriber(t *testing.T) {
	for _, policy := range []string{PolicyDrop, PolicyDisconnect} {
		t.Run("policy="+policy, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			srv := startServer(t, Options{
				Limits:     Limits{MaxPendingWrites: 8},
				Slow:       SlowSubscribers{Policy: policy, DisconnectAfter: 300 * time.Millisecond},
				Registerer: reg,
			})
			addr := srv.Addr("tcp").String()
			// A subscriber that never reads.
			nc := rawConnect(t, addr, 5, "stuck")
			sub := []byte{0x82, 0, 0, 1, 0, 0, 6, 's', 'l', 'o', 'w', '/', '#', 0}
			sub[1] = byte(len(sub) - 2)
			if _, err := nc.Write(sub); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "subscription", func() bool {
				return counterValue(t, reg, "sluice_mqtt_subscriptions", nil) == 1
			})
			pub := mustV5(t, addr, v5opts{id: "fast"})
			payload := string(make([]byte, 64<<10))
			deadline := time.Now().Add(30 * time.Second)
			for counterValue(t, reg, "sluice_mqtt_dropped_messages_total", map[string]string{"reason": dropSlowQoS0}) == 0 {
				if time.Now().After(deadline) {
					t.Fatal("no drop counted for a subscriber that never reads")
				}
				for range 20 {
					pub.pub(t, "slow/x", 0, payload)
				}
			}
			if policy == PolicyDisconnect {
				deadline := time.Now().Add(30 * time.Second)
				for counterValue(t, reg, "sluice_mqtt_slow_subscriber_disconnects_total", nil) == 0 {
					if time.Now().After(deadline) {
						t.Fatal("slow subscriber not disconnected")
					}
					pub.pub(t, "slow/x", 0, payload)
				}
			}
			// The publisher was never held up: a QoS 1 publish is acked at once.
			if r := pub.pub(t, "other", 1, "x"); r.ReasonCode >= 0x80 {
				t.Fatalf("QoS 1 publish: %#x", r.ReasonCode)
			}
		})
	}
}

func TestStorageErrors(t *testing.T) {
	t.Run("dir is a file", func(t *testing.T) {
		f := t.TempDir() + "/file"
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		srv, err := New(Options{StorageDir: f, Listeners: []Listener{{Name: "tcp", Type: TypeTCP, Address: "127.0.0.1:0"}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(); err == nil || !strings.Contains(err.Error(), f) {
			t.Fatalf("Start: %v, want an error naming %s", err, f)
		}
		_ = srv.Shutdown(context.Background())
	})
	t.Run("dir in use", func(t *testing.T) {
		dir := t.TempDir()
		startServer(t, Options{StorageDir: dir})
		srv, err := New(Options{StorageDir: dir, Listeners: []Listener{{Name: "tcp", Type: TypeTCP, Address: "127.0.0.1:0"}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(); err == nil || !strings.Contains(err.Error(), dir) {
			t.Fatalf("Start on a storage dir in use: %v, want an error naming it", err)
		}
		_ = srv.Shutdown(context.Background())
	})
}
