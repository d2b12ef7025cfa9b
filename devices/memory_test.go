package devices

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

const childBrokerEnv = "DEVICES_TEST_CHILD_BROKER"

// runChildBroker is the test binary re-executed as a broker process, so that the memory the
// benchmark measures is the devices' alone. It prints its address and serves until stdin closes.
func runChildBroker() {
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 64
	s := mqtt.New(&mqtt.Options{InlineClient: false, Capabilities: caps, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	_ = s.AddHook(new(auth.AllowHook), nil)
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := s.AddListener(l); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	if err := s.Serve(); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("tcp://" + l.Address())
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = s.Close()
}

func startChildBroker(b *testing.B) string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), childBrokerEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "tcp://") {
		b.Fatalf("child broker: %q %v", line, err)
	}
	return strings.TrimSpace(line)
}

func rssBytes() int64 {
	data, err := os.ReadFile("/proc/self/status")
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

// BenchmarkFleetMemory measures what each connected, publishing device costs this process: the
// broker runs in a child process. Metrics: rss-bytes/device (process RSS growth) and
// go-bytes/device (heap in use + goroutine stacks).
func BenchmarkFleetMemory(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		for _, proto := range []Protocol{MQTT5, MQTT311} {
			b.Run(fmt.Sprintf("devices=%d/protocol=%s", n, proto), func(b *testing.B) {
				broker := startChildBroker(b)
				var rssPer, goPer float64
				for b.Loop() {
					runtime.GC()
					var m0 runtime.MemStats
					runtime.ReadMemStats(&m0)
					rss0 := rssBytes()
					f, err := NewFleet(Config{Broker: broker, Count: n, Protocol: proto, QoS: 1, Interval: Duration(time.Second), ConnectRate: 4000}, Options{})
					if err != nil {
						b.Fatal(err)
					}
					ctx, cancel := context.WithCancel(context.Background())
					done := make(chan error, 1)
					go func() { done <- f.Run(ctx) }()
					deadline := time.Now().Add(2 * time.Minute)
					for f.Stats().Connected < int64(n) || f.Stats().Acked < uint64(n) {
						if time.Now().After(deadline) {
							cancel()
							<-done
							b.Fatalf("only %+v after 2m", f.Stats())
						}
						time.Sleep(50 * time.Millisecond)
					}
					runtime.GC()
					var m1 runtime.MemStats
					runtime.ReadMemStats(&m1)
					rssPer = float64(rssBytes()-rss0) / float64(n)
					goPer = float64((m1.HeapInuse+m1.StackInuse)-(m0.HeapInuse+m0.StackInuse)) / float64(n)
					cancel()
					if err := <-done; err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(rssPer, "rss-bytes/device")
				b.ReportMetric(goPer, "go-bytes/device")
			})
		}
	}
}
