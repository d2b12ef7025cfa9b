package queue_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/sluicemq/sluice/queue"
)

func Example() {
	dir, _ := os.MkdirTemp("", "sluice-example")
	defer os.RemoveAll(dir)
	m, err := queue.Open(dir, queue.Options{Queues: map[string]queue.Config{"telemetry": {MaxAttempts: 3}}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	ctx := context.Background()
	if _, err := m.Enqueue(ctx, "telemetry", []queue.Message{{Topic: "devices/d1/telemetry", QoS: 1, Payload: []byte(`{"t":21.5}`)}}); err != nil {
		fmt.Println(err)
		return
	}
	ds, err := m.Receive(ctx, "telemetry", 10, 30*time.Second) // blocks until a message is ready
	if err != nil {
		fmt.Println(err)
		return
	}
	var receipts []string
	for _, d := range ds {
		fmt.Printf("attempt %d: %s %s\n", d.Attempt, d.Topic, d.Payload)
		receipts = append(receipts, d.Receipt)
	}
	results, err := m.Ack("telemetry", receipts)
	fmt.Println(results, err)
	// Output:
	// attempt 1: devices/d1/telemetry {"t":21.5}
	// [<nil>] <nil>
}
