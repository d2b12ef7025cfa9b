package queue_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicemq/sluice/queue"
)

func benchManager(b *testing.B, cfg queue.Config) *queue.Manager {
	b.Helper()
	m, err := queue.Open(b.TempDir(), queue.Options{Queues: map[string]queue.Config{qn: cfg}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close() })
	return m
}

func batch(n, size int) []queue.Message {
	msgs := make([]queue.Message, n)
	payload := make([]byte, size)
	for i := range msgs {
		msgs[i] = queue.Message{Topic: "devices/d1/telemetry", ClientID: "d1", QoS: 1, Payload: payload}
	}
	return msgs
}

// feed runs b.Loop, handing one token per iteration to the workers that read tokens; then it closes
// tokens, waits for the workers, fails b with the error one of them stored, and returns the
// iterations per second.
func feed(b *testing.B, tokens chan<- struct{}, wg *sync.WaitGroup, failed *atomic.Value) float64 {
	b.Helper()
	start := time.Now()
	n := 0
	for b.Loop() {
		tokens <- struct{}{}
		n++
	}
	close(tokens)
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatal(err)
	}
	return float64(n) / time.Since(start).Seconds()
}

// BenchmarkEnqueueReceiveAck runs batches of 256-byte messages through enqueue → receive → ack
// with several pipelines in parallel (one b.Loop iteration = one batch through the pipeline), with
// the default sync policy (always).
func BenchmarkEnqueueReceiveAck(b *testing.B) {
	for _, bs := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", bs), func(b *testing.B) {
			m := benchManager(b, queue.Config{})
			const workers = 8
			tokens := make(chan struct{})
			var wg sync.WaitGroup
			var failed atomic.Value
			for w := 0; w < workers; w++ {
				wg.Go(func() {
					msgs := batch(bs, 256)
					ctx := context.Background()
					for range tokens {
						if _, err := m.Enqueue(ctx, qn, msgs); err != nil {
							failed.Store(err)
							return
						}
						for got := 0; got < bs; {
							rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
							ds, err := m.Receive(rctx, qn, bs-got, time.Minute)
							cancel()
							if err != nil || len(ds) == 0 {
								failed.Store(fmt.Errorf("receive: %v (got %d)", err, len(ds)))
								return
							}
							rs := make([]string, len(ds))
							for i, d := range ds {
								rs[i] = d.Receipt
							}
							if _, err := m.Ack(qn, rs); err != nil {
								failed.Store(err)
								return
							}
							got += len(ds)
						}
					}
				})
			}
			b.SetBytes(int64(bs * 256))
			b.ReportAllocs()
			b.ReportMetric(feed(b, tokens, &wg, &failed)*float64(bs), "msgs/s")
		})
	}
}

// BenchmarkEnqueue measures durable enqueue (sync always) of single 256-byte messages by
// concurrent writers sharing group commits.
func BenchmarkEnqueue(b *testing.B) {
	for _, writers := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			m := benchManager(b, queue.Config{})
			tokens := make(chan struct{}, writers)
			var wg sync.WaitGroup
			var failed atomic.Value
			for w := 0; w < writers; w++ {
				wg.Go(func() {
					msgs := batch(1, 256)
					for range tokens {
						if _, err := m.Enqueue(context.Background(), qn, msgs); err != nil {
							failed.Store(err)
						}
					}
				})
			}
			b.SetBytes(256)
			b.ReportAllocs()
			b.ReportMetric(feed(b, tokens, &wg, &failed), "msgs/s")
		})
	}
}

const recoverEnv = "SLUICE_BENCH_RECOVER"      // set to run BenchmarkRecover (it writes GBs)
const recoverChildEnv = "SLUICE_RECOVER_CHILD" // internal: the child that opens the backlog

// BenchmarkRecover builds a backlog of 256-byte messages (1M, 5M, 10M) and measures, in a fresh
// child process each time, how long Open takes and the process's RSS after it (and its peak).
// It writes 0.3 to 3 GB, so it only runs with SLUICE_BENCH_RECOVER=1 (the lead runs it on a quiet
// machine): SLUICE_BENCH_RECOVER=1 go test -run '^$' -bench 'Recover/backlog=1M' -benchtime 1x ./queue
func BenchmarkRecover(b *testing.B) {
	if os.Getenv(recoverEnv) == "" {
		b.Skip("writes GBs; set " + recoverEnv + "=1 to run")
	}
	for _, n := range []int{1_000_000, 5_000_000, 10_000_000} {
		b.Run(fmt.Sprintf("backlog=%dM", n/1_000_000), func(b *testing.B) {
			dir := b.TempDir()
			buildBacklog(b, dir, n)
			var openS, rss, hwm float64
			for b.Loop() {
				openS, rss, hwm = recoverChild(b, dir, n)
			}
			b.ReportMetric(openS, "open-s")
			b.ReportMetric(rss/(1<<20), "rss-MiB")
			b.ReportMetric(hwm/(1<<20), "peak-rss-MiB")
			b.ReportMetric(rss/float64(n), "rss-bytes/msg")
		})
	}
}

func buildBacklog(b *testing.B, dir string, n int) {
	b.Helper()
	m, err := queue.Open(dir, queue.Options{Queues: map[string]queue.Config{qn: {Sync: queue.SyncNone}}})
	if err != nil {
		b.Fatal(err)
	}
	const per = 1000
	var wg sync.WaitGroup
	var failed atomic.Value
	var left atomic.Int64
	left.Store(int64(n))
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Go(func() {
			msgs := batch(per, 256)
			for {
				k := left.Add(-per)
				if k+per <= 0 {
					return
				}
				chunk := msgs
				if k < 0 {
					chunk = msgs[:per+k]
				}
				if _, err := m.Enqueue(context.Background(), qn, chunk); err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatal(err)
	}
	if err := m.Close(); err != nil {
		b.Fatal(err)
	}
}

// recoverChild opens dir in a child process and returns Open's duration (s), RSS and peak RSS
// (bytes) after it.
func recoverChild(b *testing.B, dir string, n int) (openS, rss, hwm float64) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), recoverChildEnv+"="+dir, "SLUICE_RECOVER_WANT="+strconv.Itoa(n))
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("child: %v\n%s", err, out)
	}
	_, err = fmt.Sscanf(lastLine(string(out)), "open_s=%g rss=%g hwm=%g", &openS, &rss, &hwm)
	if err != nil {
		b.Fatalf("child output %q: %v", out, err)
	}
	return openS, rss, hwm
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// recoverChildMain is the child of BenchmarkRecover.
func recoverChildMain() int {
	dir := os.Getenv(recoverChildEnv)
	want, _ := strconv.Atoi(os.Getenv("SLUICE_RECOVER_WANT"))
	start := time.Now()
	m, err := queue.Open(dir, queue.Options{})
	if err != nil {
		fmt.Println("open:", err)
		return 1
	}
	openS := time.Since(start).Seconds()
	runtime.GC()
	st, err := m.Stats(qn)
	if err != nil || st.Ready != int64(want) {
		fmt.Println("stats:", st, err)
		return 1
	}
	rss, hwm := procStatus("VmRSS:"), procStatus("VmHWM:")
	_ = m.Close()
	fmt.Printf("open_s=%g rss=%g hwm=%g\n", openS, rss, hwm)
	return 0
}

// procStatus returns a kB field of /proc/self/status in bytes (0 where there is no /proc).
func procStatus(field string) float64 {
	f, err := os.Open(filepath.Join("/proc", "self", "status"))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb * 1024
		}
	}
	return 0
}
