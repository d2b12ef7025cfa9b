package wal

import (
	"encoding/binary"
	"hash/crc32"
)

// Record frame, stored as one tidwall/wal entry:
//
//	version (1 byte, = frameVersion)
//	crc32c of payload followed by the index (4 bytes, little endian)
//	index (8 bytes, little endian)
//	payload (≥ 1 byte)
//
// tidwall/wal stores each entry as uvarint(len(frame)) | frame in the segment
// file. The index in the frame lets a reader tell a record misplaced by a
// damaged length from the one it asked for, and lets Open recognise valid
// records after damage without knowing where they start.
const (
	frameVersion    = 1
	frameHeaderSize = 1 + 4 + 8
	minFrameSize    = frameHeaderSize + 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendUnsealedFrame appends the frame of payload (non-empty) to dst with
// index 0 and the checksum of the payload alone; sealFrame completes it once
// the index is known. Splitting the checksum lets callers do the costly part
// in parallel, leaving 8 bytes to the writer.
func appendUnsealedFrame(dst, payload []byte) []byte {
	var h [frameHeaderSize]byte
	h[0] = frameVersion
	binary.LittleEndian.PutUint32(h[1:5], crc32.Checksum(payload, castagnoli))
	dst = append(dst, h[:]...)
	return append(dst, payload...)
}

// sealFrame writes index into an unsealed frame and completes its checksum.
func sealFrame(frame []byte, index uint64) {
	binary.LittleEndian.PutUint64(frame[5:13], index)
	crc := crc32.Update(binary.LittleEndian.Uint32(frame[1:5]), castagnoli, frame[5:13])
	binary.LittleEndian.PutUint32(frame[1:5], crc)
}

// appendFrame appends the sealed frame of record index to dst.
func appendFrame(dst []byte, index uint64, payload []byte) []byte {
	s := len(dst)
	dst = appendUnsealedFrame(dst, payload)
	sealFrame(dst[s:], index)
	return dst
}

// frameError names what is wrong with a frame; it never allocates.
type frameError string

func (e frameError) Error() string { return string(e) }

const (
	errShortFrame  frameError = "frame shorter than header plus one payload byte"
	errBadVersion  frameError = "unknown frame version"
	errCRCMismatch frameError = "crc32c mismatch"
	errWrongIndex  frameError = "record carries another index (misplaced by a damaged length)"
	errTornEntry   frameError = "entry length runs past the end of the segment"
	errBadLength   frameError = "unreadable entry length"
)

// decodeFrame checks frame and returns its index and payload (a sub-slice of frame).
func decodeFrame(frame []byte) (uint64, []byte, error) {
	if len(frame) < minFrameSize {
		return 0, nil, errShortFrame
	}
	if frame[0] != frameVersion {
		return 0, nil, errBadVersion
	}
	payload := frame[frameHeaderSize:]
	crc := crc32.Update(crc32.Checksum(payload, castagnoli), castagnoli, frame[5:13])
	if crc != binary.LittleEndian.Uint32(frame[1:5]) {
		return 0, nil, errCRCMismatch
	}
	return binary.LittleEndian.Uint64(frame[5:13]), payload, nil
}

// decodeRecord checks that frame is a good frame of record index.
func decodeRecord(frame []byte, index uint64) ([]byte, error) {
	idx, payload, err := decodeFrame(frame)
	if err != nil {
		return nil, err
	}
	if idx != index {
		return nil, errWrongIndex
	}
	return payload, nil
}

// entrySize is the number of bytes tidwall/wal uses on disk for a frame of n bytes.
func entrySize(n int) int {
	var buf [binary.MaxVarintLen64]byte
	return binary.PutUvarint(buf[:], uint64(n)) + n
}

// nextEntry decodes the tidwall entry at the start of data: it returns the
// frame's index and payload and the entry's total size, or an error saying
// why it is unreadable. Lengths are checked against len(data) before
// anything is sliced.
func nextEntry(data []byte) (index uint64, payload []byte, n int, err error) {
	size, vn := binary.Uvarint(data)
	if vn == 0 {
		return 0, nil, 0, errTornEntry // data ends inside the length
	}
	if vn < 0 {
		return 0, nil, 0, errBadLength // overflows 64 bits
	}
	if size > uint64(len(data)-vn) {
		return 0, nil, 0, errTornEntry
	}
	end := vn + int(size)
	index, payload, err = decodeFrame(data[vn:end])
	if err != nil {
		return 0, nil, 0, err
	}
	return index, payload, end, nil
}

// scanResult is what scanSegment learned about one segment file.
type scanResult struct {
	count   uint64 // good records before the first bad one
	goodEnd int    // byte offset just past the last good record
	err     error  // nil when the whole segment is good, or fn's error
}

// scanSegment checks every entry of a segment whose first index is start,
// calling fn (if not nil) with each good record in order and the offset just
// past its entry; an error from fn stops the scan and is returned in err.
func scanSegment(data []byte, start uint64, fn func(index uint64, payload []byte, end int) error) scanResult {
	var r scanResult
	for r.goodEnd < len(data) {
		want := start + r.count
		index, payload, n, err := nextEntry(data[r.goodEnd:])
		if err == nil && index != want {
			err = errWrongIndex
		}
		if err != nil {
			r.err = err
			return r
		}
		if fn != nil {
			if err := fn(index, payload, r.goodEnd+n); err != nil {
				r.err = err
				return r
			}
		}
		r.goodEnd += n
		r.count++
	}
	return r
}

// damageIsTail reports whether the damage found by scanSegment runs to the
// end of the data: no valid record of a later index starts anywhere after
// it. Otherwise good data follows the damage (mid-log corruption).
func damageIsTail(data []byte, r scanResult, start uint64) bool {
	return !findEntry(data[r.goodEnd+1:], start+r.count)
}

// findEntry reports whether a valid entry of an index ≥ from starts at any
// offset of data. Its checksum work is bounded (a pathological input could
// otherwise cost quadratic time): past the budget it answers true, the
// cautious answer, which makes Open report corruption instead of cutting.
func findEntry(data []byte, from uint64) bool {
	budget := 16*len(data) + 1<<20 // bytes to checksum
	for off := 0; off+1+minFrameSize <= len(data); off++ {
		size, vn := binary.Uvarint(data[off:])
		if vn <= 0 || size < minFrameSize || size > uint64(len(data)-off-vn) {
			continue
		}
		frame := data[off+vn : off+vn+int(size)]
		if frame[0] != frameVersion || binary.LittleEndian.Uint64(frame[5:13]) < from {
			continue
		}
		if budget -= len(frame); budget < 0 {
			return true
		}
		if _, _, err := decodeFrame(frame); err == nil {
			return true
		}
	}
	return false
}
