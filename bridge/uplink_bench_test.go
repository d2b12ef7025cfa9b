package bridge_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sluicemq/sluice/bridge"
	"github.com/sluicemq/sluice/mqtt"
	"github.com/sluicemq/sluice/queue"
)

// BenchmarkUplinkDrain measures how fast an uplink drains a backlog: each iteration puts 5,000
// messages of 256 bytes (16 topics) into the edge queue while the uplink is held back, then times
// their forwarding to an in-process Sluice upstream (no subscriber, no bridge: the uplink's own cost,
// with the edge queue's acks fsynced) until all are acked. msgs/s is the figure to read.
func BenchmarkUplinkDrain(b *testing.B) {
	for _, bc := range []struct {
		qos      byte
		version  int
		inflight int
	}{
		{1, 5, 256},
		{2, 5, 256},
		{1, 4, 256},
		{1, 5, 16},
	} {
		name := fmt.Sprintf("qos=%d", bc.qos)
		if bc.version == 4 {
			name += "/mqtt=3.1.1"
		}
		if bc.inflight != 256 {
			name += fmt.Sprintf("/inflight=%d", bc.inflight)
		}
		b.Run(name, func(b *testing.B) {
			srv, err := mqtt.New(mqtt.Options{Listeners: []mqtt.Listener{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0", AllowAnonymous: true}}})
			if err != nil {
				b.Fatal(err)
			}
			if err := srv.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_ = srv.Shutdown(ctx)
			}()
			edge := ulOpenEdge(b, b.TempDir(), ulEdgeConfig())
			defer edge.Close()
			o := ulOptions("bench", "tcp://"+srv.Addr("tcp").String())
			o.QoS, o.ProtocolVersion, o.MaxInFlight = bc.qos, bc.version, bc.inflight

			const per = 5000
			payload := make([]byte, 256)
			batch := make([]queue.Message, 0, 500)
			var total int
			var elapsed time.Duration
			b.SetBytes(per * int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				// The backlog is built with no uplink running; each iteration times a new uplink
				// (connection included) draining it.
				b.StopTimer()
				for i := 0; i < per; i += cap(batch) {
					batch = batch[:0]
					for k := range cap(batch) {
						batch = append(batch, queue.Message{Topic: fmt.Sprintf("d/%d", (i+k)%16), QoS: 1, Payload: payload})
					}
					if _, err := edge.Enqueue(context.Background(), "up", batch); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				start := time.Now()
				u, err := bridge.NewUplink(edge, o)
				if err != nil {
					b.Fatal(err)
				}
				if err := u.Start(); err != nil {
					b.Fatal(err)
				}
				for u.Status().Forwarded < per {
					time.Sleep(200 * time.Microsecond)
				}
				elapsed += time.Since(start)
				total += per
				ulClose(b, u)
			}
			if b.N > 0 && ulBacklog(b, edge) != 0 {
				b.Fatal("backlog left after the drain")
			}
			b.ReportMetric(float64(total)/elapsed.Seconds(), "msgs/s")
		})
	}
}
