// Package httpapi serves Sluice's queues over HTTP with JSON bodies, under /v1/queues.
//
//	GET    /v1/queues                    {"queues":[stats...]}  (the queues the key may see)
//	GET    /v1/queues/{q}                stats
//	POST   /v1/queues/{q}/messages       {"messages":[{"topic","client_id","qos","properties","payload"}]} → 201 {"ids":[...]}
//	DELETE /v1/queues/{q}/messages       → {"purged":n}
//	POST   /v1/queues/{q}/receive        {"max":1..1000,"wait_ms":0..20000,"lease_ms":>0} → {"messages":[...]}
//	POST   /v1/queues/{q}/ack            {"receipts":[...]} → {"results":[{"receipt","ok","error"}]}
//	POST   /v1/queues/{q}/nack           {"receipts":[...],"delay_ms":n}
//	POST   /v1/queues/{q}/extend         {"receipts":[...],"lease_ms":n}
//	GET    /v1/queues/{q}/dead?max=n     {"messages":[dead letters...]}
//	POST   /v1/queues/{q}/redrive        {"ids":[...]} (absent/empty: all) → {"redriven":n}
//
// A delivered message carries id (stable across redeliveries), receipt (this delivery), attempt,
// enqueued_at, received_at, topic, client_id, username, qos, retain, properties and payload (base64).
//
// Errors are {"error":{"code":"...","message":"..."}}: 400 bad input (bad_json, unknown_field,
// bad_request, batch_too_large, invalid_receipt), 401 unauthorized, 403 forbidden, 404
// queue_not_found / not_found, 409 stale_receipt, 413 body_too_large / message_too_large,
// 429 queue_full, 503 unavailable. Bodies are decoded strictly (unknown fields are refused) and
// limited in size (1 MiB, enqueue 16 MiB by default). ack, nack and extend answer per receipt:
// 200 when at least one succeeded, 409 when all were stale, 400 otherwise. A request refused
// with a 4xx changes nothing stored.
//
// # Authentication
//
// With no keys configured every request is allowed (the default listener is on loopback only).
// Once a key exists, every request needs "Authorization: Bearer <key>"; keys are compared by their
// SHA-256 digests in constant time and carry rights per queue (or "*"): consume (receive, ack,
// nack, extend), produce (send), admin (everything, including dead letters, redrive and purge).
// Any right on a queue lets a key read its stats.
//
// # Concurrency
//
// A Handler is safe for concurrent use. Close ends pending long polls so that an http.Server's
// Shutdown does not wait up to 20 s for them.
//
// # Example
//
//	h, err := httpapi.New(manager, httpapi.Options{Keys: keys, Registerer: reg})
//	if err != nil { ... }
//	h.Register(mux) // beside /metrics and the health checks
//	...
//	h.Close(); httpServer.Shutdown(ctx)
package httpapi
