package loadtest

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkScopeRecord is the per-message cost of loss accounting on the subscriber side.
func BenchmarkScopeRecord(b *testing.B) {
	for _, pubs := range []int{1, 100} {
		b.Run(fmt.Sprintf("publishers=%d", pubs), func(b *testing.B) {
			ids := make([]int, pubs)
			for i := range ids {
				ids[i] = i
			}
			s := newScope(ids)
			var seq uint64
			b.ReportAllocs()
			for b.Loop() {
				seq++
				s.record(int(seq)%pubs, seq/uint64(pubs)+1)
			}
		})
	}
}

func BenchmarkLatencyRecord(b *testing.B) {
	l := newLatencies()
	b.ReportAllocs()
	d := 1500 * time.Microsecond
	for b.Loop() {
		l.record(d)
	}
}
