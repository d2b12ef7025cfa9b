package devices

import (
	"testing"
	"time"
)

func BenchmarkGenerator(b *testing.B) {
	for _, spec := range []string{"telemetry", "gps", "blob:64", "blob:1024"} {
		b.Run("payload="+spec, func(b *testing.B) {
			p, err := ParsePayload(spec)
			if err != nil {
				b.Fatal(err)
			}
			g := NewGenerator(p, "dev-1234")
			var buf []byte
			now := time.Now()
			var seq uint64
			b.ReportAllocs()
			for b.Loop() {
				seq++
				buf = g.Append(buf[:0], seq, now)
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}

func BenchmarkDecodeStamp(b *testing.B) {
	for _, spec := range []string{"telemetry", "blob:64"} {
		b.Run("payload="+spec, func(b *testing.B) {
			p, _ := ParsePayload(spec)
			buf := NewGenerator(p, "dev-1234").Append(nil, 7, time.Now())
			b.ReportAllocs()
			for b.Loop() {
				if _, err := DecodeStamp(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
