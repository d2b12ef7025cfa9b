// Package chaos is Sluice's fault and abuse suite. It holds only tests: they build the real sluice
// binary, run it as a child process with configurations written into temporary directories, and
// drive it over the network — MQTT clients (the devices package, paho, raw sockets) and the queue
// HTTP API (queue/client) — while they kill it, fill its disk, stall its subscribers and throw
// hostile traffic at it. Nothing here imports the broker's packages: what is tested is what a user
// of the binary sees.
//
// Scenarios (one test each, each prints a summary row):
//
//   - TestCrashLoop: mixed QoS 0/1/2 load into a bridged topic, HTTP consumers acking, a persistent
//     MQTT 5 session that is offline part of the time; SIGKILL at random moments, restart on the same
//     data directory. Every acknowledged bridged message must reach the consumers.
//   - TestFullDisk: the data directory on a small tmpfs (needs root to mount it).
//   - TestSlowSubscribers: stuck subscribers under a flood, for each slow-subscriber policy.
//   - TestHostileClients: sockets that never CONNECT, half-open connections, a connection storm, a
//     packet fuzzer, odd topics, many subscriptions, a reconnect loop — while a well-behaved client
//     measures its round trips.
//   - TestHTTPAbuse: huge bodies, many long polls, bad receipts, wrong keys.
//
// By default every scenario runs in a reduced form (the package finishes in a few minutes, part of
// `make test`). With SLUICE_CHAOS=full the counts and durations grow and TestMain prints the summary
// table at the end (`make chaos`):
//
//	SLUICE_CHAOS=full go test -race -count=1 -timeout 60m -v -run . ./loadtest/chaos
//
// The full-disk scenario mounts a tmpfs and so must run as root; as another user it fails and says so.
// SLUICE_CHAOS_BIN=/path/to/sluice runs the suite against a binary built elsewhere instead of building
// ./cmd/sluice. The broker is built without -race (the suite measures its memory and latency); the
// test process itself runs under -race.
//
// Every assertion fails the test when it does not hold; nothing is skipped.
package chaos
