package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sluicemq/sluice/queue/api"
)

// Client calls the queue HTTP API. The zero value is not usable: set BaseURL.
// A Client is safe for concurrent use.
type Client struct {
	BaseURL    string       // e.g. "http://127.0.0.1:8080"
	APIKey     string       // sent as "Authorization: Bearer <APIKey>" when not empty
	HTTPClient *http.Client // nil → a shared client without timeout (calls are bounded by their ctx), 32 idle connections per host
}

// defaultHTTPClient keeps more idle connections per host than http.DefaultClient (2): a Consumer
// runs receives, acks and extends at once, and reconnecting for each would cost a round trip or more.
var defaultHTTPClient = func() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 32
	return &http.Client{Transport: t}
}()

// Sentinels matched by errors.Is against an *Error (by its code) or a per-receipt error.
var (
	ErrNotFound       = errors.New("client: queue not found")
	ErrStaleReceipt   = errors.New("client: stale receipt")
	ErrInvalidReceipt = errors.New("client: invalid receipt")
	ErrFull           = errors.New("client: queue full")
	ErrUnauthorized   = errors.New("client: unauthorized")
	ErrForbidden      = errors.New("client: forbidden")
)

// Error is an error answered by the server.
type Error struct {
	Status  int    // HTTP status; 0 for a per-receipt result
	Code    string // e.g. "queue_not_found", "stale_receipt", "bad_json"
	Message string
}

func (e *Error) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("queue api: %s: %s", e.Code, e.Message)
	}
	return fmt.Sprintf("queue api: %d %s: %s", e.Status, e.Code, e.Message)
}

// Is matches the package's sentinels by code.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Code == "queue_not_found"
	case ErrStaleReceipt:
		return e.Code == "stale_receipt"
	case ErrInvalidReceipt:
		return e.Code == "invalid_receipt"
	case ErrFull:
		return e.Code == "queue_full"
	case ErrUnauthorized:
		return e.Code == "unauthorized"
	case ErrForbidden:
		return e.Code == "forbidden"
	}
	return false
}

// The wire types of the API have one home, queue/api, shared with the server; these aliases
// keep the client's names.
type (
	// UserProperty is an MQTT 5 user property.
	UserProperty = api.UserProperty
	// Properties are the MQTT 5 properties a message was published with.
	Properties = api.Properties
	// Message is a delivered message. Receipt identifies this delivery (lease) for Ack, Nack and
	// Extend; ID is stable across deliveries, so handlers can be idempotent.
	Message = api.Message
	// DeadLetter is a message moved to a queue's dead-letter queue.
	DeadLetter = api.DeadLetter
	// Record is what a Message and a DeadLetter share; its fields are promoted.
	Record = api.Record
	// NewMessage is a message to enqueue.
	NewMessage = api.NewMessage
	// Stats describe a queue.
	Stats = api.Stats
)

// ReceiveOptions tune a Receive call. Zero fields take the server's defaults.
type ReceiveOptions struct {
	Max   int           // messages, 1..1000; 0 → 1
	Wait  time.Duration // long-poll up to this long for the first message (≤ 20s); 0 → answer at once
	Lease time.Duration // 0 → the queue's visibility timeout
}

// Limits of the server, mirrored so callers can split batches.
const (
	MaxReceive = api.MaxReceive
	MaxBatch   = api.MaxBatch
	MaxWait    = api.MaxWait
)

func (c *Client) httpClient() *http.Client {
	if c.HTTPClient != nil {
		return c.HTTPClient
	}
	return defaultHTTPClient
}

func queuePath(q string, suffix string) string {
	return "/v1/queues/" + url.PathEscape(q) + suffix
}

// do sends a request with a JSON body (nil: none) and decodes a JSON answer into out (nil: discard).
// Statuses in okStatus (besides 2xx) are also decoded into out and returned with an *Error.
func (c *Client) do(ctx context.Context, method, path string, in, out any, alsoDecode ...int) error {
	if c.BaseURL == "" {
		return errors.New("client: BaseURL is empty")
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("client: encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+path, body)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.APIKey)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return fmt.Errorf("client: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("client: %s %s: read answer: %w", method, path, err)
	}
	decodeBody := resp.StatusCode/100 == 2
	for _, s := range alsoDecode {
		if resp.StatusCode == s {
			decodeBody = true
		}
	}
	if decodeBody && out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("client: %s %s: decode answer: %w", method, path, err)
		}
	}
	if resp.StatusCode/100 == 2 {
		return nil
	}
	var eb api.ErrorBody
	if json.Unmarshal(data, &eb) != nil || eb.Error.Code == "" {
		msg := strings.TrimSpace(string(data))
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return &Error{Status: resp.StatusCode, Code: "http_" + strconv.Itoa(resp.StatusCode), Message: msg}
	}
	return &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
}

// Queues returns the stats of every queue the key may see.
func (c *Client) Queues(ctx context.Context) ([]Stats, error) {
	var out api.ListResponse
	if err := c.do(ctx, http.MethodGet, "/v1/queues", nil, &out); err != nil {
		return nil, err
	}
	return out.Queues, nil
}

// Stats returns one queue's stats.
func (c *Client) Stats(ctx context.Context, q string) (Stats, error) {
	var out Stats
	err := c.do(ctx, http.MethodGet, queuePath(q, ""), nil, &out)
	return out, err
}

// Send enqueues msgs (at most MaxBatch) into q and returns their ids. They are durable on return.
func (c *Client) Send(ctx context.Context, q string, msgs []NewMessage) ([]string, error) {
	var out api.EnqueueResponse
	in := api.EnqueueRequest{Messages: msgs}
	if err := c.do(ctx, http.MethodPost, queuePath(q, "/messages"), in, &out); err != nil {
		return nil, err
	}
	return out.IDs, nil
}

// Receive leases up to opts.Max messages of q, waiting up to opts.Wait for the first one.
// It returns an empty slice when nothing arrived in time.
func (c *Client) Receive(ctx context.Context, q string, opts ReceiveOptions) ([]Message, error) {
	var in api.ReceiveRequest
	if opts.Max > 0 {
		in.Max = &opts.Max
	}
	if opts.Wait > 0 {
		in.WaitMS = ptr(opts.Wait.Milliseconds())
	}
	if opts.Lease > 0 {
		in.LeaseMS = ptr(max(1, opts.Lease.Milliseconds()))
	}
	var out api.ReceiveResponse
	if err := c.do(ctx, http.MethodPost, queuePath(q, "/receive"), in, &out); err != nil {
		return nil, err
	}
	return out.Messages, nil
}

// receipts calls ack, nack or extend; the answer has one error (nil = done) per receipt, in order.
// A per-receipt error is an *Error matching ErrStaleReceipt or ErrInvalidReceipt.
func (c *Client) receipts(ctx context.Context, q, op string, in api.ReceiptsRequest) ([]error, error) {
	n := len(in.Receipts)
	var out api.ReceiptsResponse
	err := c.do(ctx, http.MethodPost, queuePath(q, "/"+op), in, &out, http.StatusConflict, http.StatusBadRequest)
	if len(out.Results) == 0 {
		if err == nil {
			err = fmt.Errorf("client: %s: the answer holds no results", op)
		}
		return nil, err
	}
	if len(out.Results) != n {
		return nil, fmt.Errorf("client: %s: %d results for %d receipts", op, len(out.Results), n)
	}
	errs := make([]error, n)
	for i, r := range out.Results {
		if !r.OK {
			e := &Error{Code: "unknown", Message: "the receipt was not processed"}
			if r.Error != nil {
				e.Code, e.Message = r.Error.Code, r.Error.Message
			}
			errs[i] = e
		}
	}
	return errs, nil
}

// Ack acknowledges deliveries: their messages are done and removed.
func (c *Client) Ack(ctx context.Context, q string, receipts []string) ([]error, error) {
	return c.receipts(ctx, q, "ack", api.ReceiptsRequest{Receipts: receipts})
}

// Nack gives deliveries back: they are delivered again after delay (0 → the queue's backoff).
func (c *Client) Nack(ctx context.Context, q string, receipts []string, delay time.Duration) ([]error, error) {
	in := api.ReceiptsRequest{Receipts: receipts}
	if delay > 0 {
		in.DelayMS = ptr(delay.Milliseconds())
	}
	return c.receipts(ctx, q, "nack", in)
}

// Extend sets the deliveries' leases to end lease from now.
func (c *Client) Extend(ctx context.Context, q string, receipts []string, lease time.Duration) ([]error, error) {
	in := api.ReceiptsRequest{Receipts: receipts, LeaseMS: ptr(max(1, lease.Milliseconds()))}
	return c.receipts(ctx, q, "extend", in)
}

// Dead lists up to max (1..1000; 0 → 100) dead letters of q, oldest first.
func (c *Client) Dead(ctx context.Context, q string, max int) ([]DeadLetter, error) {
	path := queuePath(q, "/dead")
	if max > 0 {
		path += "?max=" + strconv.Itoa(max)
	}
	var out api.DeadResponse
	if err := c.do(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return out.Messages, nil
}

// Redrive moves dead letters of q back into q: those with the given ids, or all when ids is empty.
// It returns how many moved.
func (c *Client) Redrive(ctx context.Context, q string, ids []string) (int, error) {
	in := api.RedriveRequest{IDs: ids}
	var out api.CountResponse
	err := c.do(ctx, http.MethodPost, queuePath(q, "/redrive"), in, &out)
	return deref(out.Redriven), err
}

// Purge deletes every message of q (not its dead letters) and returns how many.
func (c *Client) Purge(ctx context.Context, q string) (int, error) {
	var out api.CountResponse
	err := c.do(ctx, http.MethodDelete, queuePath(q, "/messages"), nil, &out)
	return deref(out.Purged), err
}

func ptr[T any](v T) *T { return &v }

func deref(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}
