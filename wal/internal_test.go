package wal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// gateFS blocks the first file fsync until release is closed and counts fsyncs.
type gateFS struct {
	OSFS
	entered chan struct{} // closed when the first fsync starts
	release chan struct{}
	mu      sync.Mutex
	syncs   int
}

func (g *gateFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := g.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &gateFile{File: f, g: g}, nil
}

type gateFile struct {
	File
	g *gateFS
}

func (f *gateFile) Sync() error {
	f.g.mu.Lock()
	f.g.syncs++
	first := f.g.syncs == 1
	f.g.mu.Unlock()
	if first {
		close(f.g.entered)
		<-f.g.release
	}
	return f.File.Sync()
}

// TestGroupCommit holds the writer in the fsync of a first append while 50
// more are queued: they must be committed together with one more fsync, and
// nothing may be visible before its fsync.
func TestGroupCommit(t *testing.T) {
	g := &gateFS{entered: make(chan struct{}), release: make(chan struct{})}
	l, err := Open(t.TempDir(), Options{FS: g})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 51)
	wg.Go(func() {
		_, _, err := l.Append(ctx, []byte("first"))
		errs <- err
	})
	<-g.entered // the writer is inside the fsync of record 1
	if l.LastIndex() != 0 {
		t.Fatalf("LastIndex = %d before the fsync completed, want 0", l.LastIndex())
	}
	if _, err := l.Read(1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read 1 before its fsync: got %v, want ErrNotFound", err)
	}
	for i := range 50 {
		wg.Go(func() {
			_, _, err := l.Append(ctx, fmt.Appendf(nil, "rec-%d", i))
			errs <- err
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(l.reqs) < 50 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d appends queued after 10s", len(l.reqs))
		}
		time.Sleep(time.Millisecond)
	}
	close(g.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	g.mu.Lock()
	syncs := g.syncs
	g.mu.Unlock()
	if syncs != 2 {
		t.Fatalf("%d fsyncs for 51 appends (1, then 50 queued), want 2", syncs)
	}
	if l.LastIndex() != 51 {
		t.Fatalf("LastIndex = %d, want 51", l.LastIndex())
	}
	if b, r := l.batches.Load(), l.records.Load(); b != 2 || r != 51 {
		t.Fatalf("%d batches of %d records in all, want 2 batches of 51", b, r)
	}
}

// TestRollTracking checks that the writer's idea of the segments (which it
// needs to fsync the right file) matches what tidwall/wal creates, for
// random record sizes, batches, reopens and truncations.
func TestRollTracking(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			dir := t.TempDir()
			opts := Options{SegmentSize: 500 + rng.IntN(3000)}
			l, err := Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			for round := range 7 {
				var wg sync.WaitGroup
				for range 6 {
					wg.Go(func() {
						for range 15 {
							recs := make([][]byte, 1+rand.IntN(5))
							for k := range recs {
								recs[k] = bytes.Repeat([]byte{'r'}, 1+rand.IntN(700))
							}
							if _, _, err := l.Append(context.Background(), recs...); err != nil {
								t.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				checkSegs(t, l, dir)
				switch round % 3 {
				case 1:
					if err := l.TruncateFront(l.LastIndex() - rng.Uint64N(l.LastIndex()/2+1)); err != nil {
						t.Fatal(err)
					}
					checkSegs(t, l, dir)
				case 2:
					if err := l.Close(); err != nil {
						t.Fatal(err)
					}
					if round == 2 {
						opts.SegmentSize /= 2 // reopen with a smaller size: tidwall rolls before the next batch
					}
					if l, err = Open(dir, opts); err != nil {
						t.Fatal(err)
					}
				}
			}
			checkSegs(t, l, dir)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("reopen with smaller segments", func(t *testing.T) {
		dir := t.TempDir()
		l, err := Open(dir, Options{SegmentSize: 4096})
		if err != nil {
			t.Fatal(err)
		}
		for range 15 {
			if _, _, err := l.Append(context.Background(), make([]byte, 200)); err != nil {
				t.Fatal(err)
			}
		}
		l.Close()
		// the tail now exceeds the segment size: tidwall/wal rolls before the next batch
		if l, err = Open(dir, Options{SegmentSize: 1024}); err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if _, _, err := l.Append(context.Background(), make([]byte, 200)); err != nil {
			t.Fatal(err)
		}
		checkSegs(t, l, dir)
		if len(l.segs) != 2 || l.segs[1] != 16 {
			t.Fatalf("segments %v, want [1 16]", l.segs)
		}
	})
}

// checkSegs compares the writer's segment list and tail with the directory.
func checkSegs(t *testing.T, l *Log, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var onDisk []uint64
	for _, e := range ents {
		if idx, ok := parseSegmentName(e.Name()); ok && len(e.Name()) == segNameLen {
			onDisk = append(onDisk, idx)
		}
	}
	// ops run on the writer: read its state there
	var segs []uint64
	var ends [][]uint32
	var tail string
	var tailSize int
	onWriter(l, func() {
		l.segMu.RLock()
		segs = slices.Clone(l.segs)
		for _, e := range l.ends {
			ends = append(ends, slices.Clone(e))
		}
		l.segMu.RUnlock()
		tail, tailSize = l.w.tailPath, l.w.tailSize
	})
	if !slices.Equal(segs, onDisk) {
		t.Fatalf("writer knows segments %v, directory has %v", segs, onDisk)
	}
	for k, start := range segs {
		data, err := os.ReadFile(filepath.Join(dir, segmentName(start)))
		if err != nil {
			t.Fatal(err)
		}
		var want []uint32
		if res := scanSegment(data, start, func(_ uint64, _ []byte, end int) error {
			want = append(want, uint32(end))
			return nil
		}); res.err != nil {
			t.Fatalf("segment %d: %v", start, res.err)
		}
		if !slices.Equal(ends[k], want) {
			t.Fatalf("segment %d: offset table %v, file has entries ending at %v", start, ends[k], want)
		}
	}
	if want := filepath.Join(dir, segmentName(onDisk[len(onDisk)-1])); tail != want {
		t.Fatalf("writer fsyncs %s, tail is %s", tail, want)
	}
	fi, err := os.Stat(tail)
	if err != nil {
		t.Fatal(err)
	}
	if int64(tailSize) != fi.Size() {
		t.Fatalf("writer counts %d bytes in the tail, file has %d", tailSize, fi.Size())
	}
}

func TestFrameRoundTrip(t *testing.T) {
	for i, p := range [][]byte{{0}, []byte("x"), bytes.Repeat([]byte{0xff}, 300), make([]byte, 4096)} {
		index := uint64(1) << (i * 20)
		f := appendFrame(nil, index, p)
		got, err := decodeRecord(f, index)
		if err != nil || !bytes.Equal(got, p) {
			t.Fatalf("round trip of %d bytes: %v", len(p), err)
		}
		if _, err := decodeRecord(f, index+1); !errors.Is(err, errWrongIndex) {
			t.Fatalf("frame of index %d read as %d: got %v, want errWrongIndex", index, index+1, err)
		}
		for i := range f {
			bad := slices.Clone(f)
			bad[i] ^= 0x10
			if _, err := decodeRecord(bad, index); err == nil {
				t.Fatalf("bit flip at byte %d of a %d-byte frame not detected", i, len(f))
			}
		}
	}
	if _, _, err := decodeFrame(appendFrame(nil, 1, nil)); err == nil {
		t.Fatal("an empty payload decoded")
	}
}

// TestFindEntryBounded: a pathological tail cannot make Open take quadratic time.
func TestFindEntryBounded(t *testing.T) {
	// every offset looks like a 16 KiB frame of version 1 with a large index
	unit := append(binary.AppendUvarint(nil, 16<<10), frameVersion, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f)
	data := bytes.Repeat(unit, (4<<20)/len(unit))
	start := time.Now()
	if !findEntry(data, 1) {
		t.Fatal("findEntry gave up with false: it must answer the cautious true")
	}
	t.Logf("%d bytes searched in %v", len(data), time.Since(start))
}

// entry encodes record index the way it lies in a segment file.
func entry(index uint64, payload []byte) []byte {
	f := appendFrame(nil, index, payload)
	return append(binary.AppendUvarint(nil, uint64(len(f))), f...)
}

// FuzzDecode feeds arbitrary bytes to the frame decoder and the segment
// scanner: they must not panic, must not read past the input, and whatever
// they accept must re-encode to exactly the bytes accepted.
func FuzzDecode(f *testing.F) {
	good := append(entry(1, []byte("hello")), entry(2, bytes.Repeat([]byte("y"), 200))...)
	f.Add(appendFrame(nil, 1, []byte("a")))
	f.Add(good)
	f.Add(good[:len(good)-3])                                      // torn
	f.Add(append(slices.Clone(good), make([]byte, 64)...))         // zero tail
	f.Add(append(entry(1, []byte("a")), entry(3, []byte("c"))...)) // index gap
	f.Add([]byte{})
	f.Add(make([]byte, 16))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}) // huge length
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		if idx, p, err := decodeFrame(data); err == nil {
			if len(p) == 0 {
				t.Fatal("decoded an empty payload")
			}
			if !bytes.Equal(appendFrame(nil, idx, p), data) {
				t.Fatal("accepted frame does not re-encode to its input")
			}
		}
		var again []byte
		next := uint64(1)
		res := scanSegment(data, 1, func(idx uint64, p []byte, end int) error {
			if idx != next {
				t.Fatalf("scan accepted index %d, want %d", idx, next)
			}
			next++
			again = append(again, entry(idx, p)...)
			if end != len(again) {
				t.Fatalf("entry %d ends at %d, want %d", idx, end, len(again))
			}
			return nil
		})
		if res.err != nil {
			_ = damageIsTail(data, res, 1) // must not panic
		}
		if res.goodEnd < 0 || res.goodEnd > len(data) {
			t.Fatalf("goodEnd %d outside 0..%d", res.goodEnd, len(data))
		}
		if !bytes.Equal(again, data[:res.goodEnd]) {
			t.Fatal("accepted entries do not re-encode to the accepted prefix")
		}
		if (res.err == nil) != (res.goodEnd == len(data)) {
			t.Fatalf("err %v with %d of %d bytes accepted", res.err, res.goodEnd, len(data))
		}
	})
}

// TestAppendCancelWhileWaiting: a cancelled wait returns ctx's error at once;
// the write still happens.
func TestAppendCancelWhileWaiting(t *testing.T) {
	g := &gateFS{entered: make(chan struct{}), release: make(chan struct{})}
	l, err := Open(t.TempDir(), Options{FS: g})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := l.Append(ctx, []byte("cancelled wait"))
		errc <- err
	}()
	<-g.entered // the record is written, its fsync is held
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("append: got %v, want context.Canceled", err)
	}
	if l.LastIndex() != 0 {
		t.Fatalf("LastIndex = %d while the fsync is held, want 0", l.LastIndex())
	}
	close(g.release)
	first, _, err := l.Append(context.Background(), []byte("next"))
	if err != nil || first != 2 {
		t.Fatalf("next append: index %d, %v; want 2", first, err)
	}
	rec, err := l.Read(1)
	if err != nil || string(rec) != "cancelled wait" {
		t.Fatalf("read 1: %q, %v", rec, err)
	}
	rec[0] = 'X' // the copy is the caller's
	if again, _ := l.Read(1); string(again) != "cancelled wait" {
		t.Fatalf("modifying a returned record changed the log: %q", again)
	}
}

// TestTruncateReopensTidwall: after enough removed segments tidwall/wal is
// reopened to forget them, without disturbing reads, appends or rolls.
func TestTruncateReopensTidwall(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir, Options{SegmentSize: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.truncMu.Lock()
	l.reopenAfter = 2
	l.truncMu.Unlock()
	ctx := context.Background()
	rec := func(i uint64) []byte {
		return fmt.Appendf(nil, "record-%d-%s", i, bytes.Repeat([]byte("p"), int(i%90)))
	}
	next := uint64(1)
	for round := range 10 {
		for range 40 {
			if _, _, err := l.Append(ctx, rec(next)); err != nil {
				t.Fatal(err)
			}
			next++
		}
		if err := l.TruncateFront(next - 15); err != nil {
			t.Fatal(err)
		}
		checkSegs(t, l, dir)
		twFirst, err := tidwallFirst(l)
		if err != nil {
			t.Fatal(err)
		}
		if twFirst > l.FirstIndex() {
			t.Fatalf("tidwall/wal starts at %d, the log at %d", twFirst, l.FirstIndex())
		}
		for i := l.FirstIndex(); i < next; i++ {
			got, err := l.Read(i)
			if err != nil || !bytes.Equal(got, rec(i)) {
				t.Fatalf("round %d: read %d: %q, %v", round, i, got, err)
			}
		}
	}
	if twFirst, _ := tidwallFirst(l); twFirst == 1 {
		t.Fatal("tidwall/wal was never reopened: it still starts at 1")
	}
}

// FuzzOpen writes arbitrary bytes as the only segment of a log (or as the
// tail after a good one) and opens it: Open must not panic and must either
// succeed, with every record readable and appends continuing, or report a
// *CorruptionError; with Repair it must succeed.
func FuzzOpen(f *testing.F) {
	good := append(entry(1, []byte("hello")), entry(2, bytes.Repeat([]byte("y"), 200))...)
	f.Add(good, false)
	f.Add(good[:len(good)-7], false)
	f.Add(append(slices.Clone(good), make([]byte, 100)...), true)
	f.Add(append(append(slices.Clone(good[:9]), 0xee), good[10:]...), false)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, data []byte, repair bool) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segmentName(1)), data, 0o640); err != nil {
			t.Fatal(err)
		}
		l, err := Open(dir, Options{Repair: repair})
		if err != nil {
			var cerr *CorruptionError
			if repair || !errors.As(err, &cerr) {
				t.Fatalf("open (repair=%v): %v", repair, err)
			}
			return
		}
		defer l.Close()
		last := l.LastIndex()
		for i := uint64(1); i <= last; i++ {
			if _, err := l.Read(i); err != nil {
				t.Fatalf("read %d of %d: %v", i, last, err)
			}
		}
		first, _, err := l.Append(context.Background(), []byte("after"))
		if err != nil || first != last+1 {
			t.Fatalf("append after open: %d, %v; want %d", first, err, last+1)
		}
	})
}

// onWriter runs fn on l's writer goroutine, between batches, and waits for it.
func onWriter(l *Log, fn func()) {
	done := make(chan struct{})
	l.ops <- func() { fn(); close(done) }
	<-done
}

// tidwallFirst asks tidwall/wal for its first index, on the writer.
func tidwallFirst(l *Log) (first uint64, err error) {
	onWriter(l, func() { first, err = l.tw.FirstIndex() })
	return first, err
}
