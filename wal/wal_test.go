package wal_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/sluicemq/sluice/wal"
	"github.com/sluicemq/sluice/wal/waltest"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(crashChild()) // the writer of TestCrashKill; never returns
	}
	goleak.VerifyTestMain(m)
}

// payloadSize makes every test entry 215 bytes on disk: a 2-byte length,
// the 13-byte frame header and the payload.
const (
	payloadSize = 200
	headerSize  = 2 + 13
	entrySize   = headerSize + payloadSize
)

// payload is the deterministic content of record i (of a given generation).
func payload(i uint64, gen string) []byte {
	p := make([]byte, payloadSize)
	s := fmt.Sprintf("%s-record-%08d-", gen, i)
	for j := range p {
		p[j] = s[j%len(s)]
	}
	return p
}

func openLog(tb testing.TB, dir string, opts wal.Options) *wal.Log {
	tb.Helper()
	l, err := wal.Open(dir, opts)
	if err != nil {
		tb.Fatalf("open %s: %v", dir, err)
	}
	return l
}

func closeLog(tb testing.TB, l *wal.Log) {
	tb.Helper()
	if err := l.Close(); err != nil {
		tb.Fatalf("close: %v", err)
	}
}

// appendN appends records from..to of generation gen one by one and checks their indexes.
func appendN(tb testing.TB, l *wal.Log, from, to uint64, gen string) {
	tb.Helper()
	for i := from; i <= to; i++ {
		first, last, err := l.Append(context.Background(), payload(i, gen))
		if err != nil {
			tb.Fatalf("append %d: %v", i, err)
		}
		if first != i || last != i {
			tb.Fatalf("append %d: got indexes %d..%d", i, first, last)
		}
	}
}

// checkRecords reads from..to and compares them with generation gen.
func checkRecords(tb testing.TB, l *wal.Log, from, to uint64, gen string) {
	tb.Helper()
	for i := from; i <= to; i++ {
		got, err := l.Read(i)
		if err != nil {
			tb.Fatalf("read %d: %v", i, err)
		}
		if !bytes.Equal(got, payload(i, gen)) {
			tb.Fatalf("read %d: got %q, want %q", i, got, payload(i, gen))
		}
	}
}

func TestCorruption(t *testing.T) {
	const seg1 = "00000000000000000001"
	// offset of byte k of the payload of record i (1-based) in a single-segment log
	payloadAt := func(i uint64, k int) int64 { return int64(i-1)*entrySize + headerSize + int64(k) }
	tests := []struct {
		name       string
		records    uint64
		segSize    int
		damage     func(tb testing.TB, dir string)
		repair     bool
		wantErrIdx uint64 // index named by the *CorruptionError; 0 = open succeeds
		wantSeg    string // segment named by the *CorruptionError
		wantLast   uint64
		wantBroken int
		wantLog    string
	}{
		{
			name: "clean", records: 10,
			damage:   func(testing.TB, string) {},
			wantLast: 10,
		},
		{
			name: "torn tail mid payload", records: 10,
			damage: func(tb testing.TB, dir string) {
				waltest.Truncate(tb, filepath.Join(dir, seg1), payloadAt(10, 50))
			},
			wantLast: 9, wantBroken: 1, wantLog: "repaired torn tail",
		},
		{
			name: "torn tail inside length", records: 10,
			damage: func(tb testing.TB, dir string) {
				waltest.Truncate(tb, filepath.Join(dir, seg1), 9*entrySize+1)
			},
			wantLast: 9, wantBroken: 1, wantLog: "repaired torn tail",
		},
		{
			name: "zero-filled tail", records: 10,
			damage: func(tb testing.TB, dir string) {
				waltest.AppendZeros(tb, filepath.Join(dir, seg1), 4096)
			},
			wantLast: 10, wantBroken: 1, wantLog: "repaired torn tail",
		},
		{
			name: "torn record then zeros", records: 10,
			damage: func(tb testing.TB, dir string) {
				p := filepath.Join(dir, seg1)
				waltest.Truncate(tb, p, payloadAt(10, 100))
				waltest.AppendZeros(tb, p, 4096)
			},
			wantLast: 9, wantBroken: 1,
		},
		{
			name: "bit flip in last record is a torn tail", records: 10,
			damage: func(tb testing.TB, dir string) {
				waltest.FlipBit(tb, filepath.Join(dir, seg1), payloadAt(10, 3), 2)
			},
			wantLast: 9, wantBroken: 1,
		},
		{
			name: "bit flip mid-log", records: 10,
			damage: func(tb testing.TB, dir string) {
				waltest.FlipBit(tb, filepath.Join(dir, seg1), payloadAt(5, 17), 0)
			},
			wantErrIdx: 5, wantSeg: seg1,
		},
		{
			name: "bit flip mid-log repaired", records: 10, repair: true,
			damage: func(tb testing.TB, dir string) {
				waltest.FlipBit(tb, filepath.Join(dir, seg1), payloadAt(5, 17), 0)
			},
			wantLast: 4, wantBroken: 1, wantLog: "repaired corrupt log",
		},
		{
			name: "bit flip in version byte mid-log", records: 10,
			damage: func(tb testing.TB, dir string) {
				waltest.FlipBit(tb, filepath.Join(dir, seg1), payloadAt(3, -13), 7)
			},
			wantErrIdx: 3, wantSeg: seg1,
		},
		{
			name: "bit flip in length mid-log", records: 10,
			damage: func(tb testing.TB, dir string) {
				waltest.FlipBit(tb, filepath.Join(dir, seg1), payloadAt(6, -15), 3)
			},
			wantErrIdx: 6, wantSeg: seg1,
		},
		{
			// 2048-byte segments hold 10 entries of 215 bytes (the 10th fills it).
			name: "bit flip in an older segment", records: 35, segSize: 2048,
			damage: func(tb testing.TB, dir string) {
				waltest.FlipBit(tb, waltest.Segments(tb, dir)[1], 2*entrySize+20, 4)
			},
			wantErrIdx: 13, wantSeg: "00000000000000000011",
		},
		{
			name: "bit flip in an older segment repaired", records: 35, segSize: 2048, repair: true,
			damage: func(tb testing.TB, dir string) {
				waltest.FlipBit(tb, waltest.Segments(tb, dir)[1], 2*entrySize+20, 4)
			},
			// the damaged segment gets a copy, the two after it are moved aside
			wantLast: 12, wantBroken: 3, wantLog: "moving a segment after the damage aside",
		},
		{
			name: "torn tail of an older segment", records: 35, segSize: 2048,
			damage: func(tb testing.TB, dir string) {
				waltest.Truncate(tb, waltest.Segments(tb, dir)[0], 5*entrySize+3)
			},
			wantErrIdx: 6, wantSeg: seg1,
		},
		{
			name: "missing segment", records: 35, segSize: 2048,
			damage: func(tb testing.TB, dir string) {
				if err := os.Remove(waltest.Segments(tb, dir)[1]); err != nil {
					tb.Fatal(err)
				}
			},
			wantErrIdx: 11, wantSeg: "00000000000000000021",
		},
		{
			name: "missing segment repaired", records: 35, segSize: 2048, repair: true,
			damage: func(tb testing.TB, dir string) {
				if err := os.Remove(waltest.Segments(tb, dir)[1]); err != nil {
					tb.Fatal(err)
				}
			},
			wantLast: 10, wantBroken: 2,
		},
		{
			name: "tail segment all zeros", records: 35, segSize: 2048,
			damage: func(tb testing.TB, dir string) {
				segs := waltest.Segments(tb, dir)
				tail := segs[len(segs)-1]
				waltest.Truncate(tb, tail, 0)
				waltest.AppendZeros(tb, tail, 1000)
			},
			wantLast: 30, wantBroken: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := wal.Options{SegmentSize: tt.segSize}
			l := openLog(t, dir, opts)
			appendN(t, l, 1, tt.records, "a")
			closeLog(t, l)

			tt.damage(t, dir)

			var logs waltest.LogBuffer
			opts.Repair = tt.repair
			opts.Logger = zerolog.New(&logs)
			l, err := wal.Open(dir, opts)
			if tt.wantErrIdx != 0 {
				var cerr *wal.CorruptionError
				if !errors.As(err, &cerr) || !errors.Is(err, wal.ErrCorrupt) {
					if err == nil {
						l.Close()
					}
					t.Fatalf("open: got %v, want a *CorruptionError", err)
				}
				if cerr.Index != tt.wantErrIdx || cerr.Segment != tt.wantSeg {
					t.Fatalf("open: got %v, want index %d in segment %s", err, tt.wantErrIdx, tt.wantSeg)
				}
				return
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			if got := l.LastIndex(); got != tt.wantLast {
				t.Fatalf("LastIndex = %d, want %d", got, tt.wantLast)
			}
			checkRecords(t, l, 1, tt.wantLast, "a")
			if _, err := l.Read(tt.wantLast + 1); !errors.Is(err, wal.ErrNotFound) {
				t.Fatalf("read %d after the cut: got %v, want ErrNotFound", tt.wantLast+1, err)
			}
			if got := len(waltest.Broken(t, dir)); got != tt.wantBroken {
				t.Fatalf("%d .broken files, want %d", got, tt.wantBroken)
			}
			if !strings.Contains(logs.String(), tt.wantLog) {
				t.Fatalf("log %q does not contain %q", logs.String(), tt.wantLog)
			}
			// appends continue after the cut and survive a reopen
			appendN(t, l, tt.wantLast+1, tt.wantLast+5, "b")
			closeLog(t, l)
			l = openLog(t, dir, wal.Options{SegmentSize: tt.segSize})
			defer closeLog(t, l)
			checkRecords(t, l, 1, tt.wantLast, "a")
			checkRecords(t, l, tt.wantLast+1, tt.wantLast+5, "b")
			if got := l.LastIndex(); got != tt.wantLast+5 {
				t.Fatalf("LastIndex after reopen = %d, want %d", got, tt.wantLast+5)
			}
		})
	}
}

// TestTornTailEveryOffset cuts the last record at every byte offset: the
// earlier records survive and appends continue.
func TestTornTailEveryOffset(t *testing.T) {
	src := t.TempDir()
	l := openLog(t, src, wal.Options{})
	appendN(t, l, 1, 5, "a")
	closeLog(t, l)
	seg := filepath.Join(src, "00000000000000000001")
	orig, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	if len(orig) != 5*entrySize {
		t.Fatalf("segment is %d bytes, want %d", len(orig), 5*entrySize)
	}
	for cut := 4 * entrySize; cut < len(orig); cut++ {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "00000000000000000001"), orig[:cut], 0o640); err != nil {
			t.Fatal(err)
		}
		l, err := wal.Open(dir, wal.Options{})
		if err != nil {
			t.Fatalf("cut at %d: open: %v", cut, err)
		}
		if l.LastIndex() != 4 {
			t.Fatalf("cut at %d: LastIndex = %d, want 4", cut, l.LastIndex())
		}
		checkRecords(t, l, 1, 4, "a")
		if _, err := l.Read(5); !errors.Is(err, wal.ErrNotFound) {
			t.Fatalf("cut at %d: read 5: got %v, want ErrNotFound", cut, err)
		}
		wantBroken := 1
		if cut == 4*entrySize {
			wantBroken = 0 // a cut between records is no damage
		}
		if got := len(waltest.Broken(t, dir)); got != wantBroken {
			t.Fatalf("cut at %d: %d .broken files, want %d", cut, got, wantBroken)
		}
		appendN(t, l, 5, 6, "b")
		closeLog(t, l)
		l = openLog(t, dir, wal.Options{})
		checkRecords(t, l, 1, 4, "a")
		checkRecords(t, l, 5, 6, "b")
		closeLog(t, l)
	}
}

// TestTornWriteReopenAppendReread: a torn write across several segments,
// then reopen, append, reopen and read everything back.
func TestTornWriteReopenAppendReread(t *testing.T) {
	dir := t.TempDir()
	opts := wal.Options{SegmentSize: 4096}
	l := openLog(t, dir, opts)
	appendN(t, l, 1, 103, "a") // 20 per segment: the tail holds 3
	closeLog(t, l)
	segs := waltest.Segments(t, dir)
	if len(segs) < 3 {
		t.Fatalf("want several segments, got %d", len(segs))
	}
	tail := segs[len(segs)-1]
	size := waltest.Size(t, tail)
	if size < entrySize {
		t.Fatalf("tail segment holds %d bytes, want at least one record", size)
	}
	waltest.Truncate(t, tail, size-entrySize/2) // tear the last record
	waltest.AppendZeros(t, tail, 512)

	l = openLog(t, dir, opts)
	if l.LastIndex() != 102 {
		t.Fatalf("LastIndex = %d, want 102", l.LastIndex())
	}
	appendN(t, l, 103, 150, "b")
	closeLog(t, l)

	l = openLog(t, dir, opts)
	defer closeLog(t, l)
	checkRecords(t, l, 1, 102, "a")
	checkRecords(t, l, 103, 150, "b")
	var n uint64
	err := l.Scan(1, func(i uint64, rec []byte) error {
		n++
		gen := "a"
		if i >= 103 {
			gen = "b"
		}
		if i != n || !bytes.Equal(rec, payload(i, gen)) {
			return fmt.Errorf("scan: record %d (#%d) is %q", i, n, rec)
		}
		return nil
	})
	if err != nil || n != 150 {
		t.Fatalf("scan: %d records, %v", n, err)
	}
}

func TestFailedWrite(t *testing.T) {
	for _, fault := range []string{"write", "fsync", "dir fsync on roll"} {
		t.Run("fault="+fault, func(t *testing.T) {
			dir := t.TempDir()
			ffs := &waltest.FaultFS{}
			opts := wal.Options{FS: ffs, SegmentSize: 2048}
			l := openLog(t, dir, opts)
			appendN(t, l, 1, 5, "a")
			switch fault {
			case "write":
				ffs.FailWrites(waltest.ErrInjected)
			case "fsync":
				ffs.FailSyncs(waltest.ErrInjected)
			case "dir fsync on roll":
				ffs.FailDirSyncs(waltest.ErrInjected)
				appendN(t, l, 6, 9, "a") // no roll yet: these succeed
			}
			// many concurrent waiters: none may be told its record is durable
			last := l.LastIndex()
			var wg sync.WaitGroup
			errs := make(chan error, 20)
			for g := range 20 {
				wg.Go(func() {
					_, _, err := l.Append(context.Background(), payload(uint64(100+g), "x"))
					errs <- err
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if !errors.Is(err, wal.ErrFailed) {
					t.Fatalf("append during a failed %s: got %v, want ErrFailed", fault, err)
				}
			}
			ffs.FailWrites(nil)
			ffs.FailSyncs(nil)
			ffs.FailDirSyncs(nil)
			// failed stays failed until reopened
			if _, _, err := l.Append(context.Background(), payload(1, "y")); !errors.Is(err, wal.ErrFailed) ||
				!errors.Is(err, waltest.ErrInjected) {
				t.Fatalf("append after a failed %s: got %v, want ErrFailed wrapping the cause", fault, err)
			}
			if l.LastIndex() != last {
				t.Fatalf("LastIndex moved from %d to %d after failed appends", last, l.LastIndex())
			}
			checkRecords(t, l, 1, last, "a")
			if _, err := l.Read(last + 1); !errors.Is(err, wal.ErrNotFound) {
				t.Fatalf("read past the watermark: got %v, want ErrNotFound", err)
			}
			_ = l.Close()

			l = openLog(t, dir, wal.Options{SegmentSize: 2048})
			defer closeLog(t, l)
			checkRecords(t, l, 1, last, "a")
			// records of the failed batch may or may not have reached the disk; new appends go after them
			next := l.LastIndex() + 1
			first, _, err := l.Append(context.Background(), payload(next, "c"))
			if err != nil || first != next {
				t.Fatalf("append after reopen: %d, %v; want %d", first, err, next)
			}
		})
	}
}

func TestAppendErrors(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, wal.Options{})
	ctx := context.Background()
	if _, _, err := l.Append(ctx); !errors.Is(err, wal.ErrEmptyRecord) {
		t.Fatalf("append nothing: got %v, want ErrEmptyRecord", err)
	}
	if _, _, err := l.Append(ctx, []byte("a"), nil); !errors.Is(err, wal.ErrEmptyRecord) {
		t.Fatalf("append empty record: got %v, want ErrEmptyRecord", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := l.Append(cctx, []byte("a")); !errors.Is(err, context.Canceled) {
		t.Fatalf("append with cancelled ctx: got %v", err)
	}
	big := make([][]byte, wal.MaxAppendSize>>20+1) // one shared MiB, counted many times
	mib := make([]byte, 1<<20)
	for i := range big {
		big[i] = mib
	}
	if _, _, err := l.Append(ctx, big...); !errors.Is(err, wal.ErrTooLarge) {
		t.Fatalf("append over MaxAppendSize: got %v, want ErrTooLarge", err)
	}
	first, last, err := l.Append(ctx, []byte("a"), []byte("b"), []byte("c"))
	if err != nil || first != 1 || last != 3 {
		t.Fatalf("append 3: %d..%d, %v", first, last, err)
	}
	for _, idx := range []uint64{0, 4, 1 << 60} {
		if _, err := l.Read(idx); !errors.Is(err, wal.ErrNotFound) {
			t.Fatalf("read %d: got %v, want ErrNotFound", idx, err)
		}
	}
	closeLog(t, l)
	if err := l.Close(); !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("second close: got %v, want ErrClosed", err)
	}
	if _, _, err := l.Append(ctx, []byte("a")); !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("append after close: got %v", err)
	}
	if _, err := l.Read(1); !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("read after close: got %v", err)
	}
	if err := l.Scan(1, func(uint64, []byte) error { return nil }); !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("scan after close: got %v", err)
	}
	if err := l.TruncateFront(2); !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("truncate after close: got %v", err)
	}
}

func TestOpenLocked(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, wal.Options{})
	if l2, err := wal.Open(dir, wal.Options{}); !errors.Is(err, wal.ErrLocked) {
		if err == nil {
			l2.Close()
		}
		t.Fatalf("second open of %s: got %v, want ErrLocked", dir, err)
	}
	appendN(t, l, 1, 3, "a")
	closeLog(t, l)
	l = openLog(t, dir, wal.Options{})
	defer closeLog(t, l)
	checkRecords(t, l, 1, 3, "a")
}

func TestOpenOptions(t *testing.T) {
	tests := []struct {
		name string
		opts wal.Options
	}{
		{"negative segment size", wal.Options{SegmentSize: -1}},
		{"unknown sync policy", wal.Options{Sync: "sometimes"}},
		{"negative sync interval", wal.Options{SyncInterval: -time.Second}},
		{"negative max batch", wal.Options{MaxBatch: -1}},
		{"segment size over the limit", wal.Options{SegmentSize: wal.MaxSegmentSize + 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := wal.Open(t.TempDir(), tt.opts)
			if !errors.Is(err, wal.ErrInvalidOptions) {
				if err == nil {
					l.Close()
				}
				t.Fatalf("got %v, want ErrInvalidOptions", err)
			}
		})
	}
	t.Run("dir is a file", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "f")
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if l, err := wal.Open(p, wal.Options{}); err == nil {
			l.Close()
			t.Fatal("open on a regular file succeeded")
		}
	})
}

func TestSyncPolicies(t *testing.T) {
	for _, policy := range []wal.SyncPolicy{wal.SyncAlways, wal.SyncInterval, wal.SyncNone} {
		t.Run("sync="+string(policy), func(t *testing.T) {
			dir := t.TempDir()
			ffs := &waltest.FaultFS{}
			opts := wal.Options{Sync: policy, SyncInterval: time.Millisecond, FS: ffs}
			l := openLog(t, dir, opts)
			appendN(t, l, 1, 50, "a")
			checkRecords(t, l, 1, 50, "a")
			_, syncs, _ := ffs.Counts()
			switch policy {
			case wal.SyncAlways:
				if syncs != 50 {
					t.Fatalf("%d fsyncs for 50 sequential appends, want 50", syncs)
				}
				if st := l.Stats(); st.Commits != 50 || st.Records != 50 || st.Fsyncs != 50 || st.FsyncTime <= 0 {
					t.Fatalf("Stats() = %+v after 50 sequential appends, want 50 commits, records and fsyncs", st)
				}
			case wal.SyncInterval:
				deadline := time.Now().Add(10 * time.Second)
				for _, s, _ := ffs.Counts(); s == 0; _, s, _ = ffs.Counts() {
					if time.Now().After(deadline) {
						t.Fatal("no interval fsync within 10s")
					}
					time.Sleep(time.Millisecond)
				}
			case wal.SyncNone:
				if syncs != 0 {
					t.Fatalf("%d fsyncs under sync=none before close", syncs)
				}
			}
			closeLog(t, l)
			l = openLog(t, dir, wal.Options{})
			defer closeLog(t, l)
			checkRecords(t, l, 1, 50, "a")
		})
	}
}

// TestConcurrentAppendRead runs many appenders with readers and scanners over
// small segments (concurrent reads of old segments panic in bare tidwall/wal).
func TestConcurrentAppendRead(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, wal.Options{SegmentSize: 8192})
	const writers, perWriter = 50, 100
	ctx := context.Background()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		owner   = map[uint64]string{}
		stop    = make(chan struct{})
		readErr = make(chan error, 8)
	)
	for g := range writers {
		wg.Go(func() {
			var prev uint64
			for i := range perWriter {
				rec := fmt.Appendf(nil, "w%03d-%05d", g, i)
				n := 1 + i%3
				recs := make([][]byte, n)
				for k := range recs {
					recs[k] = fmt.Appendf(nil, "%s-%d", rec, k)
				}
				first, last, err := l.Append(ctx, recs...)
				if err != nil || last-first+1 != uint64(n) || first <= prev {
					t.Errorf("writer %d: append: %d..%d after %d, %v", g, first, last, prev, err)
					return
				}
				prev = last
				mu.Lock()
				for k := range recs {
					owner[first+uint64(k)] = string(recs[k])
				}
				mu.Unlock()
			}
		})
	}
	var rg sync.WaitGroup
	for r := range 4 {
		rg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				last := l.LastIndex()
				if last == 0 {
					continue
				}
				if r == 0 { // a scanner
					var n uint64
					if err := l.Scan(1, func(i uint64, rec []byte) error {
						if n++; i != n || len(rec) == 0 || rec[0] != 'w' {
							return fmt.Errorf("scan: record %d (#%d) is %q", i, n, rec)
						}
						return nil
					}); err != nil {
						readErr <- err
						return
					}
					continue
				}
				i := 1 + rng.Uint64N(last)
				rec, err := l.Read(i)
				if err != nil || len(rec) == 0 || rec[0] != 'w' {
					readErr <- fmt.Errorf("read %d (last %d): %q, %v", i, last, rec, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	rg.Wait()
	close(readErr)
	for err := range readErr {
		t.Fatal(err)
	}
	total := uint64(len(owner))
	if l.LastIndex() != total {
		t.Fatalf("LastIndex = %d, want %d records", l.LastIndex(), total)
	}
	check := func(l *wal.Log) {
		for i := uint64(1); i <= total; i++ {
			rec, err := l.Read(i)
			if err != nil || string(rec) != owner[i] {
				t.Fatalf("read %d: %q, %v; want %q", i, rec, err, owner[i])
			}
		}
	}
	check(l)
	closeLog(t, l)
	l = openLog(t, dir, wal.Options{SegmentSize: 8192})
	defer closeLog(t, l)
	check(l)
}

func TestTruncateFront(t *testing.T) {
	dir := t.TempDir()
	opts := wal.Options{SegmentSize: 2048} // 10 records of 215 bytes per segment
	l := openLog(t, dir, opts)
	appendN(t, l, 1, 45, "a")
	// segments start at 1, 11, 21, 31, 41
	steps := []struct {
		index     uint64
		wantFirst uint64
		wantSegs  int
	}{
		{1, 1, 5},
		{10, 1, 5},  // inside the first segment: nothing is entirely below 10
		{11, 11, 4}, // exactly a segment start
		{27, 21, 3}, // middle of a segment: FirstIndex stays at its start
		{5, 21, 3},  // below FirstIndex: nothing to do
		{45, 41, 1}, // into the tail segment
		{1000, 41, 1},
	}
	for _, s := range steps {
		if err := l.TruncateFront(s.index); err != nil {
			t.Fatalf("TruncateFront(%d): %v", s.index, err)
		}
		if got := l.FirstIndex(); got != s.wantFirst {
			t.Fatalf("TruncateFront(%d): FirstIndex = %d, want %d", s.index, got, s.wantFirst)
		}
		if got := len(waltest.Segments(t, dir)); got != s.wantSegs {
			t.Fatalf("TruncateFront(%d): %d segment files, want %d", s.index, got, s.wantSegs)
		}
		if _, err := l.Read(s.wantFirst - 1); s.wantFirst > 1 && !errors.Is(err, wal.ErrNotFound) {
			t.Fatalf("read %d below FirstIndex: got %v", s.wantFirst-1, err)
		}
		checkRecords(t, l, s.wantFirst, 45, "a")
	}
	// appends go on in the rewritten tail segment, and roll again
	appendN(t, l, 46, 60, "b")
	if err := l.TruncateFront(55); err != nil {
		t.Fatal(err)
	}
	if got := l.FirstIndex(); got != 51 {
		t.Fatalf("FirstIndex = %d, want 51", got)
	}
	closeLog(t, l)
	l = openLog(t, dir, opts)
	defer closeLog(t, l)
	if l.FirstIndex() != 51 || l.LastIndex() != 60 {
		t.Fatalf("after reopen: indexes %d..%d, want 51..60", l.FirstIndex(), l.LastIndex())
	}
	checkRecords(t, l, 51, 60, "b")
	if err := l.Scan(1, func(i uint64, rec []byte) error {
		if i < 51 {
			return fmt.Errorf("scan returned truncated record %d", i)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestTruncateEmptiesLog: once the tail segment is empty, truncating past
// everything leaves an empty log that keeps counting.
func TestTruncateEmptiesLog(t *testing.T) {
	dir := t.TempDir()
	opts := wal.Options{SegmentSize: 2048}
	l := openLog(t, dir, opts)
	appendN(t, l, 1, 20, "a") // the 20th record fills segment 11..20: a new empty tail starts at 21
	if err := l.TruncateFront(21); err != nil {
		t.Fatal(err)
	}
	if l.FirstIndex() != 0 || l.LastIndex() != 20 {
		t.Fatalf("indexes %d..%d, want 0 (empty)..20", l.FirstIndex(), l.LastIndex())
	}
	closeLog(t, l)
	l = openLog(t, dir, opts)
	defer closeLog(t, l)
	if l.FirstIndex() != 0 || l.LastIndex() != 20 {
		t.Fatalf("after reopen: indexes %d..%d, want 0 (empty)..20", l.FirstIndex(), l.LastIndex())
	}
	appendN(t, l, 21, 22, "b")
	if l.FirstIndex() != 21 {
		t.Fatalf("FirstIndex = %d, want 21", l.FirstIndex())
	}
}

func TestCloseWithPendingAppends(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, wal.Options{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := map[uint64][]byte{}
	for g := range 20 {
		wg.Go(func() {
			for i := 0; ; i++ {
				rec := fmt.Appendf(nil, "g%d-%d", g, i)
				first, _, err := l.Append(context.Background(), rec)
				if errors.Is(err, wal.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("append: %v", err)
					return
				}
				mu.Lock()
				acked[first] = rec
				mu.Unlock()
			}
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for l.LastIndex() < 200 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	closeLog(t, l)
	wg.Wait()
	l = openLog(t, dir, wal.Options{})
	defer closeLog(t, l)
	for i, rec := range acked {
		got, err := l.Read(i)
		if err != nil || !bytes.Equal(got, rec) {
			t.Fatalf("acked record %d: %q, %v; want %q", i, got, err, rec)
		}
	}
}

// TestInterruptedTruncation: a crash inside tidwall/wal's TruncateFront
// leaves a .START file (and maybe a .TEMP); Open finishes the truncation.
func TestInterruptedTruncation(t *testing.T) {
	dir := t.TempDir()
	opts := wal.Options{SegmentSize: 2048}
	l := openLog(t, dir, opts)
	appendN(t, l, 1, 35, "a") // segments 1, 11, 21, 31
	closeLog(t, l)
	segs := waltest.Segments(t, dir)
	data, err := os.ReadFile(segs[2])
	if err != nil {
		t.Fatal(err)
	}
	// the state after tidwall wrote 21.START but before it removed 1, 11 and 21
	if err := os.WriteFile(segs[2]+".START", data, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(segs[3]+".START.TEMP", []byte("junk"), 0o640); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, dir, opts)
	defer closeLog(t, l)
	if l.FirstIndex() != 21 || l.LastIndex() != 35 {
		t.Fatalf("indexes %d..%d, want 21..35", l.FirstIndex(), l.LastIndex())
	}
	checkRecords(t, l, 21, 35, "a")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{"00000000000000000021", "00000000000000000031", "LOCK"}; !slices.Equal(names, want) {
		t.Fatalf("directory holds %v, want %v", names, want)
	}
	appendN(t, l, 36, 40, "b")
}

// TestReadDamagedAfterOpen: damage that appears in an older segment after
// Open is reported by Read as a *CorruptionError, never a panic.
func TestReadDamagedAfterOpen(t *testing.T) {
	tests := []struct {
		name   string
		damage func(tb testing.TB, seg string)
	}{
		{"payload bit flip", func(tb testing.TB, seg string) { waltest.FlipBit(tb, seg, 4*entrySize+50, 1) }},
		{"length bit flip", func(tb testing.TB, seg string) { waltest.FlipBit(tb, seg, 2*entrySize+1, 1) }},
		// entry 3's length grows to swallow entry 4 exactly: tidwall/wal finds 9 entries
		// where the segment's index range says 10, and indexes past its list
		{"entries merged", func(tb testing.TB, seg string) {
			waltest.WriteAt(tb, seg, 2*entrySize, binary.AppendUvarint(nil, 2*entrySize-2))
		}},
		{"truncated", func(tb testing.TB, seg string) { waltest.Truncate(tb, seg, 3*entrySize+10) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := wal.Options{SegmentSize: 2048}
			l := openLog(t, dir, opts)
			defer closeLog(t, l)
			appendN(t, l, 1, 35, "a")
			tt.damage(t, waltest.Segments(t, dir)[0]) // not cached: tidwall/wal loads it on the first read
			var sawCorrupt bool
			for i := uint64(1); i <= 10; i++ {
				got, err := l.Read(i)
				var cerr *wal.CorruptionError
				switch {
				case errors.As(err, &cerr):
					sawCorrupt = true
					if cerr.Segment != "00000000000000000001" {
						t.Fatalf("read %d: %v names the wrong segment", i, err)
					}
				case err != nil:
					t.Fatalf("read %d: %v", i, err)
				case !bytes.Equal(got, payload(i, "a")):
					t.Fatalf("read %d returned wrong data %q", i, got)
				}
			}
			if !sawCorrupt {
				t.Fatal("no read reported the damage")
			}
			var cerr *wal.CorruptionError
			if recs, err := l.ReadRun(1, 12); !errors.As(err, &cerr) || cerr.Segment != "00000000000000000001" || recs != nil {
				t.Fatalf("ReadRun over the damage: %d records, %v; want a *CorruptionError in segment 1", len(recs), err)
			}
			checkRecords(t, l, 11, 35, "a") // other segments unaffected
		})
	}
}

// TestReadRun reads runs that start and end anywhere, within a segment and across several, and
// checks them against Read; a run reaching outside the log returns ErrNotFound and nothing.
func TestReadRun(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, wal.Options{SegmentSize: 2048}) // 10 records per segment
	defer closeLog(t, l)
	appendN(t, l, 1, 45, "a")
	for _, r := range []struct{ first, n uint64 }{{1, 1}, {1, 10}, {3, 5}, {9, 3}, {10, 1}, {1, 45}, {7, 30}, {45, 1}, {20, 26}} {
		recs, err := l.ReadRun(r.first, int(r.n))
		if err != nil || uint64(len(recs)) != r.n {
			t.Fatalf("ReadRun(%d, %d): %d records, %v", r.first, r.n, len(recs), err)
		}
		for k, rec := range recs {
			i := r.first + uint64(k)
			if !bytes.Equal(rec, payload(i, "a")) {
				t.Fatalf("ReadRun(%d, %d): record %d is %q", r.first, r.n, i, rec)
			}
		}
	}
	if err := l.TruncateFront(21); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ first, n uint64 }{{0, 3}, {44, 3}, {46, 1}, {15, 10}} {
		if recs, err := l.ReadRun(r.first, int(r.n)); !errors.Is(err, wal.ErrNotFound) || recs != nil {
			t.Fatalf("ReadRun(%d, %d) outside the log: %d records, %v; want ErrNotFound", r.first, r.n, len(recs), err)
		}
	}
	if recs, err := l.ReadRun(21, 25); err != nil || len(recs) != 25 || !bytes.Equal(recs[24], payload(45, "a")) {
		t.Fatalf("ReadRun(21, 25) after truncation: %d records, %v", len(recs), err)
	}
}

func TestScan(t *testing.T) {
	dir := t.TempDir()
	opts := wal.Options{SegmentSize: 2048} // 10 records per segment
	l := openLog(t, dir, opts)
	defer closeLog(t, l)
	appendN(t, l, 1, 45, "a")
	errStop := errors.New("stop")
	tests := []struct {
		name      string
		from      uint64
		stopAt    uint64 // fn returns errStop at this index; 0 = never
		wantFirst uint64
		wantLast  uint64
		wantErr   error
	}{
		{name: "all", from: 1, wantFirst: 1, wantLast: 45},
		{name: "from zero", from: 0, wantFirst: 1, wantLast: 45},
		{name: "from mid-segment", from: 17, wantFirst: 17, wantLast: 45},
		{name: "from segment start", from: 21, wantFirst: 21, wantLast: 45},
		{name: "last only", from: 45, wantFirst: 45, wantLast: 45},
		{name: "past the end", from: 46},
		{name: "fn stops", from: 3, stopAt: 12, wantFirst: 3, wantLast: 12, wantErr: errStop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var first, last uint64
			err := l.Scan(tt.from, func(i uint64, rec []byte) error {
				if first == 0 {
					first = i
				} else if i != last+1 {
					return fmt.Errorf("index %d after %d", i, last)
				}
				last = i
				if !bytes.Equal(rec, payload(i, "a")) {
					return fmt.Errorf("record %d is %q", i, rec)
				}
				if i == tt.stopAt {
					return errStop
				}
				return nil
			})
			if !errors.Is(err, tt.wantErr) || (err != nil && tt.wantErr == nil) {
				t.Fatalf("scan: got %v, want %v", err, tt.wantErr)
			}
			if first != tt.wantFirst || last != tt.wantLast {
				t.Fatalf("scanned %d..%d, want %d..%d", first, last, tt.wantFirst, tt.wantLast)
			}
		})
	}
	t.Run("fn uses the log", func(t *testing.T) {
		err := l.Scan(1, func(i uint64, rec []byte) error {
			if got, err := l.Read(i); err != nil || !bytes.Equal(got, rec) {
				return fmt.Errorf("read %d inside scan: %q, %v", i, got, err)
			}
			if i == 45 {
				if _, _, err := l.Append(context.Background(), payload(46, "a")); err != nil {
					return err
				}
				return l.TruncateFront(11)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if l.FirstIndex() != 11 || l.LastIndex() != 46 {
			t.Fatalf("indexes %d..%d, want 11..46", l.FirstIndex(), l.LastIndex())
		}
	})
	t.Run("damaged segment", func(t *testing.T) {
		waltest.FlipBit(t, filepath.Join(dir, "00000000000000000011"), 3*entrySize+100, 6) // record 14
		var n int
		err := l.Scan(1, func(uint64, []byte) error { n++; return nil })
		var cerr *wal.CorruptionError
		if !errors.As(err, &cerr) || cerr.Index != 14 || cerr.Segment != "00000000000000000011" {
			t.Fatalf("scan over a damaged record: got %v, want a *CorruptionError at 14 in segment 11", err)
		}
		if n != 3 {
			t.Fatalf("scan returned %d records (11..13) before the damage, want 3", n)
		}
	})
}

// TestDirSync: the directory is fsynced when a segment file is created,
// removed or renamed, before the append that caused it returns.
func TestDirSync(t *testing.T) {
	dir := t.TempDir()
	ffs := &waltest.FaultFS{}
	l := openLog(t, dir, wal.Options{FS: ffs, SegmentSize: 2048}) // 10 records per segment
	defer closeLog(t, l)
	dirSyncs := func() int { _, _, d := ffs.Counts(); return d }
	base := dirSyncs()
	appendN(t, l, 1, 9, "a")
	if got := dirSyncs(); got != base {
		t.Fatalf("%d directory fsyncs without a new segment", got-base)
	}
	appendN(t, l, 10, 10, "a") // fills the segment: tidwall/wal creates 11
	if got := dirSyncs(); got != base+1 {
		t.Fatalf("%d directory fsyncs for one new segment, want 1", got-base)
	}
	appendN(t, l, 11, 25, "a")
	base = dirSyncs()
	if err := l.TruncateFront(21); err != nil {
		t.Fatal(err)
	}
	if got := dirSyncs(); got != base+1 {
		t.Fatalf("%d directory fsyncs for a truncation, want 1", got-base)
	}
}

// TestConcurrentTruncate truncates while writers append and readers read
// and scan: a read gets its record or ErrNotFound, never anything else.
func TestConcurrentTruncate(t *testing.T) {
	dir := t.TempDir()
	opts := wal.Options{SegmentSize: 4096}
	l := openLog(t, dir, opts)
	var (
		acked   sync.Map // index → record
		writers sync.WaitGroup
		others  sync.WaitGroup
		stop    = make(chan struct{})
		errc    = make(chan error, 16)
	)
	for g := range 8 {
		writers.Go(func() {
			for i := range 300 {
				rec := fmt.Appendf(nil, "w%d-%d-%s", g, i, strings.Repeat("z", i%50))
				first, _, err := l.Append(context.Background(), rec)
				if err != nil {
					errc <- err
					return
				}
				acked.Store(first, rec)
			}
		})
	}
	others.Go(func() { // truncator
		for {
			select {
			case <-stop:
				return
			default:
			}
			if last := l.LastIndex(); last > 100 {
				if err := l.TruncateFront(last - 100); err != nil {
					errc <- fmt.Errorf("truncate: %w", err)
					return
				}
			}
		}
	})
	for r := range 3 {
		others.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 5))
			for {
				select {
				case <-stop:
					return
				default:
				}
				first, last := l.FirstIndex(), l.LastIndex()
				if first == 0 {
					continue
				}
				if r == 0 {
					err := l.Scan(first, func(i uint64, rec []byte) error {
						if want, ok := acked.Load(i); ok && !bytes.Equal(rec, want.([]byte)) {
							return fmt.Errorf("scan: record %d is %q, want %q", i, rec, want)
						}
						return nil
					})
					if err != nil && !errors.Is(err, wal.ErrNotFound) {
						errc <- err
						return
					}
					continue
				}
				i := first + rng.Uint64N(last-first+1)
				rec, err := l.Read(i)
				if errors.Is(err, wal.ErrNotFound) {
					continue
				}
				want, ok := acked.Load(i)
				if err != nil || (ok && !bytes.Equal(rec, want.([]byte))) {
					errc <- fmt.Errorf("read %d: %q, %v; want %q", i, rec, err, want)
					return
				}
			}
		})
	}
	writers.Wait()
	close(stop)
	others.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	first, last := l.FirstIndex(), l.LastIndex()
	if last != 2400 || first <= 1 || first > last-100 {
		t.Fatalf("indexes %d..%d, want ..2400, truncated, with at least 100 kept", first, last)
	}
	closeLog(t, l)
	l = openLog(t, dir, opts)
	defer closeLog(t, l)
	if l.FirstIndex() != first || l.LastIndex() != last {
		t.Fatalf("after reopen: %d..%d, want %d..%d", l.FirstIndex(), l.LastIndex(), first, last)
	}
	for i := first; i <= last; i++ {
		want, _ := acked.Load(i)
		if rec, err := l.Read(i); err != nil || !bytes.Equal(rec, want.([]byte)) {
			t.Fatalf("read %d after reopen: %q, %v", i, rec, err)
		}
	}
}

// TestRepairFailure: when a step of the repair fails (an fsync of the
// .broken copy, of the cut segment, or of the directory), Open reports it
// and a later Open repairs the log.
func TestRepairFailure(t *testing.T) {
	tests := []struct {
		name   string
		inject func(*waltest.FaultFS)
	}{
		{"fsync of the copy", func(f *waltest.FaultFS) { f.FailSyncsAfter(0, waltest.ErrInjected) }},
		{"fsync of the cut segment", func(f *waltest.FaultFS) { f.FailSyncsAfter(1, waltest.ErrInjected) }},
		{"dir fsync after the copy", func(f *waltest.FaultFS) { f.FailDirSyncsAfter(1, waltest.ErrInjected) }},
		{"dir fsync after the repair", func(f *waltest.FaultFS) { f.FailDirSyncsAfter(2, waltest.ErrInjected) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openLog(t, dir, wal.Options{})
			appendN(t, l, 1, 10, "a")
			closeLog(t, l)
			seg := filepath.Join(dir, "00000000000000000001")
			waltest.Truncate(t, seg, waltest.Size(t, seg)-30)

			ffs := &waltest.FaultFS{}
			tt.inject(ffs)
			if l, err := wal.Open(dir, wal.Options{FS: ffs}); !errors.Is(err, waltest.ErrInjected) {
				if err == nil {
					l.Close()
				}
				t.Fatalf("open: got %v, want the injected error", err)
			}
			l = openLog(t, dir, wal.Options{})
			defer closeLog(t, l)
			if l.LastIndex() != 9 {
				t.Fatalf("LastIndex = %d, want 9", l.LastIndex())
			}
			checkRecords(t, l, 1, 9, "a")
			if len(waltest.Broken(t, dir)) == 0 {
				t.Fatal("no .broken copy kept")
			}
		})
	}
}

// TestIntervalFsyncFailure: under SyncInterval an append returns before its
// fsync; when that fsync fails the log refuses the next appends.
func TestIntervalFsyncFailure(t *testing.T) {
	ffs := &waltest.FaultFS{}
	l := openLog(t, t.TempDir(), wal.Options{FS: ffs, Sync: wal.SyncInterval, SyncInterval: time.Millisecond})
	defer l.Close()
	ffs.FailSyncs(waltest.ErrInjected)
	if _, _, err := l.Append(context.Background(), []byte("written, fsync pending")); err != nil {
		t.Fatalf("append: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err := l.Append(context.Background(), []byte("x"))
		if errors.Is(err, wal.ErrFailed) && errors.Is(err, waltest.ErrInjected) {
			return
		}
		if err != nil {
			t.Fatalf("append: got %v, want ErrFailed wrapping the injected error", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("appends still accepted 10s after the interval fsync failed")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestAppendAsync: AppendAsync returns before the commit and calls done once per call, in
// submission order with consecutive indexes, after the records are readable (durable); a failed
// write reaches done as ErrFailed, and after Close AppendAsync refuses at once.
func TestAppendAsync(t *testing.T) {
	dir := t.TempDir()
	ffs := &waltest.FaultFS{}
	l := openLog(t, dir, wal.Options{FS: ffs})
	type result struct {
		first, last uint64
		err         error
		readable    bool
	}
	const calls = 50
	results := make(chan result, calls)
	for i := range calls {
		recs := [][]byte{payload(uint64(2*i+1), "a"), payload(uint64(2*i+2), "a")}
		err := l.AppendAsync(recs, func(first, last uint64, err error) {
			_, rerr := l.Read(last) // readers see only durable records
			results <- result{first, last, err, rerr == nil}
		})
		if err != nil {
			t.Fatalf("AppendAsync %d: %v", i, err)
		}
		if i%10 == 0 { // a blocking Append in between keeps its place in the order
			if _, _, err := l.Append(context.Background(), []byte("sync")); err != nil {
				t.Fatal(err)
			}
		}
	}
	prev := uint64(0)
	for i := range calls {
		r := <-results
		if r.err != nil || r.last != r.first+1 || r.first <= prev || !r.readable {
			t.Fatalf("call %d: %+v after %d", i, r, prev)
		}
		got, err := l.Read(r.first)
		if err != nil || !bytes.Equal(got, payload(uint64(2*i+1), "a")) {
			t.Fatalf("call %d: record %d is %q, %v", i, r.first, got, err)
		}
		prev = r.last
	}

	ffs.FailSyncs(waltest.ErrInjected)
	errc := make(chan error, 1)
	if err := l.AppendAsync([][]byte{[]byte("lost")}, func(_, _ uint64, err error) { errc <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, wal.ErrFailed) {
		t.Fatalf("done after a failed fsync: %v, want ErrFailed", err)
	}
	if err := l.AppendAsync([][]byte{[]byte("x")}, func(uint64, uint64, error) { t.Error("done called for a refused append") }); !errors.Is(err, wal.ErrFailed) {
		t.Fatalf("AppendAsync on a failed log: %v", err)
	}
	ffs.FailSyncs(nil)
	_ = l.Close()
	if err := l.AppendAsync([][]byte{[]byte("x")}, func(uint64, uint64, error) { t.Error("done called after Close") }); !errors.Is(err, wal.ErrClosed) {
		t.Fatalf("AppendAsync after Close: %v", err)
	}
	if err := l.AppendAsync(nil, func(uint64, uint64, error) {}); !errors.Is(err, wal.ErrEmptyRecord) {
		t.Fatalf("AppendAsync of nothing: %v", err)
	}
}

// TestAppendAsyncThenClose: records queued by AppendAsync before Close are still written, and
// their done is called before Close returns.
func TestAppendAsyncThenClose(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir, wal.Options{})
	var done atomic.Int64
	for i := range 100 {
		if err := l.AppendAsync([][]byte{payload(uint64(i+1), "a")}, func(_, _ uint64, err error) {
			if err != nil {
				t.Errorf("done: %v", err)
			}
			done.Add(1)
		}); err != nil {
			t.Fatal(err)
		}
	}
	closeLog(t, l)
	if n := done.Load(); n != 100 {
		t.Fatalf("%d of 100 done calls before Close returned", n)
	}
	l = openLog(t, dir, wal.Options{})
	defer closeLog(t, l)
	checkRecords(t, l, 1, 100, "a")
}
