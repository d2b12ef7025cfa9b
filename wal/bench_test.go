package wal_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/sluicemq/sluice/wal"
)

// BenchmarkAppend measures durable appends (one record per Append) from
// concurrent writers sharing group commit. Each b.Loop iteration hands one
// append to the next writer round-robin through the writer's own small
// buffered channel, so writers run independently (a slow one delays the
// feeder only once its slack is used) and the feeder costs little. records/s
// is measured from the first append to the last acknowledgement.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{256} {
		for _, writers := range []int{1, 10, 100, 1000} {
			for _, policy := range []wal.SyncPolicy{wal.SyncAlways} {
				name := fmt.Sprintf("size=%d/writers=%d/sync=%s", size, writers, policy)
				b.Run(name, func(b *testing.B) { benchAppend(b, size, writers, policy) })
			}
		}
	}
}

func benchAppend(b *testing.B, size, writers int, policy wal.SyncPolicy) {
	l, err := wal.Open(b.TempDir(), wal.Options{Sync: policy})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	rec := make([]byte, size)
	for i := range rec {
		rec[i] = byte('a' + i%26)
	}
	ctx := context.Background()
	work := make([]chan struct{}, writers)
	var wg sync.WaitGroup
	for i := range work {
		work[i] = make(chan struct{}, 4)
		wg.Go(func() {
			for range work[i] {
				if _, _, err := l.Append(ctx, rec); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	start := time.Now()
	n := 0
	for b.Loop() {
		work[n%writers] <- struct{}{}
		n++
	}
	for _, c := range work {
		close(c)
	}
	wg.Wait()
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "records/s")
}

// fillLog creates a log of n records of size bytes (unsynced, to build it fast) and closes it.
func fillLog(b *testing.B, n, size int) string {
	b.Helper()
	dir := b.TempDir()
	l, err := wal.Open(dir, wal.Options{Sync: wal.SyncNone})
	if err != nil {
		b.Fatal(err)
	}
	rec := make([]byte, size)
	batch := make([][]byte, 1000)
	for i := range batch {
		batch[i] = rec
	}
	for done := 0; done < n; done += len(batch) {
		if _, _, err := l.Append(context.Background(), batch[:min(len(batch), n-done)]...); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	return dir
}

// BenchmarkOpen measures Open (every segment verified) and Scan of the whole
// log: what recovery costs per record.
func BenchmarkOpen(b *testing.B) {
	const size = 256
	for _, n := range []int{100_000} {
		b.Run(fmt.Sprintf("op=open/size=%d/records=%d", size, n), func(b *testing.B) {
			dir := fillLog(b, n, size)
			b.SetBytes(int64(n * size))
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				l, err := wal.Open(dir, wal.Options{})
				if err != nil {
					b.Fatal(err)
				}
				if err := l.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/time.Since(start).Seconds(), "records/s")
		})
		b.Run(fmt.Sprintf("op=scan/size=%d/records=%d", size, n), func(b *testing.B) {
			l, err := wal.Open(fillLog(b, n, size), wal.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			b.SetBytes(int64(n * size))
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				count := 0
				if err := l.Scan(1, func(uint64, []byte) error { count++; return nil }); err != nil || count != n {
					b.Fatalf("scan: %d records, %v", count, err)
				}
			}
			b.ReportMetric(float64(b.N*n)/time.Since(start).Seconds(), "records/s")
		})
	}
}

// BenchmarkRead measures random reads of durable records (tail segment and
// older ones alike) by concurrent readers.
func BenchmarkRead(b *testing.B) {
	const size, n = 256, 100_000
	dir := fillLog(b, n, size)
	for _, readers := range []int{1, 8} {
		b.Run(fmt.Sprintf("size=%d/records=%d/readers=%d", size, n, readers), func(b *testing.B) {
			l, err := wal.Open(dir, wal.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			work := make(chan uint64, readers)
			var wg sync.WaitGroup
			for range readers {
				wg.Go(func() {
					for i := range work {
						if _, err := l.Read(i); err != nil {
							b.Error(err)
						}
					}
				})
			}
			b.SetBytes(size)
			b.ReportAllocs()
			x := uint64(1)
			for b.Loop() {
				x = x*6364136223846793005 + 1442695040888963407 // LCG: random-looking indexes
				work <- 1 + (x>>33)%n
			}
			close(work)
			wg.Wait()
		})
	}
}

// BenchmarkAppendLatency is the floor under the bridge's latency figure
// (bridge.BenchmarkPublishLatency): the same steady open-loop rate, spread evenly over 50
// producers, of records about the size of a bridged 256-byte message, appended with AppendAsync as
// the bridge does and timed from the call to the durable callback, with no MQTT, no network and no
// other load. One iteration is 100 ms of load; run 30 or more for a stable p99. Two seconds of load
// run before the timing: a new log's first segment (about 1.1 s at this rate) grows its in-memory
// tail (see tailBuf), and on a VM where first touching memory is slow that one-off cost would
// otherwise be counted as a steady-state stall. over-2ms-% is the share of appends slower than
// 2 ms: a disk that stalls for 20 ms once in a 3-second run puts more than 0.5 % of them there,
// however rarely it stalls. sync=none shows the log's own share: 3 µs at p50; its tail is the fsync
// of a whole segment when it rolls (about once a second here), which that policy defers to then.
func BenchmarkAppendLatency(b *testing.B) {
	const rate, producers, size, warmup = 10000, 50, 350, 20
	for _, policy := range []wal.SyncPolicy{wal.SyncAlways, wal.SyncNone} {
		b.Run(fmt.Sprintf("rate=%d/producers=%d/size=%d/sync=%s", rate, producers, size, policy), func(b *testing.B) {
			l, err := wal.Open(b.TempDir(), wal.Options{Sync: policy})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			recs := [][]byte{make([]byte, size)}
			var mu sync.Mutex
			hist, lag := hdrhistogram.New(1, 10_000_000, 3), hdrhistogram.New(1, 10_000_000, 3)
			interval := producers * time.Second / rate
			per := int(100 * time.Millisecond / interval)
			round := func() {
				var wg sync.WaitGroup
				t0 := time.Now()
				for p := range producers {
					wg.Go(func() {
						for i := range per {
							at := t0.Add(time.Duration(p)*interval/producers + time.Duration(i)*interval)
							if d := time.Until(at); d > 0 {
								time.Sleep(d) // pacing the load, not synchronisation
							}
							sent := time.Now()
							wg.Add(1) // this producer's own count keeps the group above zero meanwhile
							err := l.AppendAsync(recs, func(_, _ uint64, err error) {
								defer wg.Done()
								d := time.Since(sent)
								mu.Lock()
								defer mu.Unlock()
								if err != nil {
									b.Error(err)
								}
								_ = hist.RecordValue(d.Microseconds())
								_ = lag.RecordValue(sent.Sub(at).Microseconds())
							})
							if err != nil {
								wg.Done()
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
			}
			for range warmup {
				round()
			}
			hist.Reset()
			lag.Reset()
			st0 := l.Stats()
			for b.Loop() {
				round()
			}
			b.ReportMetric(float64(hist.ValueAtQuantile(50)), "p50-µs")
			b.ReportMetric(float64(hist.ValueAtQuantile(99)), "p99-µs")
			b.ReportMetric(float64(hist.ValueAtQuantile(99.9)), "p99.9-µs")
			b.ReportMetric(float64(hist.Max()), "max-µs")
			b.ReportMetric(float64(lag.ValueAtQuantile(99)), "lag-p99-µs")
			var over int64
			for _, bar := range hist.Distribution() {
				if bar.From >= 2000 {
					over += bar.Count
				}
			}
			b.ReportMetric(100*float64(over)/float64(hist.TotalCount()), "over-2ms-%")
			if st := l.Stats(); st.Fsyncs > st0.Fsyncs {
				b.ReportMetric(float64((st.FsyncTime-st0.FsyncTime).Microseconds())/float64(st.Fsyncs-st0.Fsyncs), "fsync-µs")
				b.ReportMetric(float64(st.Records-st0.Records)/float64(st.Commits-st0.Commits), "recs/commit")
			}
		})
	}
}
