package api

import "time"

// Limits of one request, enforced by the server; clients use them to split batches.
const (
	MaxReceive  = 1000             // messages per receive
	MaxBatch    = 1000             // receipts per ack/nack/extend, messages per enqueue, ids per redrive
	MaxWait     = 20 * time.Second // receive long-poll
	MaxDeadPeek = 1000             // dead letters per listing
)

// ErrorBody is the answer to a failed request: {"error":{"code":"...","message":"..."}}.
type ErrorBody struct {
	Error Error `json:"error"`
}

// Error is a machine-readable code (e.g. "queue_not_found", "stale_receipt") and a sentence.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// UserProperty is an MQTT 5 user property.
type UserProperty struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Properties are the MQTT 5 properties a message was published with.
type Properties struct {
	ContentType     string         `json:"content_type,omitempty"`
	PayloadFormat   *byte          `json:"payload_format,omitempty"`
	CorrelationData []byte         `json:"correlation_data,omitempty"`
	ResponseTopic   string         `json:"response_topic,omitempty"`
	UserProperties  []UserProperty `json:"user_properties,omitempty"`
	MessageExpiry   *uint32        `json:"message_expiry,omitempty"` // seconds
}

// Message is a delivered message. Receipt identifies this delivery (lease) for Ack, Nack and Extend;
// ID is stable across deliveries, so handlers can be idempotent.
type Message struct {
	ID      string `json:"id"`
	Receipt string `json:"receipt"`
	Attempt int    `json:"attempt"`
	Record
}

// DeadLetter is a message moved to a queue's dead-letter queue.
type DeadLetter struct {
	ID       string    `json:"id"`
	Attempts int       `json:"attempts"`
	Reason   string    `json:"reason"`
	DeadAt   time.Time `json:"dead_at"`
	Record
}

// Record is what a delivered message and a dead letter share: the stored message. Its fields are
// promoted (m.Topic, m.Payload) and, in JSON, inlined after the fields of the outer type.
type Record struct {
	EnqueuedAt time.Time  `json:"enqueued_at"`
	ReceivedAt time.Time  `json:"received_at"`
	Topic      string     `json:"topic"`
	ClientID   string     `json:"client_id"`
	Username   string     `json:"username,omitempty"`
	QoS        byte       `json:"qos"`
	Retain     bool       `json:"retain"`
	Properties Properties `json:"properties"`
	Payload    []byte     `json:"payload"`
}

// NewMessage is one message of an enqueue request.
type NewMessage struct {
	Topic      string     `json:"topic,omitempty"`
	ClientID   string     `json:"client_id,omitempty"`
	QoS        byte       `json:"qos,omitempty"`
	Properties Properties `json:"properties,omitzero"`
	Payload    []byte     `json:"payload"`
}

// Stats describe a queue.
type Stats struct {
	Name         string `json:"name"`
	Ready        int64  `json:"ready"`
	Leased       int64  `json:"leased"`
	Delayed      int64  `json:"delayed"`
	Dead         int64  `json:"dead"`
	Bytes        int64  `json:"bytes"`
	OldestAgeMS  int64  `json:"oldest_age_ms"`
	Enqueued     uint64 `json:"enqueued"`
	Acked        uint64 `json:"acked"`
	Nacked       uint64 `json:"nacked"`
	DeadLettered uint64 `json:"dead_lettered"`
	Expired      uint64 `json:"expired"`
	Dropped      uint64 `json:"dropped"`
	// Per-second rates over the last 10 to 20 s.
	EnqueueRate    float64 `json:"enqueue_rate"`
	AckRate        float64 `json:"ack_rate"`
	NackRate       float64 `json:"nack_rate"`
	DeadLetterRate float64 `json:"dead_letter_rate"`
}

// ListResponse answers GET /v1/queues.
type ListResponse struct {
	Queues []Stats `json:"queues"`
}

// EnqueueRequest is the body of POST /v1/queues/{q}/messages.
type EnqueueRequest struct {
	Messages []NewMessage `json:"messages"`
}

// EnqueueResponse answers an enqueue: the new messages' ids, in order.
type EnqueueResponse struct {
	IDs []string `json:"ids"`
}

// ReceiveRequest is the body of POST /v1/queues/{q}/receive. Absent fields take the defaults.
type ReceiveRequest struct {
	Max     *int   `json:"max,omitempty"`      // default 1
	WaitMS  *int64 `json:"wait_ms,omitempty"`  // default 0: answer at once
	LeaseMS *int64 `json:"lease_ms,omitempty"` // default: the queue's visibility timeout
}

// ReceiveResponse answers a receive.
type ReceiveResponse struct {
	Messages []Message `json:"messages"`
}

// ReceiptsRequest is the body of ack, nack and extend.
type ReceiptsRequest struct {
	Receipts []string `json:"receipts"`
	DelayMS  *int64   `json:"delay_ms,omitempty"` // nack only
	LeaseMS  *int64   `json:"lease_ms,omitempty"` // extend only
}

// ReceiptResult is the outcome for one receipt; Error is set when OK is false.
type ReceiptResult struct {
	Receipt string `json:"receipt"`
	OK      bool   `json:"ok"`
	Error   *Error `json:"error,omitempty"`
}

// ReceiptsResponse answers ack, nack and extend: one result per receipt, in order.
type ReceiptsResponse struct {
	Results []ReceiptResult `json:"results"`
}

// RedriveRequest is the body of POST /v1/queues/{q}/redrive; no ids means all dead letters.
type RedriveRequest struct {
	IDs []string `json:"ids,omitempty"`
}

// CountResponse answers redrive ({"redriven":n}) and purge ({"purged":n}).
type CountResponse struct {
	Redriven *int `json:"redriven,omitempty"`
	Purged   *int `json:"purged,omitempty"`
}

// DeadResponse answers GET /v1/queues/{q}/dead.
type DeadResponse struct {
	Messages []DeadLetter `json:"messages"`
}
