package httpapi

import (
	"time"

	"github.com/sluicemq/sluice/queue"
	"github.com/sluicemq/sluice/queue/api"
)

// The JSON bodies of the API are the types of queue/api, shared with the Go client (queue/client).
// This file converts between them and the queue package.

// Limits of one request.
const (
	MaxReceive      = api.MaxReceive  // messages per receive
	MaxBatch        = api.MaxBatch    // receipts per ack/nack/extend, messages per enqueue, ids per redrive
	MaxWait         = api.MaxWait     // receive long-poll
	MaxDeadPeek     = api.MaxDeadPeek // dead letters per listing
	maxSmallBody    = 1 << 20         // receive/ack/nack/extend/redrive bodies: 1 MiB
	defaultMaxBody  = 16 << 20        // enqueue bodies, unless Options.MaxBodyBytes
	defaultDeadPeek = 100
)

func toWireProps(p queue.Properties) api.Properties {
	w := api.Properties{
		ContentType:     p.ContentType,
		PayloadFormat:   p.PayloadFormat,
		CorrelationData: p.CorrelationData,
		ResponseTopic:   p.ResponseTopic,
		MessageExpiry:   p.MessageExpiry,
	}
	for _, u := range p.UserProperties {
		w.UserProperties = append(w.UserProperties, api.UserProperty{Key: u.Key, Value: u.Value})
	}
	return w
}

func fromWireProps(w api.Properties) queue.Properties {
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

func toWireMessage(d queue.Delivery) api.Message {
	return api.Message{ID: d.ID, Receipt: d.Receipt, Attempt: d.Attempt, Record: toWireRecord(d.EnqueuedAt, d.Message)}
}

func toWireDeadLetter(d queue.DeadLetter) api.DeadLetter {
	return api.DeadLetter{
		ID: d.ID, Attempts: d.Attempts, Reason: d.Reason, DeadAt: d.DeadAt.UTC(),
		Record: toWireRecord(d.EnqueuedAt, d.Message),
	}
}

func toWireRecord(enqueuedAt time.Time, m queue.Message) api.Record {
	return api.Record{
		EnqueuedAt: enqueuedAt.UTC(),
		ReceivedAt: m.ReceivedAt.UTC(),
		Topic:      m.Topic,
		ClientID:   m.ClientID,
		Username:   m.Username,
		QoS:        m.QoS,
		Retain:     m.Retain,
		Properties: toWireProps(m.Properties),
		Payload:    nonNil(m.Payload),
	}
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

func toWireStats(s queue.Stats) api.Stats {
	return api.Stats{
		Name: s.Name, Ready: s.Ready, Leased: s.Leased, Delayed: s.Delayed, Dead: s.Dead,
		Bytes: s.Bytes, OldestAgeMS: s.OldestAge.Milliseconds(),
		Enqueued: s.Enqueued, Acked: s.Acked, Nacked: s.Nacked, DeadLettered: s.DeadLettered,
		Expired: s.Expired, Dropped: s.Dropped,
		EnqueueRate: s.EnqueueRate, AckRate: s.AckRate, NackRate: s.NackRate, DeadLetterRate: s.DeadLetterRate,
	}
}
