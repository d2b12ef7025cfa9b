// Package client is the Go client of Sluice's queue HTTP API (/v1/queues/...), for backends.
//
// Client has one method per endpoint. Consumer is the usual way to consume: it receives in
// batches, runs a Handler on a pool of workers, acks on success (acks are batched), nacks with
// backoff on error, extends the leases of messages whose handler is still running, and stops
// gracefully when its context ends (running handlers finish and are acked). Producer sends
// messages, splitting large slices into batches the server accepts.
//
// # Delivery semantics
//
// Queues are at-least-once. A message can be delivered more than once: after a handler error or
// panic (nack), after its lease expires (a crashed or slow consumer, a lost ack), and when an MQTT
// device resends a QoS 1 message whose PUBACK it did not get (then the duplicate has a new ID).
// Message.ID is stable across redeliveries of the same record, so handlers should be idempotent
// by ID, and by content where device resends matter. Message.Attempt counts deliveries.
// Receipts belong to one delivery: acking with an old receipt answers ErrStaleReceipt.
//
// # Concurrency
//
// Client is safe for concurrent use. A Consumer's Run must not be called twice at once.
// Handlers run concurrently (Workers of them).
//
// # Example
//
//	c := &client.Client{BaseURL: "http://127.0.0.1:8080", APIKey: os.Getenv("SLUICE_API_KEY")}
//	cons := &client.Consumer{Client: c, Queue: "telemetry", Workers: 8,
//		Handler: func(ctx context.Context, m client.Message) error {
//			return store(ctx, m.ID, m.Payload) // nil → ack; error → nack and retry later
//		}}
//	err := cons.Run(ctx) // until ctx ends
package client
