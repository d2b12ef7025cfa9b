package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/sluicemq/sluice/queue"
	"github.com/sluicemq/sluice/queue/httpapi"
	"github.com/sluicemq/sluice/queue/httpapi/httpapitest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	m   *queue.Manager
	h   *httpapi.Handler
	srv *httptest.Server
	reg *prometheus.Registry
}

func testQueueConfig() queue.Config {
	return queue.Config{
		VisibilityTimeout: 30 * time.Second,
		MaxAttempts:       2,
		Backoff:           queue.Backoff{Initial: 10 * time.Millisecond, Multiplier: 1, Max: 10 * time.Millisecond},
		Sync:              "none",
	}
}

func newEnv(t testing.TB, keys []httpapi.Key) *env {
	t.Helper()
	m, err := queue.Open(t.TempDir(), queue.Options{Queues: map[string]queue.Config{
		"jobs":  testQueueConfig(),
		"other": testQueueConfig(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close manager: %v", err)
		}
	})
	reg := prometheus.NewRegistry()
	h, srv := httpapitest.Serve(t, m, httpapi.Options{Keys: keys, Registerer: reg, MaxBodyBytes: 64 << 10})
	return &env{m: m, h: h, srv: srv, reg: reg}
}

type answer struct {
	status int
	body   []byte
}

func (a answer) code() string {
	var eb struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	_ = json.Unmarshal(a.body, &eb)
	return eb.Error.Code
}

func (e *env) call(t testing.TB, method, path, key, body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, b}
}

func (e *env) decode(t testing.TB, a answer, want int, v any) {
	t.Helper()
	if a.status != want {
		t.Fatalf("status %d, want %d; body %s", a.status, want, a.body)
	}
	if v != nil {
		if err := json.Unmarshal(a.body, v); err != nil {
			t.Fatalf("decode %s: %v", a.body, err)
		}
	}
}

type wireMsg struct {
	ID         string    `json:"id"`
	Receipt    string    `json:"receipt"`
	Attempt    int       `json:"attempt"`
	EnqueuedAt time.Time `json:"enqueued_at"`
	Topic      string    `json:"topic"`
	ClientID   string    `json:"client_id"`
	QoS        byte      `json:"qos"`
	Properties struct {
		ContentType    string `json:"content_type"`
		UserProperties []struct {
			Key, Value string
		} `json:"user_properties"`
	} `json:"properties"`
	Payload []byte `json:"payload"`
}

func (e *env) receive(t testing.TB, q, body string) []wireMsg {
	t.Helper()
	var out struct{ Messages []wireMsg }
	e.decode(t, e.call(t, "POST", "/v1/queues/"+q+"/receive", "", body), 200, &out)
	return out.Messages
}

func TestEnqueueReceiveAck(t *testing.T) {
	e := newEnv(t, nil)
	var enq struct{ IDs []string }
	e.decode(t, e.call(t, "POST", "/v1/queues/jobs/messages", "",
		`{"messages":[{"topic":"t/1","client_id":"c1","qos":1,"payload":"aGVsbG8=","properties":{"content_type":"text/plain","user_properties":[{"key":"k","value":"v"}]}},{"payload":""}]}`),
		201, &enq)
	if len(enq.IDs) != 2 {
		t.Fatalf("ids %v", enq.IDs)
	}
	msgs := e.receive(t, "jobs", `{"max":10,"wait_ms":1000,"lease_ms":60000}`)
	if len(msgs) != 2 {
		t.Fatalf("received %d messages, want 2", len(msgs))
	}
	m := msgs[0]
	if m.ID != enq.IDs[0] || m.Topic != "t/1" || m.ClientID != "c1" || m.QoS != 1 || string(m.Payload) != "hello" ||
		m.Attempt != 1 || m.Receipt == "" || m.EnqueuedAt.IsZero() || m.Properties.ContentType != "text/plain" ||
		len(m.Properties.UserProperties) != 1 || m.Properties.UserProperties[0].Key != "k" {
		t.Errorf("message %+v does not carry what was sent", m)
	}
	var st struct {
		Ready, Leased int64
	}
	e.decode(t, e.call(t, "GET", "/v1/queues/jobs", "", ""), 200, &st)
	if st.Ready != 0 || st.Leased != 2 {
		t.Errorf("stats %+v, want 0 ready 2 leased", st)
	}
	var res struct {
		Results []struct {
			Receipt string
			OK      bool
		}
	}
	e.decode(t, e.call(t, "POST", "/v1/queues/jobs/ack", "", fmt.Sprintf(`{"receipts":[%q,%q]}`, msgs[0].Receipt, msgs[1].Receipt)), 200, &res)
	if len(res.Results) != 2 || !res.Results[0].OK || !res.Results[1].OK || res.Results[0].Receipt != msgs[0].Receipt {
		t.Errorf("ack results %+v", res)
	}
	// Acking again: every receipt is stale → 409, per receipt.
	a := e.call(t, "POST", "/v1/queues/jobs/ack", "", fmt.Sprintf(`{"receipts":[%q]}`, msgs[0].Receipt))
	if a.status != http.StatusConflict || !strings.Contains(string(a.body), "stale_receipt") {
		t.Errorf("second ack: %d %s, want 409 with stale_receipt", a.status, a.body)
	}
	var list struct {
		Queues []struct {
			Name  string
			Acked uint64
		}
	}
	e.decode(t, e.call(t, "GET", "/v1/queues", "", ""), 200, &list)
	if len(list.Queues) != 2 || list.Queues[0].Name != "jobs" || list.Queues[0].Acked != 2 {
		t.Errorf("list %+v", list)
	}
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		found = found || mf.GetName() == "sluice_http_requests_total"
	}
	if !found {
		t.Error("no sluice_http_requests_total series")
	}
}

func TestReceiveWaitsForMessages(t *testing.T) {
	e := newEnv(t, nil)
	// Nothing ready and no wait: an empty list at once.
	if msgs := e.receive(t, "jobs", `{}`); len(msgs) != 0 {
		t.Fatalf("got %d messages from an empty queue", len(msgs))
	}
	got := make(chan []wireMsg, 1)
	go func() {
		var out struct{ Messages []wireMsg }
		a := e.call(t, "POST", "/v1/queues/jobs/receive", "", `{"wait_ms":20000,"max":5}`)
		_ = json.Unmarshal(a.body, &out)
		got <- out.Messages
	}()
	if _, err := e.m.Enqueue(context.Background(), "jobs", []queue.Message{{Payload: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	select {
	case msgs := <-got:
		if len(msgs) != 1 || string(msgs[0].Payload) != "x" {
			t.Fatalf("long poll got %+v", msgs)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("long poll did not return the enqueued message")
	}
}

func TestCloseEndsLongPolls(t *testing.T) {
	e := newEnv(t, nil)
	done := make(chan answer, 1)
	go func() { done <- e.call(t, "POST", "/v1/queues/jobs/receive", "", `{"wait_ms":20000}`) }()
	// Wait until the poll is pending (its request counted as in flight is not observable; poll stats instead).
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.h.Close()
		select {
		case a := <-done:
			if a.status != 200 {
				t.Fatalf("closed long poll answered %d %s", a.status, a.body)
			}
			return
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("long poll still pending 5s after Close")
		}
	}
}

func TestReceiptErrors(t *testing.T) {
	e := newEnv(t, nil)
	for _, q := range []string{"jobs", "other"} {
		if _, err := e.m.Enqueue(context.Background(), q, []queue.Message{{Payload: []byte(q)}, {Payload: []byte(q)}}); err != nil {
			t.Fatal(err)
		}
	}
	jobs := e.receive(t, "jobs", `{"max":2}`)
	other := e.receive(t, "other", `{"max":2}`)
	if len(jobs) != 2 || len(other) != 2 {
		t.Fatalf("received %d and %d", len(jobs), len(other))
	}
	// A batch mixing a good, a foreign and a garbage receipt: 200, answered per receipt.
	var res struct {
		Results []struct {
			Receipt string
			OK      bool
			Error   *struct{ Code string }
		}
	}
	e.decode(t, e.call(t, "POST", "/v1/queues/jobs/ack", "", fmt.Sprintf(`{"receipts":[%q,%q,"garbage"]}`, jobs[0].Receipt, other[0].Receipt)), 200, &res)
	if len(res.Results) != 3 || !res.Results[0].OK || res.Results[1].OK || res.Results[1].Error == nil ||
		res.Results[1].Error.Code != "invalid_receipt" || res.Results[2].Error == nil || res.Results[2].Error.Code != "invalid_receipt" {
		t.Fatalf("mixed ack results %+v", res)
	}
	// Only foreign receipts: 400.
	if a := e.call(t, "POST", "/v1/queues/jobs/ack", "", fmt.Sprintf(`{"receipts":[%q]}`, other[1].Receipt)); a.status != 400 {
		t.Errorf("foreign-only ack: %d %s, want 400", a.status, a.body)
	}
	// The foreign receipt changed nothing in its own queue: it can still be acked there.
	e.decode(t, e.call(t, "POST", "/v1/queues/other/ack", "", fmt.Sprintf(`{"receipts":[%q]}`, other[1].Receipt)), 200, nil)
	// nack and extend answer per receipt too.
	e.decode(t, e.call(t, "POST", "/v1/queues/jobs/extend", "", fmt.Sprintf(`{"receipts":[%q],"lease_ms":60000}`, jobs[1].Receipt)), 200, nil)
	e.decode(t, e.call(t, "POST", "/v1/queues/jobs/nack", "", fmt.Sprintf(`{"receipts":[%q],"delay_ms":0}`, jobs[1].Receipt)), 200, nil)
	if a := e.call(t, "POST", "/v1/queues/jobs/extend", "", fmt.Sprintf(`{"receipts":[%q],"lease_ms":1000}`, jobs[1].Receipt)); a.status != 409 {
		t.Errorf("extend of a nacked receipt: %d %s, want 409", a.status, a.body)
	}
}

func TestBadInput(t *testing.T) {
	admin, consumer, producer := "admin-secret", "consumer-secret", "producer-secret"
	mustRights := func(names ...string) httpapi.Rights {
		r, err := httpapi.ParseRights(names)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	keys := []httpapi.Key{
		{Name: "admin", SHA256: httpapi.HashToken(admin), Queues: map[string]httpapi.Rights{"*": mustRights("admin")}},
		{Name: "consumer", SHA256: httpapi.HashToken(consumer), Queues: map[string]httpapi.Rights{"jobs": mustRights("consume")}},
		{Name: "producer", SHA256: httpapi.HashToken(producer), Queues: map[string]httpapi.Rights{"jobs": mustRights("produce")}},
	}
	e := newEnv(t, keys)
	if _, err := e.m.Enqueue(context.Background(), "jobs", []queue.Message{{Payload: []byte("a")}, {Payload: []byte("b")}}); err != nil {
		t.Fatal(err)
	}
	var out struct{ Messages []wireMsg }
	e.decode(t, e.call(t, "POST", "/v1/queues/jobs/receive", consumer, `{"max":1,"lease_ms":60000}`), 200, &out)
	leased := out.Messages[0].Receipt
	before, err := e.m.Stats("jobs")
	if err != nil {
		t.Fatal(err)
	}

	many := func(n int) string {
		rs := make([]string, n)
		for i := range rs {
			rs[i] = `"r"`
		}
		return `{"receipts":[` + strings.Join(rs, ",") + `]}`
	}
	manyMsgs := `{"messages":[` + strings.TrimSuffix(strings.Repeat(`{"payload":""},`, 1001), ",") + `]}`
	tests := []struct {
		name, method, path, key, body string
		status                        int
		code                          string
	}{
		{"no key", "GET", "/v1/queues", "", "", 401, "unauthorized"},
		{"wrong key", "GET", "/v1/queues/jobs", "nope", "", 401, "unauthorized"},
		{"wrong key on receive", "POST", "/v1/queues/jobs/receive", "admin-secreT", `{}`, 401, "unauthorized"},
		{"consumer cannot produce", "POST", "/v1/queues/jobs/messages", consumer, `{"messages":[{"payload":""}]}`, 403, "forbidden"},
		{"producer cannot consume", "POST", "/v1/queues/jobs/receive", producer, `{}`, 403, "forbidden"},
		{"consumer cannot purge", "DELETE", "/v1/queues/jobs/messages", consumer, "", 403, "forbidden"},
		{"consumer cannot redrive", "POST", "/v1/queues/jobs/redrive", consumer, `{}`, 403, "forbidden"},
		{"consumer cannot read dead", "GET", "/v1/queues/jobs/dead", consumer, "", 403, "forbidden"},
		{"no rights on other queue", "POST", "/v1/queues/other/receive", consumer, `{}`, 403, "forbidden"},
		{"bad json", "POST", "/v1/queues/jobs/receive", consumer, `{"max":`, 400, "bad_json"},
		{"wrong type", "POST", "/v1/queues/jobs/receive", consumer, `{"max":"ten"}`, 400, "bad_json"},
		{"unknown field", "POST", "/v1/queues/jobs/receive", consumer, `{"max":1,"maxx":2}`, 400, "unknown_field"},
		{"trailing data", "POST", "/v1/queues/jobs/receive", consumer, `{"max":1} {}`, 400, "bad_json"},
		{"max too big", "POST", "/v1/queues/jobs/receive", consumer, `{"max":1001}`, 400, "bad_request"},
		{"max zero", "POST", "/v1/queues/jobs/receive", consumer, `{"max":0}`, 400, "bad_request"},
		{"wait too long", "POST", "/v1/queues/jobs/receive", consumer, `{"wait_ms":20001}`, 400, "bad_request"},
		{"negative wait", "POST", "/v1/queues/jobs/receive", consumer, `{"wait_ms":-1}`, 400, "bad_request"},
		{"zero lease", "POST", "/v1/queues/jobs/receive", consumer, `{"lease_ms":0}`, 400, "bad_request"},
		{"unknown queue", "POST", "/v1/queues/nope/receive", admin, `{}`, 404, "queue_not_found"},
		{"unknown queue stats", "GET", "/v1/queues/nope", admin, "", 404, "queue_not_found"},
		{"unknown queue ack", "POST", "/v1/queues/nope/ack", admin, `{"receipts":["x"]}`, 404, "queue_not_found"},
		{"unknown queue enqueue", "POST", "/v1/queues/nope/messages", admin, `{"messages":[{"payload":""}]}`, 404, "queue_not_found"},
		{"invalid queue name", "GET", "/v1/queues/..%2f..", admin, "", 404, ""},
		{"no receipts", "POST", "/v1/queues/jobs/ack", consumer, `{"receipts":[]}`, 400, "bad_request"},
		{"empty receipt", "POST", "/v1/queues/jobs/ack", consumer, `{"receipts":[""]}`, 400, "bad_request"},
		{"too many receipts", "POST", "/v1/queues/jobs/ack", consumer, many(1001), 400, "batch_too_large"},
		{"garbage receipt", "POST", "/v1/queues/jobs/ack", consumer, `{"receipts":["garbage"]}`, 400, ""},
		{"delay on ack", "POST", "/v1/queues/jobs/ack", consumer, `{"receipts":["x"],"delay_ms":5}`, 400, "unknown_field"},
		{"negative delay", "POST", "/v1/queues/jobs/nack", consumer, `{"receipts":["x"],"delay_ms":-5}`, 400, "bad_request"},
		{"extend without lease", "POST", "/v1/queues/jobs/extend", consumer, `{"receipts":["x"]}`, 400, "bad_request"},
		{"extend zero lease", "POST", "/v1/queues/jobs/extend", consumer, `{"receipts":["x"],"lease_ms":0}`, 400, "bad_request"},
		{"no messages", "POST", "/v1/queues/jobs/messages", producer, `{"messages":[]}`, 400, "bad_request"},
		{"too many messages", "POST", "/v1/queues/jobs/messages", producer, manyMsgs, 400, "batch_too_large"},
		{"bad base64", "POST", "/v1/queues/jobs/messages", producer, `{"messages":[{"payload":"!!"}]}`, 400, "bad_json"},
		{"qos 3", "POST", "/v1/queues/jobs/messages", producer, `{"messages":[{"payload":"","qos":3}]}`, 400, "bad_request"},
		{"body too large", "POST", "/v1/queues/jobs/messages", producer, `{"messages":[{"payload":"` + strings.Repeat("QUFB", 30000) + `"}]}`, 413, "body_too_large"},
		{"receive body too large", "POST", "/v1/queues/jobs/receive", consumer, `{"max":1` + strings.Repeat(" ", 2<<20) + `}`, 413, "body_too_large"},
		{"dead max", "GET", "/v1/queues/jobs/dead?max=0", admin, "", 400, "bad_request"},
		{"dead unknown param", "GET", "/v1/queues/jobs/dead?limit=3", admin, "", 400, "unknown_field"},
		{"redrive unknown field", "POST", "/v1/queues/jobs/redrive", admin, `{"all":true}`, 400, "unknown_field"},
		{"no endpoint", "POST", "/v1/queues/jobs/frobnicate", admin, `{}`, 404, "not_found"},
		{"wrong method", "PUT", "/v1/queues/jobs", admin, `{}`, 404, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := e.call(t, tt.method, tt.path, tt.key, tt.body)
			if a.status != tt.status {
				t.Fatalf("status %d, want %d; body %s", a.status, tt.status, a.body)
			}
			if !json.Valid(a.body) {
				t.Fatalf("body is not JSON: %s", a.body)
			}
			if tt.code != "" && a.code() != tt.code && !strings.Contains(string(a.body), `"code":"`+tt.code+`"`) {
				t.Errorf("body %s, want code %q", a.body, tt.code)
			}
		})
	}
	after, err := e.m.Stats("jobs")
	if err != nil {
		t.Fatal(err)
	}
	if after.Ready != before.Ready || after.Leased != before.Leased || after.Enqueued != before.Enqueued ||
		after.Acked != before.Acked || after.Nacked != before.Nacked || after.Dead != before.Dead {
		t.Errorf("bad requests changed the queue: before %+v after %+v", before, after)
	}
	// The leased message is still leased to its consumer.
	e.decode(t, e.call(t, "POST", "/v1/queues/jobs/ack", consumer, fmt.Sprintf(`{"receipts":[%q]}`, leased)), 200, nil)
	// And the right keys work.
	e.decode(t, e.call(t, "POST", "/v1/queues/jobs/messages", producer, `{"messages":[{"payload":""}]}`), 201, nil)
	e.decode(t, e.call(t, "GET", "/v1/queues/other", admin, ""), 200, nil)
	var list struct{ Queues []struct{ Name string } }
	e.decode(t, e.call(t, "GET", "/v1/queues", consumer, ""), 200, &list)
	if len(list.Queues) != 1 || list.Queues[0].Name != "jobs" {
		t.Errorf("consumer key lists %+v, want only jobs", list.Queues)
	}
}

func TestQueueFullIs429(t *testing.T) {
	m, err := queue.Open(t.TempDir(), queue.Options{Queues: map[string]queue.Config{"small": {MaxMessages: 1, Sync: "none"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	h, err := httpapi.New(m, httpapi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	body := `{"messages":[{"payload":""}]}`
	for i, want := range []int{201, 429} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/queues/small/messages", bytes.NewBufferString(body)))
		if rec.Code != want {
			t.Fatalf("enqueue %d: %d %s, want %d", i, rec.Code, rec.Body, want)
		}
	}
}

func FuzzRequestBodies(f *testing.F) {
	for _, s := range []string{`{}`, `{"max":3,"wait_ms":0}`, `{"receipts":["a","b"]}`, `{"receipts":["a"],"delay_ms":1}`,
		`{"messages":[{"payload":"AA=="}]}`, `{"ids":["x"]}`, `[`, `null`, `{"max":1e9}`} {
		f.Add(s)
	}
	e := newEnv(f, nil)
	paths := []string{"receive", "ack", "nack", "extend", "messages", "redrive"}
	f.Fuzz(func(t *testing.T, body string) {
		for _, p := range paths {
			rec := httptest.NewRecorder()
			e.h.ServeHTTP(rec, httptest.NewRequest("POST", "/v1/queues/other/"+p, strings.NewReader(body)))
			if rec.Code >= 500 {
				t.Fatalf("%s %q: %d %s", p, body, rec.Code, rec.Body)
			}
			if !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%s %q: body not JSON: %s", p, body, rec.Body)
			}
		}
	})
}
