package wal

import (
	"bytes"
	"context"
	"fmt"
	"testing"
)

// TestTailBufferActive checks that tailBuf recognises the tidwall/wal this module builds with
// (an upgrade that moves its fields fails here instead of quietly costing the bridge about
// 1.6 µs of CPU a message), that the tail segment's buffer grows to a segment once and is then
// reused from segment to segment, and that what is written reads back, also after a reopen.
func TestTailBufferActive(t *testing.T) {
	if tb := newTailBuf(1 << 20); !tb.ok {
		t.Fatal("tailBuf does not recognise tidwall/wal's layout: see wal/tail.go")
	}
	dir := t.TempDir()
	const segSize = 256 << 10
	l, err := Open(dir, Options{SegmentSize: segSize, Sync: SyncNone})
	if err != nil {
		t.Fatal(err)
	}
	rec := func(i int) []byte { return fmt.Appendf(bytes.Repeat([]byte{'x'}, i%2000), "record %d", i) }
	arrays := map[*byte]bool{}
	const batches = 400
	n, big := 0, 0
	for batch := range batches {
		recs := make([][]byte, 1+batch%17)
		for k := range recs {
			n++
			recs[k] = rec(n)
		}
		if _, _, err := l.Append(context.Background(), recs...); err != nil {
			t.Fatal(err)
		}
		var (
			c int
			p *byte
		)
		onWriter(l, func() {
			ebuf, _ := l.w.tail.tail(l.tw)
			c = cap(*ebuf)
			if c > 0 {
				p = &(*ebuf)[:1][0]
			}
		})
		// A batch that rolls leaves tidwall/wal's new tail as tidwall/wal made it (the next
		// batch sizes it); the buffers tailBuf made are minTailBuf or more.
		if c >= minTailBuf {
			arrays[p] = true
		}
		if c >= segSize {
			big++
		}
	}
	if big < batches/2 {
		t.Fatalf("%d of %d batches left a tail buffer of a whole segment", big, batches)
	}
	l.segMu.RLock()
	segs := len(l.segs)
	l.segMu.RUnlock()
	if segs < 10 {
		t.Fatalf("%d segments: the test wants many rolls", segs)
	}
	// Without reuse every segment would get buffers of its own; with it, the first segment's
	// grows to a segment (64, 128, 256, 320 KiB) and is then handed on.
	if len(arrays) > 4 {
		t.Fatalf("%d distinct tail buffers over %d segments: not reused", len(arrays), segs)
	}
	check := func(l *Log) {
		t.Helper()
		for i := 1; i <= n; i++ {
			got, err := l.Read(uint64(i))
			if err != nil || !bytes.Equal(got, rec(i)) {
				t.Fatalf("record %d: %q, %v", i, got, err)
			}
		}
	}
	check(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = Open(dir, Options{SegmentSize: segSize})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	check(l)
}
