package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/configs"
	"github.com/sluicemq/sluice/mqtt"
	"github.com/sluicemq/sluice/queue"
)

// TestStartUplinks wires a configured uplink to an in-process upstream broker: the queue drains, the
// status endpoint reports it, stop closes it; a bad uplinks section is refused with file and line.
func TestStartUplinks(t *testing.T) {
	up, err := mqtt.New(mqtt.Options{Listeners: []mqtt.Listener{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0", AllowAnonymous: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = up.Shutdown(ctx)
	}()
	text := "queues:\n  declare:\n    outbox: {}\nuplinks:\n  - name: cloud\n    url: mqtt://" + up.Addr("tcp").String() +
		"\n    queue: outbox\n    gateway: gw\n    reconnect: {initial: 10ms, max: 50ms}\n"
	cfg, err := configs.Parse("edge.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	qm, err := queue.Open(filepath.Join(t.TempDir(), "queues"), queue.Options{Queues: map[string]queue.Config{"outbox": {}}})
	if err != nil {
		t.Fatal(err)
	}
	defer qm.Close()
	if _, err := qm.Enqueue(context.Background(), "outbox", []queue.Message{{Topic: "a", QoS: 1, Payload: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	stop, err := startUplinks(context.Background(), cfg, qm, mux, nil, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	// The uplink counts a message as forwarded once the queue has taken its ack (a stale receipt
	// does not count), so the status is polled, not read once after the queue's count.
	type status struct {
		Uplinks []struct {
			Name      string `json:"name"`
			State     string `json:"state"`
			Forwarded int    `json:"forwarded"`
		} `json:"uplinks"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/uplinks", nil))
		var body status
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != 200 || len(body.Uplinks) != 1 ||
			body.Uplinks[0].Name != "cloud" {
			t.Fatalf("GET /v1/uplinks = %d %s", rec.Code, rec.Body)
		}
		if u := body.Uplinks[0]; u.State == "connected" && u.Forwarded == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the message was not forwarded: GET /v1/uplinks = %s", rec.Body)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st, err := qm.Stats("outbox"); err != nil || st.Acked != 1 {
		t.Fatalf("outbox after forwarding: %+v, %v; want the message acked", st, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := stop(ctx); err != nil {
		t.Fatal(err)
	}

	bad, err := configs.Parse("edge.yaml", []byte(strings.Replace(text, "queue: outbox", "queue: nope", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := startUplinks(context.Background(), bad, qm, nil, nil, zerolog.Nop()); err == nil ||
		!strings.HasPrefix(err.Error(), "edge.yaml:7: ") {
		t.Fatalf("unknown queue: err = %v, want edge.yaml:7: ...", err)
	}
}
