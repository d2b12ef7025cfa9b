package queue

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicemq/sluice/queue/queuetest"
	"github.com/sluicemq/sluice/wal"
	"github.com/sluicemq/sluice/wal/waltest"
)

// TestWriteFailures injects failed writes into a queue's message log and then its ack log: the
// calls fail, nothing is acknowledged that was not written, and after a reopen exactly the
// acknowledged state is there.
func TestWriteFailures(t *testing.T) {
	dir := t.TempDir()
	clock := queuetest.NewClock(time.Unix(1e9, 0))
	msgFS, ackFS := &waltest.FaultFS{}, &waltest.FaultFS{}
	opts := Options{Clock: clock.Now, Queues: map[string]Config{"q": {}}}
	opts.walFS = func(p string) wal.FS {
		switch {
		case strings.HasSuffix(p, filepath.Join("q", logDir)):
			return msgFS
		case strings.HasSuffix(p, filepath.Join("q", acksDir)):
			return ackFS
		}
		return nil
	}
	m, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	one := func(p string) []Message { return []Message{{Topic: "t", Payload: []byte(p)}} }
	for _, p := range []string{"a", "b"} {
		if _, err := m.Enqueue(ctx, "q", one(p)); err != nil {
			t.Fatal(err)
		}
	}
	msgFS.FailWrites(waltest.ErrInjected)
	for _, p := range []string{"c", "d"} {
		if ids, err := m.Enqueue(ctx, "q", one(p)); !errors.Is(err, wal.ErrFailed) || ids != nil {
			t.Fatalf("Enqueue(%s) on a failed log: %v, %v; want no ids and wal.ErrFailed", p, ids, err)
		}
	}
	ds, err := m.Receive(ctx, "q", 10, time.Minute)
	if err != nil || len(ds) != 2 {
		t.Fatalf("Receive: %d, %v", len(ds), err)
	}
	if res, err := m.Ack("q", []string{ds[0].Receipt}); err != nil || res[0] != nil {
		t.Fatalf("Ack a: %v %v", res, err)
	}
	ackFS.FailWrites(waltest.ErrInjected)
	if _, err := m.Ack("q", []string{ds[1].Receipt}); !errors.Is(err, wal.ErrFailed) {
		t.Fatalf("Ack b on a failed ack log: %v", err)
	}
	_ = m.Close() // reports the failed logs
	msgFS.FailWrites(nil)
	ackFS.FailWrites(nil)

	opts.walFS = nil
	m, err = Open(dir, opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer m.Close()
	clock.Advance(time.Hour) // past the lease of b
	ctx2, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	ds, err = m.Receive(ctx2, "q", 10, 0)
	if err != nil || len(ds) != 1 || string(ds[0].Payload) != "b" {
		t.Fatalf("after reopen got %d messages (%v), want only b", len(ds), err)
	}
}
