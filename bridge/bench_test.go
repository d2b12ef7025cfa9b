package bridge_test

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/sluicemq/sluice/bridge"
	"github.com/sluicemq/sluice/mqtt/mqtttest"
	"github.com/sluicemq/sluice/queue"
)

// rawConn is a minimal MQTT 5 publisher for benchmarks: paho's per-message overhead would
// otherwise dominate on a 2-core machine shared with the broker. It keeps up to window QoS 1
// publishes in flight and reports each publish → PUBACK latency.
type rawConn struct {
	conn net.Conn
	bw   *bufio.Writer
	br   *bufio.Reader
	pkt  []byte // a PUBLISH with its packet id at idOff
	off  int
	sent []time.Duration // send time (since epoch) by packet id, reused by every run
}

func dialRaw(tb testing.TB, addr, id, topic string, payload []byte) *rawConn {
	tb.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	rc := &rawConn{conn: conn, bw: bufio.NewWriterSize(conn, 64<<10), br: bufio.NewReaderSize(conn, 64<<10),
		// Made here, outside the timed loop. Durations, not time.Time: 100 connections' tables of
		// time.Time (with its *Location) were 150 MB for the garbage collector to scan.
		sent: make([]time.Duration, 65536)}
	// CONNECT v5: clean start, keep-alive 60, no properties.
	var vh []byte
	vh = append(vh, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0)
	vh = binary.BigEndian.AppendUint16(vh, uint16(len(id)))
	vh = append(vh, id...)
	rc.writePacket(0x10, vh)
	if err := rc.bw.Flush(); err != nil {
		tb.Fatal(err)
	}
	typ, body, err := rc.readPacket()
	if err != nil || typ != 2 || len(body) < 2 || body[1] != 0 {
		tb.Fatalf("connect: type %d body %v err %v", typ, body, err)
	}
	// PUBLISH QoS 1: topic, packet id, empty properties, payload.
	var pb []byte
	pb = binary.BigEndian.AppendUint16(pb, uint16(len(topic)))
	pb = append(pb, topic...)
	idAt := len(pb)
	pb = append(pb, 0, 0, 0)
	pb = append(pb, payload...)
	hdr := mqtttest.AppendHeader(nil, 0x32, len(pb))
	rc.pkt = append(hdr, pb...)
	rc.off = len(hdr) + idAt
	return rc
}

// epoch is the origin of rawConn's send times (monotonic clock).
var epoch = time.Now()

func (rc *rawConn) writePacket(typ byte, body []byte) { mqtttest.WritePacket(rc.bw, typ, body) }

func (rc *rawConn) readPacket() (typ byte, body []byte, err error) {
	first, body, err := mqtttest.ReadPacket(rc.br)
	return first >> 4, body, err
}

// pacing makes rawConn.run open-loop: one message every interval, the first at offset (so that
// connections sharing a rate are spread over the interval instead of sending in bursts).
// Latency (µs) is counted from the moment the message is written, into hist; how late the
// generator woke up for each send (Go timer granularity, CPU shared with the broker) goes into
// lag. The 200-message window never fills at the rates used, so a broker stall cannot hold sends
// back and hide itself from the latency figure.
type pacing struct {
	interval, offset time.Duration
	mu               *sync.Mutex
	hist, lag        *hdrhistogram.Histogram
}

// run publishes n messages keeping up to window in flight, as fast as acks allow, or paced.
func (rc *rawConn) run(n, window int, pace *pacing) error {
	sent := rc.sent
	slots := make(chan struct{}, window)
	errc := make(chan error, 1)
	go func() {
		for got := 0; got < n; got++ {
			typ, body, err := rc.readPacket()
			if err != nil {
				errc <- err
				return
			}
			if typ != 4 || len(body) < 2 {
				got--
				continue
			}
			if len(body) > 2 && body[2] >= 0x80 {
				errc <- fmt.Errorf("puback reason %#x", body[2])
				return
			}
			id := binary.BigEndian.Uint16(body)
			if pace != nil {
				d := time.Since(epoch) - sent[id]
				pace.mu.Lock()
				_ = pace.hist.RecordValue(d.Microseconds())
				pace.mu.Unlock()
			}
			<-slots
		}
		errc <- nil
	}()
	start := time.Now()
	for i := range n {
		slots <- struct{}{}
		id := uint16(i%65535 + 1)
		if pace != nil {
			at := start.Add(pace.offset + time.Duration(i)*pace.interval)
			if d := time.Until(at); d > 0 {
				time.Sleep(d) // pacing the load, not synchronisation
			}
			lag := time.Since(at)
			pace.mu.Lock()
			_ = pace.lag.RecordValue(lag.Microseconds())
			pace.mu.Unlock()
		}
		sent[id] = time.Since(epoch)
		binary.BigEndian.PutUint16(rc.pkt[rc.off:], id)
		if _, err := rc.bw.Write(rc.pkt); err != nil {
			return err
		}
		if len(slots) == cap(slots) || pace != nil || i == n-1 {
			if err := rc.bw.Flush(); err != nil {
				return err
			}
		}
	}
	return <-errc
}

func (rc *rawConn) close() {
	rc.writePacket(0xe0, []byte{0, 0})
	_ = rc.bw.Flush()
	_ = rc.conn.Close()
}

// benchSync is the queue sync policy of the ingest benchmark: SLUICE_BENCH_SYNC or "always".
var benchSync = cmp.Or(os.Getenv("SLUICE_BENCH_SYNC"), "always")

// BenchmarkBridgeIngest measures durable QoS 1 ingest (sync "always", 256-byte payloads) with
// the bridge on (the topic matches a rule) and off (same broker, a topic without rule). One
// iteration is a round in which every connection publishes a fixed number of messages;
// msgs/s is the figure to read. publishers=1/inflight=100 is a single busy gateway connection.
// All variants run on our mqtt.Server; bridge=pipelined gates PUBACKs (mqtt.Server.GateAck) as
// sluice serve does: compare it with bridge=blocking for the gain. recs/commit is the mean group
// commit, fsync-µs the mean fsync. cpu-µs/msg is the CPU time of the whole process (broker and
// load generator) per message: steadier than msgs/s on a shared machine, and what bounds msgs/s
// once the cores are busy.
// SLUICE_BENCH_SYNC=none shows the cost without fsync.
func BenchmarkBridgeIngest(b *testing.B) {
	type variant struct {
		on, pipeline bool
		name         string
	}
	for _, c := range []struct{ publishers, inflight, perRound int }{{100, 1, 50}, {100, 8, 200}, {100, 32, 400}, {100, 128, 1280}, {1, 100, 5000}} {
		for _, v := range []variant{{true, false, "bridge=blocking"}, {true, true, "bridge=pipelined"}, {false, false, "bridge=off"}} {
			name := fmt.Sprintf("qos=1/publishers=%d/inflight=%d/%s", c.publishers, c.inflight, v.name)
			on := v.on
			b.Run(name, func(b *testing.B) {
				r := newRig(b, rigOptions{rules: []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}},
					queues: map[string]queue.Config{"telemetry": {Sync: benchSync}}, pipeline: v.pipeline})
				payload := make([]byte, 256)
				conns := make([]*rawConn, c.publishers)
				for i := range conns {
					id := fmt.Sprintf("pub%03d", i)
					topic := "devices/" + id + "/telemetry"
					if !on {
						topic = "plain/" + id + "/telemetry"
					}
					conns[i] = dialRaw(b, r.addr, id, topic, payload)
				}
				defer func() {
					for _, rc := range conns {
						rc.close()
					}
				}()
				perIter := c.publishers * c.perRound
				b.SetBytes(int64(len(payload) * perIter))
				total := 0
				errs := make([]error, len(conns))
				cpu0 := cpuTime()
				for b.Loop() {
					var wg sync.WaitGroup
					for i, rc := range conns {
						wg.Go(func() { errs[i] = rc.run(c.perRound, c.inflight, nil) })
					}
					wg.Wait()
					for _, err := range errs {
						if err != nil {
							b.Fatal(err)
						}
					}
					total += perIter
				}
				b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "msgs/s")
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(total)/1e3, "cpu-µs/msg")
				if on {
					b.ReportMetric(meanEnqueueMicros(b, r), "enqueue-µs")
					commits, fsyncs := sum(b, r, "sluice_queue_commits_total"), sum(b, r, "sluice_queue_fsyncs_total")
					b.ReportMetric(sum(b, r, "sluice_queue_committed_records_total")/commits, "recs/commit")
					b.ReportMetric(sum(b, r, "sluice_queue_fsync_seconds_total")/fsyncs*1e6, "fsync-µs")
					if st, err := r.m.Stats("telemetry"); err != nil || st.Ready != int64(total) {
						b.Fatalf("queue holds %d of %d (%v)", st.Ready, total, err)
					}
				}
			})
		}
	}
}

// BenchmarkBridgeIngestRatio measures what BenchmarkBridgeIngest's bridge=pipelined and
// bridge=off compare, interleaved on one broker: publishers connections publish to bridged topics
// and as many others to topics without a rule; each iteration times one round of each set in
// turn (durable QoS 1, sync "always", 256-byte payloads), with a garbage collection between them
// outside the timing so that neither pays for the other's garbage. Interleaving at this grain
// takes the host's drift out of the ratio: on a shared 2-core VM, runs a few seconds apart
// differ by ±15 %. ratio is bridged msgs/s over unbridged msgs/s.
func BenchmarkBridgeIngestRatio(b *testing.B) {
	for _, c := range []struct{ publishers, inflight, perRound int }{{100, 8, 200}, {100, 32, 400}, {100, 128, 1280}} {
		b.Run(fmt.Sprintf("qos=1/publishers=%d/inflight=%d", c.publishers, c.inflight), func(b *testing.B) {
			r := newRig(b, rigOptions{rules: []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}},
				queues: map[string]queue.Config{"telemetry": {Sync: benchSync}}, pipeline: true})
			payload := make([]byte, 256)
			sets := [2][]*rawConn{} // 0: bridged, 1: no rule
			for k, prefix := range []string{"devices/", "plain/"} {
				for i := range c.publishers {
					id := fmt.Sprintf("pub%d-%03d", k, i)
					sets[k] = append(sets[k], dialRaw(b, r.addr, id, prefix+id+"/telemetry", payload))
				}
			}
			defer func() {
				for _, set := range sets {
					for _, rc := range set {
						rc.close()
					}
				}
			}()
			var wall, cpu [2]time.Duration
			errs := make([]error, c.publishers)
			round := func(k int) {
				runtime.GC()
				start, cpu0 := time.Now(), cpuTime()
				var wg sync.WaitGroup
				for i, rc := range sets[k] {
					wg.Go(func() { errs[i] = rc.run(c.perRound, c.inflight, nil) })
				}
				wg.Wait()
				wall[k] += time.Since(start)
				cpu[k] += cpuTime() - cpu0
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			rounds := 0
			for b.Loop() {
				round(rounds % 2) // alternate which goes first
				round(1 - rounds%2)
				rounds++
			}
			total := float64(rounds * c.publishers * c.perRound)
			on, off := total/wall[0].Seconds(), total/wall[1].Seconds()
			b.ReportMetric(on, "bridged-msgs/s")
			b.ReportMetric(off, "unbridged-msgs/s")
			b.ReportMetric(on/off, "ratio")
			b.ReportMetric(cpu[0].Seconds()*1e6/total, "bridged-cpu-µs/msg")
			b.ReportMetric(cpu[1].Seconds()*1e6/total, "unbridged-cpu-µs/msg")
			if st, err := r.m.Stats("telemetry"); err != nil || st.Ready != int64(total) {
				b.Fatalf("queue holds %d of %d (%v)", st.Ready, int64(total), err)
			}
		})
	}
}

// BenchmarkPublishLatency reports publish → PUBACK latency percentiles of bridged QoS 1
// messages (sync "always") at a steady open-loop rate spread evenly over 50 connections, and of the
// same load on a topic with no rule (bridge=off: what the broker and the load generator cost alone). One
// iteration is 100 ms of load; run 30 or more for a stable p99. lag-p99-µs is how late the load
// generator itself sent (see pacing): it shares the two cores with the broker.
func BenchmarkPublishLatency(b *testing.B) {
	for _, v := range []struct {
		name         string
		on, pipeline bool
	}{{"bridge=off", false, true}, {"bridge=blocking", true, false}, {"bridge=pipelined", true, true}} {
		rate := 10000
		b.Run(fmt.Sprintf("qos=1/rate=%d/publishers=50/%s", rate, v.name), func(b *testing.B) {
			r := newRig(b, rigOptions{rules: []bridge.Rule{{Filter: "devices/+/telemetry", Queue: "telemetry"}}, pipeline: v.pipeline})
			const publishers = 50
			payload := make([]byte, 256)
			conns := make([]*rawConn, publishers)
			for i := range conns {
				id := fmt.Sprintf("lat%03d", i)
				topic := "devices/" + id + "/telemetry"
				if !v.on {
					topic = "plain/" + id + "/telemetry" // no rule: the broker alone, for comparison
				}
				conns[i] = dialRaw(b, r.addr, id, topic, payload)
			}
			defer func() {
				for _, rc := range conns {
					rc.close()
				}
			}()
			per := rate / publishers / 10 // 100 ms
			interval := time.Duration(publishers) * time.Second / time.Duration(rate)
			var mu sync.Mutex
			hist, lag := hdrhistogram.New(1, 10_000_000, 3), hdrhistogram.New(1, 10_000_000, 3)
			errs := make([]error, publishers)
			for b.Loop() {
				var wg sync.WaitGroup
				for i, rc := range conns {
					pace := &pacing{interval: interval, offset: time.Duration(i) * interval / publishers, mu: &mu, hist: hist, lag: lag}
					wg.Go(func() { errs[i] = rc.run(per, 200, pace) })
				}
				wg.Wait()
				for _, err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(hist.ValueAtQuantile(50)), "p50-µs")
			b.ReportMetric(float64(hist.ValueAtQuantile(99)), "p99-µs")
			b.ReportMetric(float64(hist.ValueAtQuantile(99.9)), "p99.9-µs")
			b.ReportMetric(float64(lag.ValueAtQuantile(99)), "lag-p99-µs")
			if v.on { // the disk's share: the mean fsync and how many records shared one
				fsyncs := sum(b, r, "sluice_queue_fsyncs_total")
				b.ReportMetric(sum(b, r, "sluice_queue_fsync_seconds_total")/fsyncs*1e6, "fsync-µs")
				b.ReportMetric(sum(b, r, "sluice_queue_committed_records_total")/sum(b, r, "sluice_queue_commits_total"), "recs/commit")
			}
		})
	}
}

// sum adds up the values of every series of the metric name in r's registry.
func sum(tb testing.TB, r *rig, name string) float64 {
	mfs, err := r.reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue()
			}
		}
	}
	return v
}

// meanEnqueueMicros is the mean time a bridged publish waited for its record to be durable.
func meanEnqueueMicros(tb testing.TB, r *rig) float64 {
	mfs, err := r.reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "sluice_bridge_enqueue_duration_seconds" {
			for _, m := range mf.GetMetric() {
				if h := m.GetHistogram(); h.GetSampleCount() > 0 {
					return h.GetSampleSum() / float64(h.GetSampleCount()) * 1e6
				}
			}
		}
	}
	return 0
}
