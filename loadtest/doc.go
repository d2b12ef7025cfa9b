// Package loadtest measures any MQTT broker over the network: throughput, latency percentiles,
// and lost, duplicated and out-of-order messages.
//
// A Scenario (from YAML by LoadScenario, or built in code) is one of fan-in, fan-out,
// point-to-point pairs, a shared subscription, idle connections at scale, a connection storm, or
// bridge-to-queue (devices publish over MQTT, consumers receive and ack over Sluice's HTTP queue
// API through a QueueConsumer). Run runs it against a Target and returns a Result; WriteTable,
// WriteJSON and WriteHTML render one or more results, side by side when comparing brokers.
//
// Measurement. In open mode every publisher sends on a fixed schedule (total Rate) and stamps each
// message with its intended send time; latency is receive time minus intended time, recorded in
// HDR histograms, so a broker that stalls is charged for the whole stall even though the sender
// fell behind (no coordinated omission). Closed mode sends as fast as acknowledgements allow
// (Inflight per publisher) to find the maximum throughput. Every message carries its publisher's
// id and sequence number (devices.AppendBlob), so each subscriber, shared group or queue consumer
// group counts exactly what it missed (Lost, and LostAcked for messages the broker had
// acknowledged), got twice (Duplicates) or got late (OutOfOrder). With a broker PID, RSS and CPU
// are sampled from /proc.
//
// The package imports nothing of the broker: it talks to it over tcp://, tls://, ws:// or wss://.
//
// Concurrency: Run blocks; it starts goroutines for publishers, samplers and consumers and waits
// for all of them (and closes every connection) before it returns.
//
// Example:
//
//	sc, err := loadtest.LoadScenario("configs/loadtest/fan-in.yaml")
//	if err != nil { return err }
//	res, err := loadtest.Run(ctx, sc, loadtest.Target{Broker: "tcp://127.0.0.1:1883"}, loadtest.Options{})
//	if err != nil { return err }
//	loadtest.WriteTable(os.Stdout, loadtest.NewReport(res))
package loadtest
