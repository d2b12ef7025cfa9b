package queue

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/rs/xid"

	"github.com/sluicemq/sluice/wal"
)

// Diagnose reports where the given ids are on disk (test debugging aid).
func Diagnose(t *testing.T, dir, q string, ids []string) {
	want := map[[12]byte]string{}
	for _, s := range ids {
		id, err := xid.FromString(s)
		if err != nil {
			t.Fatal(err)
		}
		want[id] = s
	}
	l, err := wal.Open(filepath.Join(dir, q, logDir), wal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	found := map[uint64]string{}
	t.Logf("log first %d last %d", l.FirstIndex(), l.LastIndex())
	_ = l.Scan(0, func(i uint64, rec []byte) error {
		h, _ := decodeHeader(rec)
		if s, ok := want[h.id]; ok {
			found[i] = s
			t.Logf("id %s at log index %d", s, i)
		}
		return nil
	})
	a, err := wal.Open(filepath.Join(dir, q, acksDir), wal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	t.Logf("acks first %d last %d", a.FirstIndex(), a.LastIndex())
	_ = a.Scan(0, func(i uint64, rec []byte) error {
		return decodeEvents(rec, func(e event) {
			if s, ok := found[e.index]; ok {
				t.Logf("ack record %d: %s %+v", i, s, e)
			}
		})
	})
	fmt.Println()
}
