package httpapi

import (
	"time"

	"github.com/sluicemq/sluice/queue"
)

// The JSON bodies of the API. Field names are part of the public contract (DESIGN.md);
// the Go client (queue/client) mirrors them.

// Limits of one request.
const (
	MaxReceive      = 1000             // messages per receive
	MaxBatch        = 1000             // receipts per ack/nack/extend, messages per enqueue, ids per redrive
	MaxWait         = 20 * time.Second // receive long-poll
	MaxDeadPeek     = 1000             // dead letters per listing
	maxSmallBody    = 1 << 20          // receive/ack/nack/extend/redrive bodies: 1 MiB
	defaultMaxBody  = 16 << 20         // enqueue bodies, unless Options.MaxBodyBytes
	defaultDeadPeek = 100
)

type errorBody struct {
	Error apiError `json:"error"`
}

type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type userProperty struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type properties struct {
	ContentType     string         `json:"content_type,omitempty"`
	PayloadFormat   *byte          `json:"payload_format,omitempty"`
	CorrelationData []byte         `json:"correlation_data,omitempty"`
	ResponseTopic   string         `json:"response_topic,omitempty"`
	UserProperties  []userProperty `json:"user_properties,omitempty"`
	MessageExpiry   *uint32        `json:"message_expiry,omitempty"`
}

func toWireProps(p queue.Properties) properties {
	w := properties{
		ContentType:     p.ContentType,
		PayloadFormat:   p.PayloadFormat,
		CorrelationData: p.CorrelationData,
		ResponseTopic:   p.ResponseTopic,
		MessageExpiry:   p.MessageExpiry,
	}
	for _, u := range p.UserProperties {
		w.UserProperties = append(w.UserProperties, userProperty{Key: u.Key, Value: u.Value})
	}
	return w
}

func (w properties) toQueue() queue.Properties {
	p := queue.Properties{
		ContentType:     w.ContentType,
		PayloadFormat:   w.PayloadFormat,
		CorrelationData: w.CorrelationData,
		ResponseTopic:   w.ResponseTopic,
		MessageExpiry:   w.MessageExpiry,
	}
	for _, u := range w.UserProperties {
		p.UserProperties = append(p.UserProperties, queue.UserProperty{Key: u.Key, Value: u.Value})
	}
	return p
}

// message is a delivered message.
type message struct {
	ID         string     `json:"id"`
	Receipt    string     `json:"receipt"`
	Attempt    int        `json:"attempt"`
	EnqueuedAt time.Time  `json:"enqueued_at"`
	ReceivedAt time.Time  `json:"received_at"`
	Topic      string     `json:"topic"`
	ClientID   string     `json:"client_id"`
	Username   string     `json:"username,omitempty"`
	QoS        byte       `json:"qos"`
	Retain     bool       `json:"retain"`
	Properties properties `json:"properties"`
	Payload    []byte     `json:"payload"`
}

func toWireMessage(d queue.Delivery) message {
	return message{
		ID:         d.ID,
		Receipt:    d.Receipt,
		Attempt:    d.Attempt,
		EnqueuedAt: d.EnqueuedAt.UTC(),
		ReceivedAt: d.ReceivedAt.UTC(),
		Topic:      d.Topic,
		ClientID:   d.ClientID,
		Username:   d.Username,
		QoS:        d.QoS,
		Retain:     d.Retain,
		Properties: toWireProps(d.Properties),
		Payload:    nonNil(d.Payload),
	}
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

type deadLetter struct {
	ID         string     `json:"id"`
	Attempts   int        `json:"attempts"`
	Reason     string     `json:"reason"`
	DeadAt     time.Time  `json:"dead_at"`
	EnqueuedAt time.Time  `json:"enqueued_at"`
	ReceivedAt time.Time  `json:"received_at"`
	Topic      string     `json:"topic"`
	ClientID   string     `json:"client_id"`
	Username   string     `json:"username,omitempty"`
	QoS        byte       `json:"qos"`
	Retain     bool       `json:"retain"`
	Properties properties `json:"properties"`
	Payload    []byte     `json:"payload"`
}

// newMessage is one message of an enqueue request.
type newMessage struct {
	Topic      string     `json:"topic"`
	ClientID   string     `json:"client_id"`
	QoS        byte       `json:"qos"`
	Properties properties `json:"properties"`
	Payload    []byte     `json:"payload"`
}

type enqueueRequest struct {
	Messages []newMessage `json:"messages"`
}

type enqueueResponse struct {
	IDs []string `json:"ids"`
}

type receiveRequest struct {
	Max     *int   `json:"max"`      // default 1
	WaitMS  *int64 `json:"wait_ms"`  // default 0: answer at once
	LeaseMS *int64 `json:"lease_ms"` // default: the queue's visibility timeout
}

type receiveResponse struct {
	Messages []message `json:"messages"`
}

type receiptsRequest struct {
	Receipts []string `json:"receipts"`
	DelayMS  *int64   `json:"delay_ms"` // nack only
	LeaseMS  *int64   `json:"lease_ms"` // extend only
}

type receiptResult struct {
	Receipt string    `json:"receipt"`
	OK      bool      `json:"ok"`
	Error   *apiError `json:"error,omitempty"`
}

type receiptsResponse struct {
	Results []receiptResult `json:"results"`
}

type redriveRequest struct {
	IDs []string `json:"ids"`
}

type countResponse struct {
	Redriven *int `json:"redriven,omitempty"`
	Purged   *int `json:"purged,omitempty"`
}

type deadResponse struct {
	Messages []deadLetter `json:"messages"`
}

type stats struct {
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
}

func toWireStats(s queue.Stats) stats {
	return stats{
		Name: s.Name, Ready: s.Ready, Leased: s.Leased, Delayed: s.Delayed, Dead: s.Dead,
		Bytes: s.Bytes, OldestAgeMS: s.OldestAge.Milliseconds(),
		Enqueued: s.Enqueued, Acked: s.Acked, Nacked: s.Nacked, DeadLettered: s.DeadLettered,
		Expired: s.Expired, Dropped: s.Dropped,
	}
}

type listResponse struct {
	Queues []stats `json:"queues"`
}
