package client_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/sluicemq/sluice/queue/client"
)

// A backend consuming the telemetry queue: 8 handlers at once, acked on success, retried with
// backoff on error, until the context ends.
func ExampleConsumer() {
	ctx, stop := context.WithTimeout(context.Background(), time.Minute)
	defer stop()
	c := &client.Client{BaseURL: "http://127.0.0.1:8080", APIKey: os.Getenv("SLUICE_API_KEY")}
	cons := &client.Consumer{Client: c, Queue: "telemetry", Workers: 8, Lease: 30 * time.Second,
		Handler: func(ctx context.Context, m client.Message) error {
			// Delivery is at-least-once: make this idempotent by m.ID.
			fmt.Printf("%s from %s on %s: %s\n", m.ID, m.ClientID, m.Topic, m.Payload)
			return nil
		}}
	if err := cons.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
}

// Sending messages from a backend (a replay, a producer that is not a device).
func ExampleProducer() {
	p := &client.Producer{Client: &client.Client{BaseURL: "http://127.0.0.1:8080"}, Queue: "jobs"}
	ids, err := p.Send(context.Background(), []client.NewMessage{{Topic: "replay/1", Payload: []byte(`{"v":1}`)}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	fmt.Println(len(ids), "stored")
}
