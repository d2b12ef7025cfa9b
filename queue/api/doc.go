// Package api holds the JSON wire types of Sluice's queue HTTP API (/v1/queues/...): the
// request and answer bodies that queue/httpapi serves and queue/client sends and decodes.
//
// It is their one home, so the server and the client cannot drift apart. It imports nothing of
// Sluice and nothing beyond the standard library, so the client (and loadtest, which uses the
// client) does not pull server code in. Field names and JSON tags are part of the public contract
// (DESIGN.md). The types hold data only; conversions from the queue package live in httpapi.
//
// # Concurrency
//
// The types are plain values; nothing here is shared or locked.
//
// # Example
//
//	var out api.ReceiveResponse
//	err := json.Unmarshal(body, &out) // out.Messages[i].Receipt, .Payload, ...
package api
