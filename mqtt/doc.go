// Package mqtt is Sluice's MQTT 3.1, 3.1.1 and 5.0 broker, built on github.com/mochi-mqtt/server/v2.
//
// mochi does the protocol: QoS 0/1/2, wildcards, retained messages, wills (with will delay),
// shared subscriptions, topic aliases, session and message expiry, request/response properties,
// $SYS topics. This package adds what a broker facing a device fleet needs and mochi leaves out:
//
//   - Listeners (tcp, tls, ws, wss; any number) that listen synchronously in Start, enforce
//     MaxConnections at accept, and close a socket that has not completed its TLS handshake and
//     CONNECT within ConnectTimeout (mochi has no such timeout).
//   - Write coalescing (conn.go): every accepted connection is wrapped so that the packets written while its
//     reader goroutine is busy (PUBACKs of a batch of PUBLISHes, say) go out in one write(2) when
//     the reader is about to block, when 4 KiB are pending, or after 2 ms. Stock mochi makes one
//     system call per PUBACK.
//   - Reads without an idle buffer (connread.go): mochi's per-client read buffer is 128 bytes, and a
//     plain TCP connection reads into a pooled 2 KiB buffer taken only when read(2) has data, so an
//     idle connection holds none (BenchmarkIdleConnections: 26.3 KiB per idle connection, most of it
//     the stacks of mochi's two goroutines; see the README for the floor).
//   - Authentication of our own (mochi's auth ledger allows by default and stores plaintext
//     passwords): anonymous allowed per listener, bcrypt users (verified results cached by a
//     SHA-256 of username, hash and password, so reconnect storms stay cheap), the CommonName of a
//     verified client certificate. ACL rules grant publish and subscribe rights with %u/%c
//     substitution; once there is a rule, anything not granted is denied. A denied SUBSCRIBE gets
//     0x87 (MQTT 5) or 0x80 (3.1.1); a denied PUBLISH is not routed (MQTT 5 PUBACK 0x87; MQTT 3
//     QoS 1/2: disconnect, as mochi does). Reload swaps users and rules atomically.
//   - Limits with safe defaults (see Limits): packet size, connections, receive maximum, in-flight,
//     pending writes (mochi's default of 8192 costs 64 KiB per client), keep-alive bounds (MQTT 5
//     clients are told the server keep alive in CONNACK; MQTT 3 clients asking for 0 or more than
//     the maximum are refused), session and message expiry, topic length and levels (violations:
//     MQTT 5 DISCONNECT 0x90), and a per-client publish rate: a client over its rate has its reads
//     delayed (TCP then slows it); nothing is dropped and no other client waits.
//   - Slow subscribers (see SlowSubscribers, hook.OnPublishDropped, hook.OnPublish). mochi acks a
//     publisher before it routes the message, and stock mochi then drops silently what does not
//     fit a subscriber (its outbound queue, or its in-flight store). Here every drop is counted by
//     reason (sluice_mqtt_dropped_messages_total, sluice_mqtt_inflight_full_dropped_total) and the
//     policy is explicit: "drop" drops QoS 0 and keeps QoS 1/2 in the session for redelivery
//     where it can; "disconnect" also cuts a subscriber whose queue stays full for
//     DisconnectAfter; "backpressure" holds publishers (before their PUBACK) while a subscriber of
//     their topic has a full in-flight window, so nothing is dropped — BenchmarkFanIn shows it.
//     "backpressure" is the default: under a closed-loop fan-in overload "drop" acked ~10× more
//     than one subscriber could take and dropped the rest (counted), which is not what a broker
//     whose PUBACK means "kept" should do by default.
//   - mochi's outbound send quota is switched off (hook.OnSessionEstablished): in v2.7.9 it can
//     deadlock a subscriber (a recursive read lock in Inflight.NextImmediate) and leaks quota.
//   - QoS 2 resends: a PUBLISH resent before PUBREL (its PUBREC was lost) gets PUBREC success
//     again and is not delivered again [MQTT-4.3.3-10] (hook.resentQoS2; mochi answers 0x91).
//   - GateAck and OpenAcks, for the bridge's pipelined acks: a QoS 1 publish's PUBACK waits on its
//     connection until opened, with the acks written after it waiting behind it (ackgate.go).
//   - Persistence (StorageDir): mochi's bolt hook (bbolt), limited to persistent sessions and with
//     mochi's lost in-flight packet ids restored; sessions, subscriptions, retained and in-flight
//     messages survive restart and kill -9 (writes reach the page cache before the hook returns;
//     StorageSync adds an fsync per write for power loss). Chosen by measuring the QoS 1 path
//     (BenchmarkQoS1FanIn, 20 publishers → 1 persistent subscriber): clean sessions pay nothing;
//     a persistent subscriber pays two bolt transactions per message (about 5× slower than no
//     storage), with fsync about 70× slower. pebble and badger would pull in large dependency trees
//     for a store that holds only sessions; the durable path for data is bridge → queue.
//   - Prometheus metrics on a private registry (Options.Registerer) and mochi's slog output routed
//     into zerolog, sampled.
//
// Concurrency: New, AddHook and Start are called once, in that order, from one goroutine.
// Addr, Reload and Ready are safe at any time from any goroutine; OpenAcks from any goroutine
// after Start, for a client mochi handed to a hook; GateAck, InputBuffered and BeforeReadWait
// from a hook on the client's reader goroutine. Shutdown may be called from any goroutine; it
// waits for every goroutine the server started.
//
// Example:
//
//	srv, err := mqtt.New(mqtt.Options{
//		Listeners: []mqtt.Listener{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:1883", AllowAnonymous: true}},
//	})
//	if err != nil { ... }
//	if err := srv.Start(); err != nil { ... }
//	defer srv.Shutdown(ctx)
package mqtt
