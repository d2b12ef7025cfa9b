// Command sluice is the Sluice MQTT broker with durable work queues, device simulator and load tester:
// one static binary.
//
//	sluice serve [--config FILE] [--check] [--log-level L]   run the broker, bridge, queues, admin HTTP
//	sluice config                                            print the default configuration (the reference)
//	sluice passwd [--cost N] [USERNAME]                      bcrypt a password read on stdin
//	sluice version                                           version and build information
//	sluice help [COMMAND]                                    every command also takes -h/--help
//
// Each subcommand is one line of the table in commands (main.go): a name, a one-line summary and a
// func(ctx, args, stdout, stderr) int that returns the exit code: 0 done, 1 failed, 2 bad usage,
// configuration or start (one sentence on stderr, never a stack trace). Flag parsing goes through
// newFlagSet and parseFlags so that --help prints to stdout and exits 0 everywhere.
//
// serve runs an app (serve.go): configuration → mqtt.Options, the queues and the bridge hook
// (queues.go), a private Prometheus registry with Go and process collectors, and the admin HTTP listener
// (/metrics, /healthz, /readyz, /v1/queues). It logs "started" with every bound address (listeners.NAME,
// http), which the end-to-end tests read to find ports chosen with 127.0.0.1:0. SIGINT/SIGTERM shut
// down within shutdownTimeout in the order broker → bridge and queues → HTTP; SIGHUP reloads users and
// ACL from the --config file. The end-to-end tests (e2e_test.go) build this binary once in TestMain and
// run it as a child process.
package main
