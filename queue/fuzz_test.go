package queue

import (
	"bytes"
	"reflect"
	"testing"
	"time"
	"unsafe"
)

func sampleRecord() *record {
	pf, exp := byte(1), uint32(30)
	return &record{
		id: newID(time.Unix(1700000000, 0)), enqueued: 1700000000e9,
		msg: Message{Topic: "devices/d1/telemetry", ClientID: "d1", Username: "u", QoS: 1, Retain: true,
			ReceivedAt: time.Unix(0, 1700000000e9),
			Properties: Properties{ContentType: "application/json", PayloadFormat: &pf, CorrelationData: []byte{9},
				ResponseTopic: "r", UserProperties: []UserProperty{{"a", "b"}}, MessageExpiry: &exp},
			Payload: []byte(`{"t":21.5}`)},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	r := sampleRecord()
	d := *r
	d.dead, d.attempts, d.deadAt, d.reason = true, 5, 1800000000e9, "max attempts reached: nacked"
	for _, in := range []*record{r, &d, {id: newID(time.Unix(1700000000, 0)), msg: Message{}}} {
		b := encodeRecord(nil, in)
		out, err := decodeRecord(b)
		if err != nil {
			t.Fatal(err)
		}
		if in.msg.Payload == nil {
			in.msg.Payload = []byte{}
		}
		if !reflect.DeepEqual(in, out) {
			t.Fatalf("round trip:\n in %+v\nout %+v", in, out)
		}
		h, err := decodeHeader(b)
		if err != nil || h.id != in.id || h.enqueued != in.enqueued || h.dead != in.dead {
			t.Fatalf("header %+v %v", h, err)
		}
	}
}

// FuzzDecodeRecord: decoding arbitrary bytes never panics, and what decodes re-encodes to the same
// bytes (the encoding is canonical).
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(nil, sampleRecord()))
	d := sampleRecord()
	d.dead, d.attempts, d.reason = true, 3, "x"
	f.Add(encodeRecord(nil, d))
	f.Add([]byte{recVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRecord(b)
		if err != nil {
			return
		}
		if len(b) > 22 && r.msg.ReceivedAt.IsZero() != (bytes.Equal(b[22:30], make([]byte, 8))) {
			t.Fatal("received-at zero mismatch")
		}
		if again := encodeRecord(nil, r); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", b, again)
		}
	})
}

// FuzzDecodeEvents: no panics; decoded events re-encode to the same record.
func FuzzDecodeEvents(f *testing.F) {
	var b []byte
	b = appendEvent(b, event{kind: evLease, index: 7, attempt: 2, vis: 1e18})
	b = appendEvent(b, event{kind: evDelay, index: 8, attempt: 1, vis: -5})
	b = appendEvent(b, event{kind: evGone, index: 9})
	b = appendEvent(b, event{kind: evRange, index: 10, attempt: 100})
	f.Add(b)
	f.Add([]byte{evVersion, evGone})
	f.Fuzz(func(t *testing.T, b []byte) {
		var evs []event
		if err := decodeEvents(b, func(e event) { evs = append(evs, e) }); err != nil {
			return
		}
		var again []byte
		for _, e := range evs {
			again = appendEvent(again, e)
		}
		// Varints have non-canonical forms, so compare decoded events, not bytes.
		var evs2 []event
		if err := decodeEvents(again, func(e event) { evs2 = append(evs2, e) }); err != nil || !reflect.DeepEqual(evs, evs2) {
			t.Fatalf("round trip: %v %v %v", evs, evs2, err)
		}
	})
}

// FuzzDecodeCheckpoint: no panics, no huge allocations from lengths; valid checkpoints round-trip.
func FuzzDecodeCheckpoint(f *testing.F) {
	w := newCPWriter(10)
	w.gone(10)
	w.gone(11)
	w.state(12, stLeased, 2, 99)
	w.gone(14)
	w.state(15, stDelayed, 1, -1)
	w.state(16, stReady, 3, 0)
	f.Add(w.finish(5, 10, 20))
	f.Add(newCPWriter(1).finish(0, 1, 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		cp, err := decodeCheckpoint(b)
		if err != nil {
			return
		}
		w := newCPWriter(cp.base)
		// Interleave runs and states in index order, as snapshot does.
		gi, si := 0, 0
		for gi < len(cp.gone) || si < len(cp.state) {
			if si == len(cp.state) || (gi < len(cp.gone) && cp.gone[gi][0] <= cp.state[si].index) {
				for i := cp.gone[gi][0]; i < cp.gone[gi][0]+cp.gone[gi][1]; i++ {
					w.gone(i)
				}
				gi++
			} else {
				s := cp.state[si]
				w.state(s.index, s.state, s.attempt, s.vis)
				si++
			}
			if gi+si > 1<<16 {
				return // too big to re-encode quickly
			}
		}
		cp2, err := decodeCheckpoint(w.finish(cp.acks, cp.base, cp.end))
		if err != nil {
			t.Fatalf("re-encoded checkpoint does not decode: %v", err)
		}
		if cp2.acks != cp.acks || cp2.base != cp.base || cp2.end != cp.end || len(cp2.state) != len(cp.state) {
			t.Fatalf("round trip: %+v vs %+v", cp, cp2)
		}
	})
}

// FuzzDecodeReceipt: no panics; what decodes re-encodes to the same string.
func FuzzDecodeReceipt(f *testing.F) {
	f.Add(encodeReceipt(receipt{epoch: 1, queue: 2, index: 3, attempt: 4}))
	f.Add("garbage")
	f.Fuzz(func(t *testing.T, s string) {
		r, ok := decodeReceipt(s)
		if ok && encodeReceipt(r) != s {
			t.Fatalf("receipt %q decodes but re-encodes to %q", s, encodeReceipt(r))
		}
	})
}

func TestEntrySize(t *testing.T) {
	if n := unsafe.Sizeof(entry{}); n != 24 {
		t.Fatalf("index entry is %d bytes, want 24 (memory per queued message)", n)
	}
}
