package mqtt

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemq/sluice/mqtt/mqtttest"
)

// The benchmarks drive the broker through its real TCP listener with lean raw MQTT 5 clients (a
// paho client per publisher costs more CPU than the broker on a 2-core machine): publishers keep
// up to `window` QoS 1 messages in flight, the subscriber acks in batches. Figures are messages
// delivered to subscribers per second; "lost" counts messages acked to a publisher but never
// delivered.

const benchPayload = 64

type rawClient struct {
	nc net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

func rawDial(tb testing.TB, addr, id string, expiry uint32, recvMax uint16) *rawClient {
	tb.Helper()
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	c := &rawClient{nc: nc, br: bufio.NewReaderSize(nc, 64<<10), bw: bufio.NewWriterSize(nc, 64<<10)}
	var props []byte
	if expiry > 0 {
		props = append(props, 0x11, byte(expiry>>24), byte(expiry>>16), byte(expiry>>8), byte(expiry))
	}
	if recvMax > 0 {
		props = append(props, 0x21, byte(recvMax>>8), byte(recvMax))
	}
	flags := byte(0x02)
	if expiry > 0 {
		flags = 0
	}
	var vh []byte
	vh = append(vh, 0, 4, 'M', 'Q', 'T', 'T', 5, flags, 0, 60, byte(len(props)))
	vh = append(vh, props...)
	vh = append(vh, byte(len(id)>>8), byte(len(id)))
	vh = append(vh, id...)
	c.bw.Write(mqtttest.AppendHeader(nil, 0x10, len(vh)))
	c.bw.Write(vh)
	c.bw.Flush()
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, body, err := c.readPacket()
	if err != nil || typ != 0x20 || body[1] != 0 {
		tb.Fatalf("connect %s: type %#x body %x err %v", id, typ, body, err)
	}
	_ = nc.SetReadDeadline(time.Time{})
	return c
}

func (c *rawClient) readPacket() (byte, []byte, error) { return mqtttest.ReadPacket(c.br) }

func (c *rawClient) subscribe(tb testing.TB, filter string, qos byte) {
	tb.Helper()
	p := []byte{0, 1, 0, byte(len(filter) >> 8), byte(len(filter))}
	p = append(p, filter...)
	p = append(p, qos)
	c.bw.Write(mqtttest.AppendHeader(nil, 0x82, len(p)))
	c.bw.Write(p)
	c.bw.Flush()
	typ, body, err := c.readPacket()
	if err != nil || typ != 0x90 || body[len(body)-1] != qos {
		tb.Fatalf("subscribe: %#x %x %v", typ, body, err)
	}
}

// publishPacketID appends a QoS q PUBLISH (MQTT 5, no properties) to dst.
func appendPublish(dst []byte, topic string, qos byte, id uint16, payload []byte) []byte {
	rem := 2 + len(topic) + 1 + len(payload)
	if qos > 0 {
		rem += 2
	}
	dst = mqtttest.AppendHeader(dst, 0x30|qos<<1, rem)
	dst = append(dst, byte(len(topic)>>8), byte(len(topic)))
	dst = append(dst, topic...)
	if qos > 0 {
		dst = append(dst, byte(id>>8), byte(id))
	}
	dst = append(dst, 0)
	return append(dst, payload...)
}

// runPublisher publishes n messages on c with at most window QoS 1 messages unacked and returns
// how many were acked (for QoS 0: written).
func runPublisher(c *rawClient, topic string, qos byte, n, window int) int64 {
	payload := make([]byte, benchPayload)
	if qos == 0 {
		var buf []byte
		for range n {
			buf = appendPublish(buf[:0], topic, 0, 0, payload)
			c.bw.Write(buf)
		}
		c.bw.Flush()
		return int64(n)
	}
	sem := make(chan struct{}, window)
	var acked atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for acked.Load() < int64(n) {
			typ, body, err := c.readPacket()
			if err != nil {
				return
			}
			if typ>>4 == 4 && (len(body) < 3 || body[2] < 0x80) {
				acked.Add(1)
				<-sem
			}
		}
	}()
	var buf []byte
	id := uint16(0)
	for range n {
		select {
		case sem <- struct{}{}:
		default:
			c.bw.Flush()
			sem <- struct{}{}
		}
		id++
		if id == 0 {
			id = 1
		}
		buf = appendPublish(buf[:0], topic, qos, id, payload)
		c.bw.Write(buf)
	}
	c.bw.Flush()
	<-done
	return acked.Load()
}

// runSubscriber reads PUBLISH packets, acks QoS 1 ones (flushing when its input is drained), and
// counts them until want arrive or no message arrives for idle.
func runSubscriber(c *rawClient, got, last *atomic.Int64, want int64, idle time.Duration) {
	for got.Load() < want {
		_ = c.nc.SetReadDeadline(time.Now().Add(idle))
		typ, body, err := c.readPacket()
		if err != nil {
			return
		}
		if typ>>4 != 3 {
			continue
		}
		got.Add(1)
		last.Store(time.Now().UnixNano())
		if qos := (typ >> 1) & 3; qos == 1 {
			tl := int(binary.BigEndian.Uint16(body))
			c.bw.Write([]byte{0x40, 2, body[2+tl], body[3+tl]})
			if c.br.Buffered() == 0 {
				c.bw.Flush()
			}
		}
	}
	c.bw.Flush()
}

type fanResult struct {
	published, received int64
	elapsed             time.Duration
	reg                 *prometheus.Registry
}

// fan runs publishers → subscribers over srv: every subscriber subscribes to "bench/#".
func fan(b *testing.B, srv *Server, qos byte, publishers, subscribers int, subExpiry uint32) fanResult {
	addr := srv.Addr("tcp").String()
	subs := make([]*rawClient, subscribers)
	for i := range subs {
		subs[i] = rawDial(b, addr, fmt.Sprintf("bsub-%d", i), subExpiry, 1000)
		subs[i].subscribe(b, "bench/#", qos)
	}
	pubs := make([]*rawClient, publishers)
	for i := range pubs {
		pubs[i] = rawDial(b, addr, fmt.Sprintf("bpub-%d", i), 0, 0)
	}
	defer func() {
		for _, c := range append(subs, pubs...) {
			c.nc.Close()
		}
	}()
	n := b.N
	per := max(1, n/publishers)
	total := int64(per * publishers)

	counts := make([]atomic.Int64, subscribers)
	var last atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for i, s := range subs {
		wg.Add(1)
		go func() { defer wg.Done(); runSubscriber(s, &counts[i], &last, total, 10*time.Second) }()
	}
	var published atomic.Int64
	var pwg sync.WaitGroup
	for i, p := range pubs {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			published.Add(runPublisher(p, fmt.Sprintf("bench/%d", i), qos, per, 256))
		}()
	}
	pwg.Wait()
	wg.Wait()
	elapsed := time.Duration(last.Load() - start.UnixNano()) // to the last delivery, not the idle timeout
	if elapsed <= 0 {
		elapsed = time.Since(start)
	}
	var received int64
	for i := range counts {
		received += counts[i].Load()
	}
	reg, _ := srv.opts.Registerer.(*prometheus.Registry)
	return fanResult{published: published.Load() * int64(subscribers), received: received, elapsed: elapsed, reg: reg}
}

// report prints msgs/s, lost (acked to publishers, never delivered) and counted (drops the broker
// counted in its metrics: every lost message must be counted there).
func report(b *testing.B, r fanResult) {
	b.ReportMetric(float64(r.received)/r.elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(r.published-r.received), "lost")
	if r.reg != nil {
		b.ReportMetric(counterValue(b, r.reg, "sluice_mqtt_dropped_messages_total", nil)+
			counterValue(b, r.reg, "sluice_mqtt_inflight_full_dropped_total", nil), "counted")
	}
}

func benchServer(b *testing.B, opts Options, mods ...func(*Server)) *Server {
	if opts.Limits.MaxInflight == 0 {
		opts.Limits.MaxInflight = 1000
	}
	if opts.Limits.MaxPendingWrites == 0 {
		opts.Limits.MaxPendingWrites = 1024
	}
	opts.Limits.ReceiveMaximum = 256
	opts.Limits.MaxConnections = -1
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	return startServerWith(b, opts, mods...)
}

// BenchmarkFanIn: 20 publishers → 1 subscriber, under each slow-subscriber policy. With "drop" the
// publishers outrun the single subscriber and messages are lost (counted); "backpressure" holds
// the publishers to the subscriber's pace and loses none.
func BenchmarkFanIn(b *testing.B) {
	for _, qos := range []byte{0, 1} {
		for _, policy := range []string{PolicyDrop, PolicyBackpressure} {
			b.Run(fmt.Sprintf("qos=%d/publishers=20/slow=%s", qos, policy), func(b *testing.B) {
				srv := benchServer(b, Options{Slow: SlowSubscribers{Policy: policy}})
				report(b, fan(b, srv, qos, 20, 1, 0))
			})
		}
	}
	// The write-coalescing lever: the same QoS 1 run with every packet written at once.
	for _, coalesce := range []bool{true, false} {
		b.Run(fmt.Sprintf("qos=1/publishers=20/slow=backpressure/coalesce=%v", coalesce), func(b *testing.B) {
			srv := benchServer(b, Options{Slow: SlowSubscribers{Policy: PolicyBackpressure}}, func(s *Server) { s.noCoalesce = !coalesce })
			report(b, fan(b, srv, 1, 20, 1, 0))
		})
	}
}

func BenchmarkFanOut(b *testing.B) {
	for _, qos := range []byte{0, 1} {
		for _, subs := range []int{10, 100} {
			b.Run(fmt.Sprintf("qos=%d/subscribers=%d", qos, subs), func(b *testing.B) {
				srv := benchServer(b, Options{Slow: SlowSubscribers{Policy: PolicyBackpressure}})
				report(b, fan(b, srv, qos, 1, subs, 0))
			})
		}
	}
}

// BenchmarkQoS1FanIn measures the storage's cost on the QoS 1 path: 20 publishers → one subscriber
// with a persistent session (so each message is written to and deleted from the in-flight store).
func BenchmarkQoS1FanIn(b *testing.B) {
	for _, st := range []string{"none", "bolt", "bolt-sync"} {
		b.Run("storage="+st, func(b *testing.B) {
			opts := Options{Slow: SlowSubscribers{Policy: PolicyBackpressure}}
			if st != "none" {
				opts.StorageDir = b.TempDir()
				opts.StorageSync = st == "bolt-sync"
			}
			srv := benchServer(b, opts)
			report(b, fan(b, srv, 1, 20, 1, 3600))
		})
	}
}

// BenchmarkIdleConnections measures broker memory per idle MQTT 5 connection (CONNECT done, no
// traffic): the growth of the broker process's HeapInuse+StackInuse divided by the number of
// connections, and its heap and stack parts. The clients run in a child process (this test binary
// re-executed), so their sockets neither count nor use the broker's file descriptors. With
// ping=true every client has also had one PINGREQ answered, as a live idle client has after its
// first keep-alive: memory must not grow with it.
func BenchmarkIdleConnections(b *testing.B) {
	for _, run := range []struct {
		n    int
		ping bool
	}{{1000, false}, {10000, false}, {10000, true}} {
		n := run.n
		b.Run(fmt.Sprintf("conns=%d/ping=%v", n, run.ping), func(b *testing.B) {
			var lim syscall.Rlimit
			need := uint64(n + 500)
			if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < need {
				lim.Cur = min(lim.Max, need)
				_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
				_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
			}
			if lim.Cur < need {
				b.Skipf("RLIMIT_NOFILE %d is too low for %d connections", lim.Cur, n)
			}
			srv := benchServer(b, Options{Limits: Limits{MaxPendingWrites: 256, MaxInflight: 256}})
			before := readMem()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %v", idleClientsEnv, srv.Addr("tcp"), n, run.ping))
			stdin, _ := cmd.StdinPipe()
			stdout, _ := cmd.StdoutPipe()
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			defer func() {
				stdin.Close()
				_ = cmd.Wait()
			}()
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil || line != "ready\n" {
				b.Fatalf("client process: %q %v", line, err)
			}
			waitFor(b, 10*time.Second, "all clients connected", func() bool { return srv.conns.Load() == int64(n) })
			after := readMem()
			per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
			b.ReportMetric(per(after.HeapInuse+after.StackInuse, before.HeapInuse+before.StackInuse), "bytes/conn")
			b.ReportMetric(per(after.HeapInuse, before.HeapInuse), "heap-bytes/conn")
			b.ReportMetric(per(after.StackInuse, before.StackInuse), "stack-bytes/conn")
			b.ReportMetric(per(uint64(after.goroutines), uint64(before.goroutines)), "goroutines/conn")
		})
	}
}

const idleClientsEnv = "SLUICE_MQTT_IDLE_CLIENTS"

// runIdleClients is the child process of BenchmarkIdleConnections: "addr n ping" → n connected
// idle MQTT 5 clients (each after one PINGREQ/PINGRESP if ping), "ready" on stdout, exit when
// stdin closes.
func runIdleClients(spec string) int {
	var addr string
	var n int
	var ping bool
	if _, err := fmt.Sscan(spec, &addr, &n, &ping); err != nil {
		fmt.Fprintln(os.Stderr, "bad spec:", err)
		return 2
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	conns := make([]net.Conn, 0, n)
	for i := range n {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "dial:", err)
			return 1
		}
		if _, err := nc.Write(connectPacket(5, fmt.Sprintf("idle-%d", i))); err != nil {
			return 1
		}
		hdr := make([]byte, 2)
		_ = nc.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(nc, hdr); err != nil {
			fmt.Fprintln(os.Stderr, "connack:", err)
			return 1
		}
		if _, err := io.ReadFull(nc, make([]byte, hdr[1])); err != nil {
			return 1
		}
		if ping {
			if _, err := nc.Write([]byte{0xC0, 0}); err != nil {
				return 1
			}
			if _, err := io.ReadFull(nc, hdr); err != nil || hdr[0] != 0xD0 {
				fmt.Fprintln(os.Stderr, "pingresp:", err, hdr)
				return 1
			}
		}
		conns = append(conns, nc)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	return 0
}

type memSample struct {
	HeapInuse, StackInuse uint64
	goroutines            int
}

// readMem samples the process's heap and stack in use after three GCs (stacks shrink at GC).
func readMem() memSample {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return memSample{HeapInuse: m.HeapInuse, StackInuse: m.StackInuse, goroutines: runtime.NumGoroutine()}
}
