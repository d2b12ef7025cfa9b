package wal_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicemq/sluice/wal"
	"github.com/sluicemq/sluice/wal/waltest"
)

const (
	crashChildEnv  = "SLUICE_WAL_CRASH_CHILD_DIR" // set: this process is the writer of TestCrashKill
	crashRoundsEnv = "SLUICE_WAL_CRASH_ROUNDS"    // rounds of TestCrashKill; default 10
	crashSegSize   = 64 << 10                     // small segments: the writer rolls often
)

// crashChild appends with SyncAlways from several goroutines and prints
// "ack <index> <record>" for every record it is told is durable, until it is
// killed (or, as a bound if the parent is gone, for 60 s).
func crashChild() int {
	dir := os.Getenv(crashChildEnv)
	l, err := wal.Open(dir, wal.Options{SegmentSize: crashSegSize, Sync: wal.SyncAlways})
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child: open:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var outMu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	pid := os.Getpid()
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(pid), uint64(g)))
			for i := 0; ctx.Err() == nil; i++ {
				recs := make([][]byte, 1+rng.IntN(4))
				for k := range recs {
					recs[k] = fmt.Appendf(nil, "p%d-g%d-%d-%d-%s", pid, g, i, k, strings.Repeat("x", rng.IntN(600)))
				}
				first, _, err := l.Append(ctx, recs...)
				if err != nil {
					return
				}
				outMu.Lock()
				for k, r := range recs {
					fmt.Fprintf(out, "ack %d %s\n", first+uint64(k), r)
				}
				out.Flush() // only after the ack: the parent may count on every line it sees
				outMu.Unlock()
			}
		})
	}
	wg.Wait()
	_ = l.Close()
	return 0
}

// TestCrashKill runs a writer child process, SIGKILLs it at a random moment
// (sometimes before it has acked anything, even while it is opening and
// repairing), reopens the log and checks that every record the child printed
// as durable is there, intact, at its index. Several rounds share one log.
func TestCrashKill(t *testing.T) {
	rounds := 10
	if s := os.Getenv(crashRoundsEnv); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive integer", crashRoundsEnv, s)
		}
		rounds = n
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	acked := map[uint64]string{}
	for round := range rounds {
		killAfter := 1 + rng.IntN(1000) // acks to wait for; 0: kill after a random delay instead
		if rng.IntN(4) == 0 {
			killAfter = 0 // kill at a random moment of the first milliseconds: start-up, Open, repair
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKill$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		seen, killed := 0, false
		kill := func() {
			if !killed {
				killed = true
				if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
					t.Errorf("round %d: kill: %v", round, err)
				}
			}
		}
		var early *time.Timer
		if killAfter == 0 {
			var once sync.Once
			early = time.AfterFunc(time.Duration(rng.IntN(30_000))*time.Microsecond, func() {
				once.Do(func() { _ = cmd.Process.Kill() })
			})
		}
		timeout := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
		for sc.Scan() {
			line := sc.Text()
			var idx uint64
			var rec string
			if _, err := fmt.Sscanf(line, "ack %d %s", &idx, &rec); err != nil {
				continue // not one of ours (e.g. test framework output)
			}
			if old, ok := acked[idx]; ok && old != rec {
				// an index acked before a crash was given out again
				t.Fatalf("round %d: index %d acked twice: %q and %q", round, idx, old, rec)
			}
			acked[idx] = rec
			if seen++; killAfter > 0 && seen >= killAfter {
				kill()
			}
		}
		timeout.Stop()
		if early != nil {
			early.Stop()
		}
		kill()
		_ = cmd.Wait()

		torn := ""
		if rng.IntN(2) == 0 {
			torn = tearUnacked(t, dir, maxKey(acked), rng)
		}
		l, err := wal.Open(dir, wal.Options{SegmentSize: crashSegSize})
		if err != nil {
			t.Fatalf("round %d: reopen after kill%s: %v", round, torn, err)
		}
		for idx, rec := range acked {
			got, err := l.Read(idx)
			if err != nil || string(got) != rec {
				l.Close()
				t.Fatalf("round %d: acked record %d: got %.40q, %v; want %.40q", round, idx, got, err, rec)
			}
		}
		t.Logf("round %d: killed after %d acks (target %d)%s; %d acked records intact, LastIndex %d",
			round, seen, killAfter, torn, len(acked), l.LastIndex())
		closeLog(t, l)
	}
}

func maxKey(m map[uint64]string) uint64 {
	var k uint64
	for i := range m {
		k = max(k, i)
	}
	return k
}

// tearUnacked simulates a power loss after the kill: the tail segment loses
// a random part of what follows the last acked record (never acknowledged,
// so it may be lost), and sometimes gains zeros (its size reached the disk,
// its data did not). It returns a description for the log.
func tearUnacked(t *testing.T, dir string, lastAcked uint64, rng *rand.Rand) string {
	t.Helper()
	segs := waltest.Segments(t, dir)
	if len(segs) == 0 {
		return ""
	}
	tail := segs[len(segs)-1]
	data, err := os.ReadFile(tail)
	if err != nil {
		t.Fatal(err)
	}
	// Walk the entries (uvarint length, then a frame whose bytes 5..13 hold
	// the index) to the end of the last acked one, if it is in this segment.
	keep := 0
	for off := 0; off < len(data); {
		size, n := binary.Uvarint(data[off:])
		if n <= 0 || size < 13 || uint64(len(data)-off-n) < size {
			break
		}
		idx := binary.LittleEndian.Uint64(data[off+n+5 : off+n+13])
		off += n + int(size)
		if idx <= lastAcked {
			keep = off
		}
	}
	if keep == len(data) {
		return ""
	}
	cut := keep + rng.IntN(len(data)-keep)
	waltest.Truncate(t, tail, int64(cut))
	desc := fmt.Sprintf(", tail cut from %d to %d bytes", len(data), cut)
	if rng.IntN(2) == 0 {
		waltest.AppendZeros(t, tail, 1+rng.IntN(4096))
		desc += " and zero-filled"
	}
	return desc
}
