package queue

import (
	"encoding/binary"
	"hash/crc32"
)

// Ack-state event record, version 1: a version byte, then one or more events:
//
//	kind 1 lease:  uv index, uv attempt, varint visible-at (unix ns: lease deadline)
//	kind 2 delay:  uv index, uv attempt, varint visible-at (unix ns: nack/backoff end)
//	kind 3 gone:   uv index                       (acked, dead-lettered, dropped, expired, redriven)
//	kind 4 range:  uv first index, uv count       (all gone: purge)
//
// Replay is order-tolerant: gone is final, and a lease/delay event only applies when its attempt
// is at least the entry's attempt.
const (
	evVersion = 1

	evLease = 1
	evDelay = 2
	evGone  = 3
	evRange = 4
)

type event struct {
	kind    byte
	index   uint64
	attempt uint64 // lease, delay; count for range
	vis     int64
}

func appendEvent(b []byte, e event) []byte {
	if len(b) == 0 {
		b = append(b, evVersion)
	}
	b = append(b, e.kind)
	b = binary.AppendUvarint(b, e.index)
	switch e.kind {
	case evLease, evDelay:
		b = binary.AppendUvarint(b, e.attempt)
		b = binary.AppendVarint(b, e.vis)
	case evRange:
		b = binary.AppendUvarint(b, e.attempt)
	}
	return b
}

// decodeEvents calls fn for every event of an ack-state record.
func decodeEvents(b []byte, fn func(event)) error {
	if len(b) < 2 {
		return errShort
	}
	if b[0] != evVersion {
		return errVersion
	}
	r := reader{b: b[1:]}
	for len(r.b) > 0 {
		var e event
		e.kind = r.byte1()
		e.index = r.uvarint()
		switch e.kind {
		case evLease, evDelay:
			e.attempt = r.uvarint()
			e.vis = r.varint()
		case evGone:
		case evRange:
			e.attempt = r.uvarint()
		default:
			return errKind
		}
		if r.err != nil {
			return r.err
		}
		fn(e)
	}
	return nil
}

// Checkpoint file, version 1: a snapshot of one store's ack state.
//
//	0..3   magic "SLQC"
//	4      version (1)
//	5..12  acks index: the ack log is replayed from the next index
//	13..20 base: every message index below base is gone
//	21..28 end: the snapshot covers [base, end); indexes ≥ end are live unless the ack log says otherwise
//	then   uv number of gone runs, each uv gap since the previous run's end (starting at base), uv length
//	       uv number of states, each uv gap since the previous index (starting at base), byte state,
//	       uv attempt, varint visible-at
//	last 4 CRC-32C (Castagnoli) of everything before
const (
	cpMagic   = "SLQC"
	cpVersion = 1
	cpFixed   = 29
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type cpState struct {
	index   uint64
	state   uint8 // stLeased or stDelayed or stReady (ready with attempts > 0)
	attempt uint32
	vis     int64
}

type checkpoint struct {
	acks  uint64
	base  uint64
	end   uint64
	gone  [][2]uint64 // [first, count]
	state []cpState
}

// cpWriter builds a checkpoint incrementally so the snapshot needs no intermediate slices.
type cpWriter struct {
	runs, states           []byte
	nRuns, nStates         uint64
	runStart, runLen, prev uint64 // current gone run; prev: end of the previous run
	lastState              uint64
}

func newCPWriter(base uint64) *cpWriter {
	return &cpWriter{prev: base, lastState: base}
}

func (w *cpWriter) gone(i uint64) {
	if w.runLen > 0 && w.runStart+w.runLen == i {
		w.runLen++
		return
	}
	w.flushRun()
	w.runStart, w.runLen = i, 1
}

func (w *cpWriter) flushRun() {
	if w.runLen == 0 {
		return
	}
	w.runs = binary.AppendUvarint(w.runs, w.runStart-w.prev)
	w.runs = binary.AppendUvarint(w.runs, w.runLen)
	w.prev = w.runStart + w.runLen
	w.nRuns++
	w.runLen = 0
}

func (w *cpWriter) state(i uint64, st uint8, attempt uint32, vis int64) {
	w.states = binary.AppendUvarint(w.states, i-w.lastState)
	w.states = append(w.states, st)
	w.states = binary.AppendUvarint(w.states, uint64(attempt))
	w.states = binary.AppendVarint(w.states, vis)
	w.lastState = i
	w.nStates++
}

func (w *cpWriter) finish(acks, base, end uint64) []byte {
	w.flushRun()
	b := make([]byte, 0, cpFixed+len(w.runs)+len(w.states)+24)
	b = append(b, cpMagic...)
	b = append(b, cpVersion)
	b = binary.LittleEndian.AppendUint64(b, acks)
	b = binary.LittleEndian.AppendUint64(b, base)
	b = binary.LittleEndian.AppendUint64(b, end)
	b = binary.AppendUvarint(b, w.nRuns)
	b = append(b, w.runs...)
	b = binary.AppendUvarint(b, w.nStates)
	b = append(b, w.states...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeCheckpoint(b []byte) (*checkpoint, error) {
	if len(b) < cpFixed+2+4 {
		return nil, errShort
	}
	if string(b[:4]) != cpMagic {
		return nil, decodeError("bad magic")
	}
	if b[4] != cpVersion {
		return nil, errVersion
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, errCRC
	}
	cp := &checkpoint{
		acks: binary.LittleEndian.Uint64(b[5:]),
		base: binary.LittleEndian.Uint64(b[13:]),
		end:  binary.LittleEndian.Uint64(b[21:]),
	}
	if cp.end < cp.base {
		return nil, errLength
	}
	r := reader{b: body[cpFixed:]}
	n := r.uvarint()
	if n > uint64(len(r.b)/2) {
		return nil, errLength
	}
	cp.gone = make([][2]uint64, 0, n)
	prev := cp.base
	for ; n > 0 && r.err == nil; n-- {
		gap, cnt := r.uvarint(), r.uvarint()
		first := prev + gap
		if first < prev || first+cnt < first || first+cnt > cp.end || cnt == 0 {
			return nil, errLength
		}
		cp.gone = append(cp.gone, [2]uint64{first, cnt})
		prev = first + cnt
	}
	n = r.uvarint()
	if n > uint64(len(r.b)/4) {
		return nil, errLength
	}
	cp.state = make([]cpState, 0, n)
	prev = cp.base
	for ; n > 0 && r.err == nil; n-- {
		gap := r.uvarint()
		st := r.byte1()
		att := r.uvarint()
		vis := r.varint()
		i := prev + gap
		if i < prev || i >= cp.end || att > 1<<32-1 || (st != stLeased && st != stDelayed && st != stReady) {
			return nil, errLength
		}
		cp.state = append(cp.state, cpState{index: i, state: st, attempt: uint32(att), vis: vis})
		prev = i
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, errTrail
	}
	return cp, nil
}
