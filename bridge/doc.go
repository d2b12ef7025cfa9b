// Package bridge routes MQTT publishes into durable queues: a list of rules maps MQTT topic
// filters to queue names, and a mochi OnPublish hook writes each matching message into its
// queues before the broker acknowledges it.
//
// # Contract
//
// For QoS 1 and 2 the hook returns only once the record is durable in every queue its topic
// routes to (the queue's group commit under its sync policy), so a PUBACK or PUBREC means "on
// disk". When a record cannot be stored within the enqueue timeout, no success ack is sent:
// MQTT 5 clients get reason 0x97 (quota exceeded) when a queue is full and 0x80 otherwise;
// MQTT 3.1.1 clients get no ack and resend. QoS 0 messages go through a bounded per-queue
// buffer written in batches in the background; when it is full they are dropped and counted.
//
// A message matching several rules goes once into each distinct queue. Topics beginning with
// '$' are not matched by filters starting with a wildcard. Bridged messages still reach MQTT
// subscribers: the hook does not change the packet.
//
// # Delivery
//
// Queues are at-least-once. A device that resends a QoS 1 message after a lost PUBACK (or a
// broker crash between the fsync and the PUBACK) produces a duplicate record with a new id;
// consumers that must not act twice should deduplicate on message content (for example a
// device sequence number). QoS 2 is exactly-once into the queue within a session: mochi runs
// OnPublish once per packet id, and mqtt.Server answers a PUBLISH resent before PUBREL with
// PUBREC success without calling the hook again.
//
// # Concurrency and pipelining
//
// mochi runs OnPublish on the publishing client's read goroutine, so a slow or full queue only
// stalls the connections publishing into it; the hook holds no lock shared between clients.
// Writes for several queues of one message run concurrently.
//
// Blocking in OnPublish caps one connection at one group commit per message (a gateway with 100
// messages in flight gets ~1/fsync-latency messages/s). With Options.Pipeline set to the broker
// (*mqtt.Server, as sluice serve does), QoS 1 publishes are pipelined instead: the hook gates the
// publish's PUBACK on its connection (mqtt.AckGate) and stages the record, and mochi handles the
// publish at once (ACL, retain, delivery, PUBACK). When the client's reader is about to wait for
// the network, what it staged goes to the queue as one ordered batch without waiting
// (queue.Manager.AddAsync); once that is durable, a goroutine of that client opens the gates, so their
// PUBACKs leave in one write (or a failure code after EnqueueTimeout). PUBACKs keep the order of the
// PUBLISHes (acks of unbridged or denied publishes wait behind the gates), records keep the
// client's order, subscribers see each topic in order, and a client with PipelineDepth publishes
// waiting is slowed down. QoS 2 is never pipelined. The broker's ACL is checked once, when the
// publish is read; a denied one is never stored. Subscribers receive a pipelined message before it
// is durable, as they would without the bridge; if its record then fails, the publisher gets 0x97
// or 0x80 (MQTT 5) or no ack (3.1.1, which resends: subscribers may see it twice).
//
// # Example
//
//	b, err := bridge.New(manager, bridge.Options{Rules: []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry", MinQoS: 0}}})
//	if err != nil { ... }
//	for _, q := range b.Queues() { manager.Declare(q, queue.Config{}) }
//	srv.AddHook(b.Hook(), nil) // before srv.Start
//	...
//	srv.Shutdown(ctx); b.Close(ctx); manager.Close()
package bridge
