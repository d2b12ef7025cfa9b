package wal_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sluicemq/sluice/wal"
)

// BenchmarkAppend measures durable appends (one record per Append) from
// concurrent writers sharing group commit. Each b.Loop iteration hands one
// append to a free writer; records/s is measured from the first append to
// the last acknowledgement.
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
	work := make(chan struct{}) // unbuffered: at most `writers` appends in flight
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range work {
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
		work <- struct{}{}
		n++
	}
	close(work)
	wg.Wait()
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "records/s")
}
