package wal

import (
	"reflect"
	"unsafe"

	tidwall "github.com/tidwall/wal"
)

// tidwall/wal keeps the whole tail segment in memory: every entry it writes is appended to the
// segment's buffer (and its position to a table), two slices that start empty for each new
// segment and grow by append. Go grows a large slice by a quarter at a time, so a 4 MB segment
// costs about 20 MB of fresh allocations and 16 MB of copying, and every new page is faulted in.
// tidwall/wal has no option to size them, so tailBuf does it from outside: before a batch, it
// gives the tail segment room for the batch, doubling the buffer up to a whole segment, and
// reuses that buffer from segment to segment (tidwall/wal lets go of the old tail's buffer when
// it rolls: its cache is cleared, and nothing here reads through it). A busy log then allocates
// nothing for its tail; a quiet one keeps a small buffer. Measured at 100 publishers × 32 in
// flight, it took the CPU per bridged 256-byte message from 9.5–10.4 µs to 7.9–8.7 (the whole
// process, broker and load generator).
//
// It reaches into two unexported fields of tidwall/wal v1.2.1 (Log.segments, and a segment's
// ebuf and epos). If a tidwall/wal version lays them out otherwise, newTailBuf finds out
// when the log opens and the log runs without it, as tidwall/wal alone would
// (TestTailBufferActive fails then, so an upgrade cannot drop it unnoticed). The writer
// goroutine is tidwall/wal's only user (Log.tw), so nothing races with these writes.
type tailBuf struct {
	ok   bool
	segs int // index of the segments field in tidwall.Log

	buf  []byte        // the entry buffer last given to a tail segment, or nil
	pos  reflect.Value // the position table last given, or invalid
	keep int           // the most bytes buf keeps between segments
}

// minTailBuf is the smallest entry buffer tailBuf makes.
const minTailBuf = 64 << 10

// Field indexes in tidwall/wal's segment struct, checked by newTailBuf.
const (
	segEbuf = 2
	segEpos = 3
)

// newTailBuf checks tidwall/wal's layout; the zero tailBuf (ok false) does nothing.
func newTailBuf(segmentSize int) tailBuf {
	lt := reflect.TypeFor[tidwall.Log]()
	f, found := lt.FieldByName("segments")
	if !found || f.Type.Kind() != reflect.Slice || f.Type.Elem().Kind() != reflect.Pointer {
		return tailBuf{}
	}
	st := f.Type.Elem().Elem()
	if st.Kind() != reflect.Struct || st.NumField() <= segEpos ||
		st.Field(segEbuf).Name != "ebuf" || st.Field(segEbuf).Type != reflect.TypeFor[[]byte]() ||
		st.Field(segEpos).Name != "epos" || st.Field(segEpos).Type.Kind() != reflect.Slice {
		return tailBuf{}
	}
	pt := st.Field(segEpos).Type.Elem() // bpos{pos, end int}
	if pt.Kind() != reflect.Struct || pt.NumField() != 2 || pt.Field(0).Type.Kind() != reflect.Int || pt.Field(1).Type.Kind() != reflect.Int {
		return tailBuf{}
	}
	return tailBuf{ok: true, segs: f.Index[0], keep: segmentSize + segmentSize/4}
}

// tail returns the tail segment's entry buffer and position table, settable.
func (t *tailBuf) tail(tw *tidwall.Log) (ebuf *[]byte, epos reflect.Value) {
	segs := reflect.ValueOf(tw).Elem().Field(t.segs)
	if segs.Len() == 0 {
		return nil, reflect.Value{}
	}
	s := segs.Index(segs.Len() - 1).Elem()
	eb := s.Field(segEbuf)
	ep := s.Field(segEpos)
	ebuf = (*[]byte)(unsafe.Pointer(eb.UnsafeAddr()))
	epos = reflect.NewAt(ep.Type(), unsafe.Pointer(ep.UnsafeAddr())).Elem()
	return ebuf, epos
}

// reserve gives tidwall/wal's tail segment room for n more bytes of entries and entries more
// positions, so that its next WriteBatch appends without growing them.
func (t *tailBuf) reserve(tw *tidwall.Log, n, entries int) error {
	if !t.ok {
		return nil
	}
	ebuf, epos := t.tail(tw)
	if ebuf == nil {
		return nil
	}
	growBuf := cap(*ebuf)-len(*ebuf) < n
	growPos := epos.Cap()-epos.Len() < entries
	if !growBuf && !growPos {
		return nil
	}
	// The spares were last given to a segment that tidwall/wal has rolled away from; its cache
	// is the only place that could still hold them.
	if err := tw.ClearCache(); err != nil {
		return err
	}
	if growBuf {
		need := len(*ebuf) + n
		nb := t.buf
		if cap(nb) < need || cap(nb) > 0 && cap(*ebuf) > 0 && &nb[:1][0] == &(*ebuf)[:1][0] {
			// Doubling, up to a segment: a log that sees little traffic keeps a small buffer.
			nb = make([]byte, 0, max(need, min(t.keep, max(2*cap(*ebuf), minTailBuf))))
		}
		*ebuf = append(nb[:0], *ebuf...)
		t.buf = nil
		if cap(nb) <= t.keep {
			t.buf = nb[:0]
		}
	}
	if growPos {
		need := epos.Len() + entries
		np := t.pos
		if !np.IsValid() || np.Cap() < need || np.Cap() > 0 && epos.Cap() > 0 && np.Pointer() == epos.Pointer() {
			np = reflect.MakeSlice(epos.Type(), 0, max(need, 2*epos.Cap(), 1024))
		}
		np = reflect.AppendSlice(np.Slice(0, 0), epos)
		epos.Set(np)
		t.pos = np.Slice(0, 0)
	}
	return nil
}
