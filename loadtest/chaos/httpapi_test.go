package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicemq/sluice/queue/client"
)

// TestHTTPAbuse attacks the queue API: huge bodies, many concurrent long polls, invalid and stale
// receipts, missing and wrong keys. Every refusal is the documented 4xx and changes nothing.
func TestHTTPAbuse(t *testing.T) {
	polls := pick(500, 5000)
	if need := uint64(polls + 500); fileLimit() < need {
		t.Fatalf("%d long polls need %d open files; the limit is %d (raise it: ulimit -n %d)", polls, need, fileLimit(), need)
	}
	dir := t.TempDir()
	b := startBroker(t, writeConfig(t, dir, config{
		dataDir: dir + "/data",
		http: "  api_keys:\n" +
			"    - {name: admin, key: admin-key-chaos-0001, queues: {\"*\": [admin]}}\n" +
			"    - {name: worker, key: worker-key-chaos-0001, queues: {work: [consume]}}\n" +
			"    - {name: feeder, key: feeder-key-chaos-0001, queues: {work: [produce]}}\n",
		queues: "  declare:\n    work: {visibility_timeout: 30s}\n    other: {}\n",
	}))
	var checks, figures []string
	defer func() { report(t, strings.Join(checks, ", "), strings.Join(figures, "; ")) }()
	base := "http://" + b.httpAddr
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: polls + 16}}
	defer hc.CloseIdleConnections()
	admin := &client.Client{BaseURL: base, APIKey: "admin-key-chaos-0001", HTTPClient: hc}
	worker := &client.Client{BaseURL: base, APIKey: "worker-key-chaos-0001", HTTPClient: hc}
	feeder := &client.Client{BaseURL: base, APIKey: "feeder-key-chaos-0001", HTTPClient: hc}
	ctx := context.Background()

	// call does a raw request and returns the status and the error code of the body.
	call := func(method, path, key string, body io.Reader) (int, string) {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(rctx, method, base+path, body)
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		code := ""
		if i := bytes.Index(data, []byte(`"code":"`)); i >= 0 {
			rest := data[i+8:]
			if j := bytes.IndexByte(rest, '"'); j >= 0 {
				code = string(rest[:j])
			}
		}
		return resp.StatusCode, code
	}
	stats := func() client.Stats {
		t.Helper()
		s, err := admin.Stats(ctx, "work")
		if err != nil {
			t.Fatalf("stats: %v", err)
		}
		return s
	}
	same := func(what string, before client.Stats) {
		t.Helper()
		after := stats()
		if after.Ready != before.Ready || after.Leased != before.Leased || after.Enqueued != before.Enqueued ||
			after.Acked != before.Acked || after.Dead != before.Dead {
			t.Errorf("%s changed the queue: before %+v, after %+v", what, before, after)
		}
	}

	// Seed: two messages, one of them leased.
	if _, err := feeder.Send(ctx, "work", []client.NewMessage{{Payload: []byte("a")}, {Payload: []byte("b")}}); err != nil {
		t.Fatalf("send: %v", err)
	}
	leased, err := worker.Receive(ctx, "work", client.ReceiveOptions{Max: 1})
	if err != nil || len(leased) != 1 {
		t.Fatalf("receive: %v, %d messages", err, len(leased))
	}

	// 1. Huge bodies: 413 before the server reads them all, nothing stored.
	{
		before := stats()
		big := bytes.Repeat([]byte("x"), 20<<20)
		body := append(append([]byte(`{"messages":[{"payload":"`), big...), `"}]}`...)
		for _, tc := range []struct {
			name, path, key string
			body            io.Reader
		}{
			{"enqueue of 20 MiB", "/v1/queues/work/messages", "feeder-key-chaos-0001", bytes.NewReader(body)},
			{"enqueue of 20 MiB, chunked", "/v1/queues/work/messages", "feeder-key-chaos-0001", io.MultiReader(bytes.NewReader(body))},
			{"receive of 2 MiB", "/v1/queues/work/receive", "worker-key-chaos-0001", bytes.NewReader(append([]byte(`{"max":1,"x":"`), big[:2<<20]...))},
			{"ack of 2 MiB", "/v1/queues/work/ack", "worker-key-chaos-0001", bytes.NewReader(append([]byte(`{"receipts":["`), big[:2<<20]...))},
		} {
			if code, ecode := call(http.MethodPost, tc.path, tc.key, tc.body); code != http.StatusRequestEntityTooLarge {
				t.Errorf("%s: %d %s, want 413", tc.name, code, ecode)
			}
		}
		same("huge bodies", before)
		checks = append(checks, "huge bodies 413")
	}

	// 2. Malformed requests: 400, nothing changes.
	{
		before := stats()
		for _, tc := range []struct{ name, path, body string }{
			{"bad JSON", "/v1/queues/work/receive", `{"max":`},
			{"unknown field", "/v1/queues/work/receive", `{"max":1,"maxx":2}`},
			{"max out of range", "/v1/queues/work/receive", `{"max":100000}`},
			{"negative wait", "/v1/queues/work/receive", `{"wait_ms":-1}`},
			{"receipts not a list", "/v1/queues/work/ack", `{"receipts":"abc"}`},
		} {
			if code, ecode := call(http.MethodPost, tc.path, "admin-key-chaos-0001", strings.NewReader(tc.body)); code != http.StatusBadRequest {
				t.Errorf("%s: %d %s, want 400", tc.name, code, ecode)
			}
		}
		same("malformed requests", before)
		checks = append(checks, "malformed 400")
	}

	// 3. Invalid and stale receipts: 400 / 409 per receipt, nothing changes; the valid lease holds.
	{
		before := stats()
		for _, op := range []string{"ack", "nack", "extend"} {
			for _, tc := range []struct {
				name, receipt string
				want          error
			}{
				{"garbage", "not-a-receipt", client.ErrInvalidReceipt},
				{"empty", "", nil}, // 400 bad_request for the whole call
				{"forged", strings.Repeat("A", 40), client.ErrInvalidReceipt},
				{"tampered", tamper(leased[0].Receipt), nil}, // invalid or stale, never accepted
			} {
				var errs []error
				var err error
				switch op {
				case "ack":
					errs, err = worker.Ack(ctx, "work", []string{tc.receipt})
				case "nack":
					errs, err = worker.Nack(ctx, "work", []string{tc.receipt}, 0)
				case "extend":
					errs, err = worker.Extend(ctx, "work", []string{tc.receipt}, time.Minute)
				}
				var got error
				if err != nil {
					got = err
				} else if len(errs) == 1 {
					got = errs[0]
				}
				var ce *client.Error
				switch {
				case got == nil:
					t.Errorf("%s with a %s receipt was accepted", op, tc.name)
				case tc.want != nil && !errors.Is(got, tc.want) && !errors.Is(got, client.ErrStaleReceipt):
					t.Errorf("%s with a %s receipt: %v, want %v", op, tc.name, got, tc.want)
				case tc.want == nil && !errors.Is(got, client.ErrInvalidReceipt) && !errors.Is(got, client.ErrStaleReceipt) &&
					!(errors.As(got, &ce) && ce.Status == http.StatusBadRequest):
					t.Errorf("%s with a %s receipt: %v, want a 400 or a refused receipt", op, tc.name, got)
				}
			}
		}
		same("invalid receipts", before)
		// Stale: ack twice; the second is 409 and the other message is untouched.
		if errs, err := worker.Ack(ctx, "work", []string{leased[0].Receipt}); err != nil || errs[0] != nil {
			t.Fatalf("ack: %v %v", err, errs)
		}
		before = stats()
		errs, err := worker.Ack(ctx, "work", []string{leased[0].Receipt})
		if err == nil && len(errs) == 1 {
			err = errs[0]
		}
		if !errors.Is(err, client.ErrStaleReceipt) {
			t.Errorf("second ack of a receipt: %v, want stale", err)
		}
		errs, err = worker.Nack(ctx, "work", []string{leased[0].Receipt}, 0)
		if err == nil && len(errs) == 1 {
			err = errs[0]
		}
		if !errors.Is(err, client.ErrStaleReceipt) {
			t.Errorf("nack of an acked receipt: %v, want stale", err)
		}
		same("stale receipts", before)
		// A lease that expired and was taken by another consumer: the old receipt is stale.
		m1, err := worker.Receive(ctx, "work", client.ReceiveOptions{Max: 1, Lease: 100 * time.Millisecond})
		if err != nil || len(m1) != 1 {
			t.Fatalf("receive: %v %d", err, len(m1))
		}
		var m2 []client.Message
		waitFor(t, 10*time.Second, "the expired lease to be delivered again", func() bool {
			m2, err = worker.Receive(ctx, "work", client.ReceiveOptions{Max: 1, Lease: time.Minute})
			return err == nil && len(m2) == 1
		})
		before = stats()
		errs, err = worker.Ack(ctx, "work", []string{m1[0].Receipt})
		if err == nil && len(errs) == 1 {
			err = errs[0]
		}
		if !errors.Is(err, client.ErrStaleReceipt) || m2[0].ID != m1[0].ID {
			t.Errorf("ack with the receipt of an expired lease: %v (ids %s, %s), want stale", err, m1[0].ID, m2[0].ID)
		}
		same("an expired lease's receipt", before)
		if errs, err := worker.Ack(ctx, "work", []string{m2[0].Receipt}); err != nil || errs[0] != nil {
			t.Errorf("ack with the current receipt: %v %v", err, errs)
		}
		checks = append(checks, "invalid receipts 400, stale 409, nothing changed")
	}

	// 4. Keys: none or wrong → 401; a right the key lacks → 403; nothing changes.
	{
		if _, err := feeder.Send(ctx, "work", []client.NewMessage{{Payload: []byte("c")}}); err != nil {
			t.Fatal(err)
		}
		before := stats()
		for _, tc := range []struct {
			name, method, path, key, body string
			want                          int
		}{
			{"no key", "POST", "/v1/queues/work/receive", "", `{}`, 401},
			{"wrong key", "POST", "/v1/queues/work/receive", "nope", `{}`, 401},
			{"wrong key on purge", "DELETE", "/v1/queues/work/messages", "worker-key-chaos-0002", ``, 401},
			{"almost the key", "POST", "/v1/queues/work/receive", "worker-key-chaos-000l", `{}`, 401},
			{"consume key purges", "DELETE", "/v1/queues/work/messages", "worker-key-chaos-0001", ``, 403},
			{"consume key sends", "POST", "/v1/queues/work/messages", "worker-key-chaos-0001", `{"messages":[{"payload":"eA=="}]}`, 403},
			{"consume key on another queue", "POST", "/v1/queues/other/receive", "worker-key-chaos-0001", `{}`, 403},
			{"produce key receives", "POST", "/v1/queues/work/receive", "feeder-key-chaos-0001", `{}`, 403},
			{"produce key redrives", "POST", "/v1/queues/work/redrive", "feeder-key-chaos-0001", `{}`, 403},
		} {
			if code, ecode := call(tc.method, tc.path, tc.key, strings.NewReader(tc.body)); code != tc.want {
				t.Errorf("%s: %d %s, want %d", tc.name, code, ecode, tc.want)
			}
		}
		same("wrong keys", before)
		checks = append(checks, "no/wrong key 401, missing right 403")
	}

	// 5. Many concurrent long polls on an empty queue: all answer, messages sent meanwhile go to
	// exactly one poll each, and other requests are served meanwhile.
	{
		if _, err := admin.Purge(ctx, "work"); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var answered, failed atomic.Int64
		var mu sync.Mutex
		ids := map[string]int{}
		start := time.Now()
		for range polls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				msgs, err := worker.Receive(rctx, "work", client.ReceiveOptions{Max: 1, Wait: 5 * time.Second, Lease: time.Minute})
				if err != nil {
					failed.Add(1)
					return
				}
				answered.Add(1)
				mu.Lock()
				for _, m := range msgs {
					ids[m.ID]++
				}
				mu.Unlock()
			}()
		}
		// While they wait: stats and a send are served promptly.
		time.Sleep(time.Second) // let the polls arrive: load, not synchronisation (checked below)
		t0 := time.Now()
		_ = stats()
		statsLat := time.Since(t0)
		const sent = 50
		batch := make([]client.NewMessage, sent)
		for i := range batch {
			batch[i] = client.NewMessage{Payload: []byte(fmt.Sprint(i))}
		}
		if _, err := feeder.Send(ctx, "work", batch); err != nil {
			t.Fatalf("send during long polls: %v", err)
		}
		wg.Wait()
		took := time.Since(start)
		if failed.Load() > 0 {
			t.Errorf("long polls: %d of %d failed", failed.Load(), polls)
		}
		dups, got := 0, 0
		for _, n := range ids {
			got++
			dups += n - 1
		}
		// Polls that had ended before the send leave messages ready; count those too.
		rest, err := worker.Receive(ctx, "work", client.ReceiveOptions{Max: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if got+len(rest) != sent || dups != 0 {
			t.Errorf("long polls: %d messages delivered to polls (+%d left), %d duplicates; want %d, 0", got, len(rest), dups, sent)
		}
		if statsLat > 2*time.Second {
			t.Errorf("stats took %v with %d long polls pending", statsLat, polls)
		}
		checks = append(checks, fmt.Sprintf("%d concurrent long polls", polls))
		figures = append(figures, fmt.Sprintf("%d long polls answered in %v, %d got one of %d sent, stats with them pending %v, broker RSS %d MiB",
			answered.Load(), took.Round(time.Millisecond), got, sent, statsLat.Round(time.Millisecond), b.rss()>>20))
	}

	if err := b.healthy(); err != nil {
		t.Fatal(err)
	}
	checks = append(checks, "/healthz 200")
	b.stop()
}

// tamper changes one character in the middle of a receipt.
func tamper(r string) string {
	if r == "" {
		return "x"
	}
	b := []byte(r)
	i := len(b) / 2
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}
