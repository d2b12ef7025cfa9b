// Package devices simulates fleets of MQTT devices over the network: MQTT 5 through
// github.com/eclipse/paho.golang and MQTT 3.1.1 through github.com/eclipse/paho.mqtt.golang.
// It imports nothing of the broker, so it can drive any broker.
//
// A Fleet (from a Config, read strictly from YAML by LoadConfig) connects Count devices at
// ConnectRate, and each device publishes a payload profile (JSON telemetry as random walks, a
// GPS track, or a binary blob) every Interval ± Jitter to its topic. Every payload carries the
// device id, a sequence number and the send time (DecodeStamp reads them back), so a subscriber
// can measure latency, loss, duplicates and reordering. Devices keep a retained status topic with a
// will that marks them offline, answer commands, reconnect with exponential backoff and jitter,
// and can simulate network flaps.
//
// Memory: paho.golang sizes a channel by the ReceiveMaximum sent in CONNECT (65535 entries ≈ 0.5 MiB
// per client by default); devices sends 32, which keeps 10,000 devices well under 1 GiB (see
// BenchmarkFleetMemory).
//
// Concurrency: a Client is safe for concurrent use. Fleet.Run blocks; it starts one goroutine per
// device (plus the paho client's own) and returns only after all of them ended. Stats may be read
// at any time.
//
// Example:
//
//	cfg := devices.Config{Broker: "tcp://127.0.0.1:1883", Count: 100, QoS: 1}
//	f, err := devices.NewFleet(cfg, devices.Options{})
//	if err != nil { return err }
//	ctx, cancel := context.WithTimeout(ctx, time.Minute)
//	defer cancel()
//	err = f.Run(ctx) // then f.Stats()
package devices
