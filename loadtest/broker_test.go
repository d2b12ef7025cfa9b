package loadtest

import (
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// faultHook injects faults into the load tester's own traffic (topics under sluice-loadtest/ and
// devices/): every Nth publish is dropped, acknowledged but not delivered, delivered twice, or
// delayed. N counts all such publishes in arrival order.
type faultHook struct {
	mqtt.HookBase
	srv         *mqtt.Server
	dropEvery   int64 // packets.ErrRejectPacket: no ack, no delivery
	ignoreEvery int64 // acknowledged, never delivered
	dupEvery    int64 // delivered once more through the inline client
	delayEvery  int64
	delay       time.Duration
	n           atomic.Int64
}

func (h *faultHook) ID() string { return "faults" }
func (h *faultHook) Provides(b byte) bool {
	return b == mqtt.OnPublish
}

func (h *faultHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || !(strings.HasPrefix(pk.TopicName, "sluice-loadtest/") || strings.HasPrefix(pk.TopicName, "devices/")) {
		return pk, nil
	}
	k := h.n.Add(1)
	if h.delayEvery > 0 && k%h.delayEvery == 0 {
		time.Sleep(h.delay) // the injected delay under test, not synchronization
	}
	if h.dropEvery > 0 && k%h.dropEvery == 0 {
		return pk, packets.ErrRejectPacket
	}
	if h.ignoreEvery > 0 && k%h.ignoreEvery == 0 {
		return pk, packets.CodeSuccessIgnore
	}
	if h.dupEvery > 0 && k%h.dupEvery == 0 {
		if err := h.srv.Publish(pk.TopicName, append([]byte(nil), pk.Payload...), false, pk.FixedHeader.Qos); err != nil {
			return pk, err
		}
	}
	return pk, nil
}

// queueHook is a stand-in for the bridge: it appends messages on devices/+/telemetry to memQueue.
type queueHook struct {
	mqtt.HookBase
	q *memQueue
}

func (h *queueHook) ID() string           { return "queue" }
func (h *queueHook) Provides(b byte) bool { return b == mqtt.OnPublished }
func (h *queueHook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if strings.HasPrefix(pk.TopicName, "devices/") && strings.HasSuffix(pk.TopicName, "/telemetry") {
		h.q.put(pk.Payload)
	}
}

type brokerOpts struct {
	faults *faultHook
	queue  *memQueue
	ws     bool
}

type testBroker struct {
	url string
	ws  string
	srv *mqtt.Server
}

func startBroker(tb testing.TB, o brokerOpts) *testBroker {
	tb.Helper()
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 1 << 16
	s := mqtt.New(&mqtt.Options{InlineClient: true, Capabilities: caps, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		tb.Fatal(err)
	}
	if o.faults != nil {
		o.faults.srv = s
		if err := s.AddHook(o.faults, nil); err != nil {
			tb.Fatal(err)
		}
	}
	if o.queue != nil {
		if err := s.AddHook(&queueHook{q: o.queue}, nil); err != nil {
			tb.Fatal(err)
		}
	}
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := s.AddListener(l); err != nil {
		tb.Fatal(err)
	}
	b := &testBroker{url: "tcp://" + l.Address(), srv: s}
	if o.ws {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		if err := s.AddListener(listeners.NewWebsocket(listeners.Config{ID: "ws", Address: addr})); err != nil {
			tb.Fatal(err)
		}
		b.ws = "ws://" + addr
	}
	if err := s.Serve(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return b
}

// memQueue is a minimal in-memory stand-in for Sluice's queue HTTP API (receive with long poll
// and lease, ack by receipt), enough to run the bridge-queue scenario before the real one exists.
type memQueue struct {
	mu      sync.Mutex
	ready   [][]byte
	leased  map[string][]byte
	next    int
	acked   int
	signal  chan struct{}
	dupEach int // deliver every message this many extra times (duplicate injection)
}

func newMemQueue() *memQueue {
	return &memQueue{leased: map[string][]byte{}, signal: make(chan struct{}, 1)}
}

func (q *memQueue) put(p []byte) {
	q.mu.Lock()
	for range 1 + q.dupEach {
		q.ready = append(q.ready, append([]byte(nil), p...))
	}
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *memQueue) handler(name string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/queues/{q}/receive", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("q") != name {
			http.Error(w, `{"error":"no such queue"}`, http.StatusNotFound)
			return
		}
		var in struct {
			Max    int   `json:"max"`
			WaitMS int64 `json:"wait_ms"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Max < 1 {
			http.Error(w, `{"error":"bad request"}`, http.StatusBadRequest)
			return
		}
		deadline := time.Now().Add(time.Duration(in.WaitMS) * time.Millisecond)
		type msg struct {
			ID      string `json:"id"`
			Receipt string `json:"receipt"`
			Payload []byte `json:"payload"`
		}
		var out []msg
		for {
			q.mu.Lock()
			for len(q.ready) > 0 && len(out) < in.Max {
				q.next++
				id := strconv.Itoa(q.next)
				q.leased[id] = q.ready[0]
				out = append(out, msg{ID: id, Receipt: "r" + id, Payload: q.ready[0]})
				q.ready = q.ready[1:]
			}
			q.mu.Unlock()
			if len(out) > 0 || !time.Now().Before(deadline) {
				break
			}
			select {
			case <-q.signal:
			case <-time.After(time.Until(deadline)):
			case <-r.Context().Done():
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"messages": append([]msg{}, out...)})
	})
	mux.HandleFunc("GET /v1/queues/{q}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("q") != name {
			http.Error(w, `{"error":"no such queue"}`, http.StatusNotFound)
			return
		}
		_, _ = io.WriteString(w, `{"name":"`+name+`"}`)
	})
	mux.HandleFunc("POST /v1/queues/{q}/ack", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Receipts []string `json:"receipts"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, `{"error":"bad request"}`, http.StatusBadRequest)
			return
		}
		q.mu.Lock()
		for _, rc := range in.Receipts {
			if _, ok := q.leased[strings.TrimPrefix(rc, "r")]; ok {
				delete(q.leased, strings.TrimPrefix(rc, "r"))
				q.acked++
			}
		}
		q.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"results":[]}`)
	})
	return mux
}

func startQueueAPI(tb testing.TB, q *memQueue, name string) string {
	tb.Helper()
	srv := httptest.NewServer(q.handler(name))
	tb.Cleanup(srv.Close)
	return srv.URL
}
