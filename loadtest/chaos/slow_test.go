package chaos

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicemq/sluice/devices"
)

// rssCeiling is the broker's memory bound under a flood with stuck subscribers: payloads for a
// stuck subscriber are dropped (or parked up to max_inflight), never buffered without bound.
const rssCeiling = 256 << 20

// TestSlowSubscribers floods a topic that a healthy subscriber and a stuck one (a raw socket that
// subscribed and never reads, with a small receive buffer) are subscribed to, once per slow-subscriber
// policy, and checks the broker's memory, its drop counters against what the clients saw, and the
// policy's effect.
func TestSlowSubscribers(t *testing.T) {
	var (
		pubs     = 4
		rate     = pick(2000, 4000) // messages/s over all publishers
		floodFor = pick(4*time.Second, 20*time.Second)
		payload  = 2048 // 4 MB/s: the kernel's socket buffers towards the stuck subscriber fill within a second
	)
	var checks, figures []string
	defer func() { report(t, strings.Join(checks, ", "), strings.Join(figures, "; ")) }()
	for _, policy := range []string{"drop", "disconnect", "backpressure"} {
		t.Run(policy, func(t *testing.T) {
			dir := t.TempDir()
			after := "2s"
			if policy == "backpressure" {
				after = "1h" // the stuck subscriber is closed by the test, not by the broker
			}
			b := startBroker(t, writeConfig(t, dir, config{
				dataDir: dir + "/data",
				limits:  "    max_pending_writes: 64\n    max_inflight: 64\n",
				mqtt:    fmt.Sprintf("  slow_subscribers: {policy: %s, disconnect_after: %s}\n", policy, after),
			}))
			var peak atomic.Int64
			stopRSS := sampleRSS(b, &peak)

			var healthy atomic.Int64
			hc := mustDevice(t, b.mqttAddr, devices.ClientOptions{ClientID: "healthy", CleanSession: true, OnMessage: func(devices.Message) {
				healthy.Add(1)
			}})
			if err := hc.Subscribe(context.Background(), "flood/#", 0); err != nil {
				t.Fatal(err)
			}
			stuck, err := dialRaw(b.mqttAddr, "stuck", true, 600, 4096)
			if err != nil {
				t.Fatal(err)
			}
			defer stuck.Close()
			if _, err := stuck.subscribe(1, 0, "flood/#"); err != nil {
				t.Fatal(err)
			}

			fl := startFlood(t, b.mqttAddr, pubs, rate, payload)
			var stuckGot int
			var stuckClosed bool
			switch policy {
			case "drop", "disconnect":
				time.Sleep(floodFor) // the flood runs for this long: it is the load, not a synchronisation
				published := fl.stop()
				waitFor(t, 30*time.Second, "the broker to read every publish", func() bool {
					return b.metric(t, `sluice_mqtt_messages_received_total{qos="0"}`) >= float64(published)
				})
				stuckGot, stuckClosed = drain(stuck, time.Second)
				quiet(&healthy, time.Second)
				m, err := b.metrics()
				if err != nil {
					t.Fatal(err)
				}
				dropped := m[`sluice_mqtt_dropped_messages_total{reason="slow_subscriber_qos0"}`]
				disc := m["sluice_mqtt_slow_subscriber_disconnects_total"]
				h := healthy.Load()
				figures = append(figures, fmt.Sprintf("%s: published %d, healthy got %d, stuck got %d, dropped %v, peak RSS %d MiB",
					policy, published, h, stuckGot, dropped, peak.Load()>>20))
				t.Log(figures[len(figures)-1], "; disconnects ", disc)
				if policy == "drop" {
					// Every message not delivered to a subscriber was counted as dropped, no more.
					want := float64(2*published - int64(stuckGot) - h)
					if dropped != want || dropped == 0 {
						t.Errorf("drop: dropped counter %v, clients missed %v (published %d to 2 subscribers, healthy got %d, stuck got %d)",
							dropped, want, published, h, stuckGot)
					}
					if stuckClosed || disc != 0 {
						t.Errorf("drop: the stuck subscriber was disconnected (closed %v, counter %v)", stuckClosed, disc)
					}
					checks = append(checks, "drop: drops counted = messages missed")
				} else {
					if !stuckClosed || disc < 1 {
						t.Errorf("disconnect: stuck subscriber closed %v, slow_subscriber_disconnects_total %v; want closed and ≥ 1", stuckClosed, disc)
					}
					if dropped == 0 || dropped > float64(2*published-int64(stuckGot)-h) {
						t.Errorf("disconnect: dropped %v, clients missed at most %d", dropped, 2*published-int64(stuckGot)-h)
					}
					checks = append(checks, "disconnect: stuck subscriber disconnected after disconnect_after")
				}
				select {
				case <-hc.Done():
					t.Errorf("%s: the healthy subscriber was disconnected: %v", policy, hc.Err())
				default:
				}
			case "backpressure":
				// Phase A: the stuck subscriber holds the publishers back. Compare the last second
				// of it (socket buffers full by then) with what the publishers offer.
				time.Sleep(floodFor - time.Second) // the flood runs: load, not synchronisation
				inA0 := b.metric(t, `sluice_mqtt_messages_received_total{qos="0"}`)
				time.Sleep(time.Second)
				inA := b.metric(t, `sluice_mqtt_messages_received_total{qos="0"}`) - inA0
				stuck.Close() // the subscriber goes away: nobody is slow any more
				// Phase B: the publishers resume.
				gotB0 := healthy.Load()
				inB0 := b.metric(t, `sluice_mqtt_messages_received_total{qos="0"}`)
				time.Sleep(floodFor)
				inB := b.metric(t, `sluice_mqtt_messages_received_total{qos="0"}`) - inB0
				gotB := healthy.Load() - gotB0
				published := fl.stop()
				quiet(&healthy, time.Second)
				h := healthy.Load()
				dropped := b.metric(t, `sluice_mqtt_dropped_messages_total{reason="slow_subscriber_qos0"}`)
				figures = append(figures, fmt.Sprintf("backpressure: broker read %.0f msgs/s while stuck, %.0f msgs/s after (offered %d/s); published %d, healthy got %d, dropped %v, peak RSS %d MiB",
					inA, inB/floodFor.Seconds(), rate, published, h, dropped, peak.Load()>>20))
				t.Log(figures[len(figures)-1])
				if inA > 0.25*float64(rate) {
					t.Errorf("backpressure: with a stuck subscriber the broker read %.0f msgs/s of %d/s offered; the publishers were not slowed", inA, rate)
				}
				if inB < 0.5*float64(rate)*floodFor.Seconds() || gotB < int64(0.5*float64(rate)*floodFor.Seconds()) {
					t.Errorf("backpressure: after the stuck subscriber left, the broker read %.0f and the healthy subscriber got %d in %v (offered %d/s); the publishers did not resume",
						inB, gotB, floodFor, rate)
				}
				checks = append(checks, "backpressure: publishers held while stuck, resumed after")
				// QoS 0 under backpressure: a publisher waits (bounded) for a full subscriber queue, then
				// the message is dropped and counted (configs/sluice.yaml). Whatever the healthy subscriber
				// missed must be in the counter.
				if missed := float64(published - h); dropped < missed {
					t.Errorf("backpressure: the healthy subscriber missed %v of %d QoS 0 messages but only %v drops were counted", missed, published, dropped)
				}
				checks = append(checks, "backpressure: QoS 0 drops counted")
			}
			stopRSS()
			if p := peak.Load(); p > rssCeiling {
				t.Errorf("%s: broker RSS peaked at %d MiB, ceiling %d MiB", policy, p>>20, rssCeiling>>20)
			}
			if err := b.healthy(); err != nil {
				t.Fatal(err)
			}
			b.stop()
		})
	}
	checks = append(checks, fmt.Sprintf("RSS < %d MiB", rssCeiling>>20))
}

// sampleRSS records the broker's peak RSS every 50ms until the returned stop is called.
func sampleRSS(b *broker, peak *atomic.Int64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if r := b.rss(); r > peak.Load() {
				peak.Store(r)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// drain reads what rc holds until nothing arrives for idle; it returns the PUBLISH packets read and
// whether the broker closed the connection.
func drain(rc *rawClient, idle time.Duration) (int, bool) {
	n := 0
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); {
		_ = rc.SetReadDeadline(time.Now().Add(idle))
		first, _, err := readPacket(rc.r)
		if err != nil {
			ne, ok := err.(net.Error)
			return n, !(ok && ne.Timeout())
		}
		if first>>4 == pktPublish {
			n++
		}
	}
	return n, false
}

// quiet waits until counter has not changed for idle (at most 30s).
func quiet(counter *atomic.Int64, idle time.Duration) {
	last, since := counter.Load(), time.Now()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if v := counter.Load(); v != last {
			last, since = v, time.Now()
		} else if time.Since(since) >= idle {
			return
		}
	}
}

// flood is n QoS 0 publishers sending payload-byte messages to flood/<i> at rate messages/s in all.
type flood struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	sent  atomic.Int64
	once  sync.Once
}

func startFlood(t testing.TB, addr string, n, rate, payload int) *flood {
	t.Helper()
	f := &flood{stopc: make(chan struct{})}
	for i := range n {
		c := mustDevice(t, addr, devices.ClientOptions{ClientID: fmt.Sprintf("flood-%d", i), CleanSession: true})
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer c.Close()
			msg := devices.Message{Topic: fmt.Sprintf("flood/%d", i), Payload: make([]byte, payload)}
			per := max(1, rate/n/100) // messages per 10ms tick
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-f.stopc:
					return
				case <-tick.C:
				}
				for range per {
					if c.Publish(context.Background(), msg) != nil {
						return
					}
					f.sent.Add(1)
				}
			}
		}()
	}
	return f
}

func (f *flood) count() int64 { return f.sent.Load() }

// stop ends the publishers (each closes with DISCONNECT after its last publish) and returns how
// many messages they published.
func (f *flood) stop() int64 {
	f.once.Do(func() { close(f.stopc) })
	f.wg.Wait()
	return f.sent.Load()
}
