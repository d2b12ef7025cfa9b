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
	client *http.Client
}

// NewHTTPQueue returns a consumer of queue name at api (e.g. http://127.0.0.1:8080). A nil client
// means one with a 30s timeout on top of the long-poll wait.
func NewHTTPQueue(api, name string, client *http.Client) *HTTPQueue {
	if client == nil {
		client = &http.Client{Timeout: 60 * time.Second}
	}
	return &HTTPQueue{base: strings.TrimRight(api, "/") + "/v1/queues/" + url.PathEscape(name), client: client}
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
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, q.base+"/"+op, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
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
