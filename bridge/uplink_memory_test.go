package bridge_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/sluicemq/sluice/bridge"
	"github.com/sluicemq/sluice/mqtt"
	"github.com/sluicemq/sluice/queue"
)

const ulEnvGateway = "SLUICE_UPLINK_GATEWAY_DIR"

// TestUplinkGatewayProcess is the whole edge gateway of BenchmarkUplinkGatewayMemory, run in a child
// process: a broker on 127.0.0.1:0 whose bridge writes devices/# into queue "up", and an uplink
// draining it to $SLUICE_UPLINK_EDGE_URL. It prints "broker ADDR" and runs until SIGTERM.
func TestUplinkGatewayProcess(t *testing.T) {
	dir := os.Getenv(ulEnvGateway)
	if dir == "" {
		t.Skip("helper process of BenchmarkUplinkGatewayMemory")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	qm := ulOpenEdge(t, dir, queue.Config{MaxAttempts: 100})
	defer qm.Close()
	br, err := bridge.New(qm, bridge.Options{Rules: []bridge.Rule{{Filter: "devices/#", Queue: "up"}}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := mqtt.New(mqtt.Options{Listeners: []mqtt.Listener{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0", AllowAnonymous: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.AddHook(br.Hook(), nil); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	u, err := bridge.NewUplink(qm, ulOptions("cloud", os.Getenv(ulEnvURL)))
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Println("broker", srv.Addr("tcp").String())
	<-ctx.Done()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	_ = srv.Shutdown(sctx)
	ulClose(t, u)
	_ = br.Close(sctx)
}

// ulRSS reads a process's resident set size in bytes.
func ulRSS(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkUplinkGatewayMemory measures the edge gateway's memory (process RSS, in MiB) in a child
// process: idle with an upstream connected; 50 devices publishing 1,000 msgs/s (QoS 1, 256 bytes)
// with the link up; the same load with the upstream down (a backlog of ~5,000 messages builds on
// disk); and draining it. Run with -benchtime=1x: each iteration takes about 20 seconds.
func BenchmarkUplinkGatewayMemory(b *testing.B) {
	up, err := mqtt.New(mqtt.Options{Listeners: []mqtt.Listener{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0", AllowAnonymous: true}}})
	if err != nil {
		b.Fatal(err)
	}
	if err := up.Start(); err != nil {
		b.Fatal(err)
	}
	upAddr := up.Addr("tcp").String()
	stopUp := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = up.Shutdown(ctx)
	}
	defer func() { stopUp() }()
	var idle, load, outage, drain int64
	for b.Loop() {
		dir := b.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^TestUplinkGatewayProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), ulEnvGateway+"="+dir, ulEnvURL+"=tcp://"+upAddr)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		addr, ok := strings.CutPrefix(strings.TrimSpace(line), "broker ")
		if err != nil || !ok {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			b.Fatalf("gateway process: %q %v", line, err)
		}
		pid := cmd.Process.Pid
		peak := func(d time.Duration) int64 {
			var p int64
			for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
				p = max(p, ulRSS(pid))
			}
			return p
		}
		idle = peak(2 * time.Second)

		// 50 devices, one message every 50ms each: 1,000 msgs/s.
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var sent atomic.Int64
		for i := range 50 {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			c := paho.NewClient(paho.ClientConfig{ClientID: fmt.Sprintf("dev%d", i), Conn: conn})
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			_, err = c.Connect(cctx, &paho.Connect{ClientID: fmt.Sprintf("dev%d", i), CleanStart: true, KeepAlive: 30})
			ccancel()
			if err != nil {
				b.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { _ = c.Disconnect(&paho.Disconnect{}) }()
				tick := time.NewTicker(50 * time.Millisecond)
				defer tick.Stop()
				payload := make([]byte, 256)
				for {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
					if _, err := c.Publish(ctx, &paho.Publish{Topic: fmt.Sprintf("devices/%d/telemetry", i), QoS: 1, Payload: payload}); err == nil {
						sent.Add(1)
					}
				}
			}()
		}
		load = peak(5 * time.Second)
		stopUp()
		outage = peak(5 * time.Second)
		up, err = mqtt.New(mqtt.Options{Listeners: []mqtt.Listener{{Name: "tcp", Type: "tcp", Address: upAddr, AllowAnonymous: true}}})
		if err != nil {
			b.Fatal(err)
		}
		if err := up.Start(); err != nil {
			b.Fatal(err)
		}
		cancel()
		wg.Wait()
		drain = peak(3 * time.Second)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		qm := ulOpenEdge(b, dir, queue.Config{MaxAttempts: 100})
		st, _ := qm.Stats("up")
		qm.Close()
		if n := st.Ready + st.Leased + st.Delayed; n != 0 {
			b.Errorf("the gateway left %d of the %d messages published undrained", n, sent.Load())
		}
	}
	mib := func(n int64) float64 { return float64(n) / (1 << 20) }
	b.ReportMetric(mib(idle), "idle-MiB")
	b.ReportMetric(mib(load), "load-MiB")
	b.ReportMetric(mib(outage), "outage-MiB")
	b.ReportMetric(mib(drain), "drain-MiB")
}
