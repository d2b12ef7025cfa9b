// Package queue implements Sluice's durable work queues: named queues of messages stored in
// crash-safe write-ahead logs (package wal), consumed with leases, acks, nacks, retries with
// backoff, dead-letter queues and redrive.
//
// A Manager owns one data directory and every queue in it. Enqueue returns once the messages are
// durable under the queue's sync policy; Receive leases ready messages (redeliveries that are due
// first, then first deliveries in enqueue order) and long-polls when none is ready; Ack, Nack and
// Extend settle deliveries by receipt. A delivery that fails (its lease expires or it is nacked)
// becomes ready again after the backoff (initial × multiplier^(attempt−1), capped, ± jitter); after
// MaxAttempts deliveries it is written to the queue's dead-letter queue, with the reason, before it
// leaves the queue. Redrive moves dead letters back with their ids; Purge empties a queue.
// Limits (MaxMessages, MaxBytes) either reject new messages (ErrFull) or drop the oldest; MaxAge
// dead-letters or drops messages that are too old, so a stuck message cannot pin the log forever.
//
// Settings are not stored on disk: a queue found on disk at Open takes its Options.Queues entry
// or Options.Defaults; Declare changes them at once, except Sync, which applies from the next Open.
// Redriven messages keep their ids and count their attempts and max age from the redrive.
//
// # Concurrency
//
// All Manager methods are safe for concurrent use. Each queue has one mutex over its in-memory
// index, held only for index work, never during disk I/O, and one goroutine that runs its timers
// (lease ends, delays, max age), moves messages to the dead-letter queue and writes checkpoints.
// Timers are also applied by every operation before it looks at the index, so with a manual clock
// (Options.Clock) the queue behaves deterministically. Writers of one queue share group commits:
// many concurrent Enqueue or Ack calls cost one fsync. Close wakes long polls (ErrClosed), waits
// for the operations in flight and the goroutines, writes final checkpoints and releases the lock.
//
// # Delivery and receipts
//
// Delivery is at least once. A receipt names the queue, the message's log index, the delivery's
// attempt number and the Manager instance: a receipt whose lease expired (the message is delivered
// again with a higher attempt), whose message was settled, or that was issued before a restart is
// refused with ErrStaleReceipt and can never settle a later delivery; garbage and receipts of
// another queue are ErrInvalidReceipt. Message ids (github.com/rs/xid, 20 characters, sortable by
// time) are stored in the record and survive restarts, dead-lettering and redrive.
//
// # On disk
//
//	<dir>/.lock                    flock(2) held while open: a second Open fails with ErrLocked
//	<dir>/<queue>/log/             wal of message records
//	<dir>/<queue>/acks/            wal of ack-state records
//	<dir>/<queue>/checkpoint       snapshot of the ack state
//	<dir>/<queue>/dead/{log,acks,checkpoint}   the dead-letter queue, same layout
//
// A message record is a version byte, flags, the 12-byte id, the enqueue and receive times, QoS,
// then length-prefixed topic, client id, username, MQTT 5 properties, dead-letter details (attempts,
// time, reason) and the payload (record.go). An ack-state record is a version byte and a list of
// events: lease(index, attempt, deadline), delay(index, attempt, visible-at), gone(index) and
// gone-range(first, count) (state.go). A checkpoint holds the ack-log index it covers, the base
// index below which every message is gone, runs of gone messages and the attempt and visibility of
// delivered ones, with a CRC-32C; it is written to a temporary file, fsynced, renamed over the old
// one and the directory fsynced, after which the ack-log segments it covers and the message-log
// segments below the oldest live message are removed, so disk use follows the backlog.
//
// Recovery (Open) reads the checkpoint, scans only the fixed header of every message record in the
// log (the payloads stay on disk; the in-memory index costs 24 bytes per message) and replays the
// ack log after the checkpoint. Every durably enqueued message that was not acked is delivered
// again, with its attempt count as far as the ack state got; leases taken before the restart run
// to their deadline. A damaged checkpoint or a damaged record in the middle of a log is a
// *CorruptError (ErrCorrupt) and nothing is changed; a torn log tail is repaired by package wal.
//
// # Recovery from failed writes
//
// After a failed write or fsync (a full disk, an I/O error) a log refuses further writes
// (wal.ErrFailed), and the queue's writes fail with an error wrapping wal.ErrFailed and the cause
// (never ErrFull): nothing is acknowledged that is not durable. The failure is logged, and the
// first operation on the queue one second (recoverEvery, on Options.Clock) after it reopens the
// queue by itself: it closes the queue (operations in flight finish or fail; long polls carry on
// with the reopened queue), reopens its logs (wal.Open repairs a torn tail) and rebuilds the index
// as Open does. Operations that arrive meanwhile wait for it; other queues are not involved. If
// the reopen fails, or the next write fails again, the queue tries again at most once a second,
// and its operations fail with the error until then. Each successful reopen is logged and counted
// (sluice_queue_recoveries_total{queue}). What a reopen does to the contract:
//
//   - Nothing acknowledged is lost or changed: the index is rebuilt from what is on disk.
//   - A write reported failed may still have reached the disk (a failed fsync, for example), so a
//     message whose Enqueue failed may appear after the reopen, and an Ack, Nack or Extend that
//     failed may or may not have taken effect: at least once, as after a crash.
//   - Receipts issued before the reopen are stale (ErrStaleReceipt): the reopened queue has
//     another epoch. Leases taken before it run to their recorded deadline (or, if their record
//     did not reach the disk, are lost), then their messages are delivered again.
//   - Stats counters continue across the reopen.
//
// # How far acks can be lost
//
// Ack, Nack and Extend return after their ack-state record is durable under the queue's sync
// policy: with "always" (the default) an acked message is never delivered again after a crash;
// with "interval" the acks of the last sync interval (10 ms) can be lost, with "none" those since
// the last segment roll or checkpoint — only on an operating-system crash or power loss: what was
// written survives the death of the process under every policy. A lost ack, nack or lease only causes a redelivery (and a
// lost lease an attempt that is not counted); it never loses a message. Messages are never
// acknowledged to producers before they are durable under the same policy.
//
// # Example
//
//	m, err := queue.Open("data/queues", queue.Options{Queues: map[string]queue.Config{"telemetry": {}}})
//	if err != nil {
//		return err
//	}
//	defer m.Close()
//	ids, err := m.Enqueue(ctx, "telemetry", []queue.Message{{Topic: "devices/d1/telemetry", Payload: data}})
//	...
//	ds, err := m.Receive(ctx, "telemetry", 100, 30*time.Second) // blocks until a message is ready
//	for _, d := range ds {
//		process(d.Payload)
//	}
//	results, err := m.Ack("telemetry", receipts(ds))
package queue
