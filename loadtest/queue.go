package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// QueueMessage is one message received from a work queue.
type QueueMessage struct {
	ID      string `json:"id"`
	Receipt string `json:"receipt"`
	Payload []byte `json:"payload"` // base64 in JSON
	Attempt int    `json:"attempt,omitempty"`
	Topic   string `json:"topic,omitempty"`
}

// QueueConsumer is what the bridge-queue scenario needs from a queue: receive a batch under a
// lease (long-polling up to wait), then ack by receipt. HTTPQueue implements it over Sluice's
// HTTP API; a Go queue client can implement it too.
type QueueConsumer interface {
	Receive(ctx context.Context, max int, wait, lease time.Duration) ([]QueueMessage, error)
	Ack(ctx context.Context, receipts []string) error
}

// HTTPQueue consumes one queue over the HTTP API of DESIGN.md:
// POST {api}/v1/queues/{q}/receive {max, wait_ms, lease_ms} → {"messages": [...]} and
// POST {api}/v1/queues/{q}/ack {"receipts": [...]}.
type HTTPQueue struct {
	base   string
	apiKey string
	client *http.Client
}

// NewHTTPQueue returns a consumer of queue name at api (e.g. http://127.0.0.1:8080). apiKey, when
// not empty, is sent as "Authorization: Bearer KEY". A nil client means one with a 60s timeout.
func NewHTTPQueue(api, name, apiKey string, client *http.Client) *HTTPQueue {
	if client == nil {
		client = &http.Client{Timeout: 60 * time.Second}
	}
	return &HTTPQueue{base: strings.TrimRight(api, "/") + "/v1/queues/" + url.PathEscape(name), apiKey: apiKey, client: client}
}

// Check asks for the queue's description (GET /v1/queues/{q}) without touching its messages, so a
// missing API, queue or key is reported before the load starts.
func (q *HTTPQueue) Check(ctx context.Context) error {
	return q.do(ctx, http.MethodGet, "", "check", nil, nil)
}

// QueueError is a non-2xx answer of the queue API.
type QueueError struct {
	Op     string
	Status int
	Body   string
}

func (e *QueueError) Error() string {
	return fmt.Sprintf("queue API %s answered %d: %s", e.Op, e.Status, e.Body)
}

func (q *HTTPQueue) post(ctx context.Context, op string, in, out any) error {
	return q.do(ctx, http.MethodPost, "/"+op, op, in, out)
}

func (q *HTTPQueue) do(ctx context.Context, method, path, op string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, q.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if q.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+q.apiKey)
	}
	resp, err := q.client.Do(req)
	if err != nil {
		return fmt.Errorf("queue API %s: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("queue API %s: %w", op, err)
	}
	if resp.StatusCode/100 != 2 {
		msg := strings.TrimSpace(string(data))
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return &QueueError{Op: op, Status: resp.StatusCode, Body: msg}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("queue API %s: bad JSON answer: %w", op, err)
	}
	return nil
}

// Receive leases up to max messages, waiting up to wait for the first.
func (q *HTTPQueue) Receive(ctx context.Context, max int, wait, lease time.Duration) ([]QueueMessage, error) {
	var out struct {
		Messages []QueueMessage `json:"messages"`
	}
	in := map[string]int64{"max": int64(max), "wait_ms": wait.Milliseconds(), "lease_ms": lease.Milliseconds()}
	if err := q.post(ctx, "receive", in, &out); err != nil {
		return nil, err
	}
	return out.Messages, nil
}

// Ack acknowledges messages by receipt.
func (q *HTTPQueue) Ack(ctx context.Context, receipts []string) error {
	return q.post(ctx, "ack", map[string][]string{"receipts": receipts}, nil)
}
