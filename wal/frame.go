package wal

import (
	"encoding/binary"
	"hash/crc32"
)

// Record frame, stored as one tidwall/wal entry:
//
//	version (1 byte, = frameVersion) | crc32c of payload (4 bytes, little endian) | payload (≥ 1 byte)
//
// tidwall/wal stores each entry as uvarint(len(frame)) | frame in the segment file.
const (
	frameVersion    = 1
	frameHeaderSize = 5
	minFrameSize    = frameHeaderSize + 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendFrame appends the frame of payload (non-empty) to dst.
func appendFrame(dst, payload []byte) []byte {
	var h [frameHeaderSize]byte
	h[0] = frameVersion
	binary.LittleEndian.PutUint32(h[1:], crc32.Checksum(payload, castagnoli))
	dst = append(dst, h[:]...)
	return append(dst, payload...)
}

// frameError names what is wrong with a frame; it never allocates.
type frameError string

func (e frameError) Error() string { return string(e) }

const (
	errShortFrame  frameError = "frame shorter than header plus one payload byte"
	errBadVersion  frameError = "unknown frame version"
	errCRCMismatch frameError = "crc32c mismatch"
	errTornEntry   frameError = "entry length runs past the end of the segment"
	errBadLength   frameError = "unreadable entry length"
)

// decodeFrame checks frame and returns its payload, a sub-slice of frame.
func decodeFrame(frame []byte) ([]byte, error) {
	if len(frame) < minFrameSize {
		return nil, errShortFrame
	}
	if frame[0] != frameVersion {
		return nil, errBadVersion
	}
	payload := frame[frameHeaderSize:]
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(frame[1:frameHeaderSize]) {
		return nil, errCRCMismatch
	}
	return payload, nil
}

// entrySize is the number of bytes tidwall/wal uses on disk for a frame of n bytes.
func entrySize(n int) int {
	var buf [binary.MaxVarintLen64]byte
	return binary.PutUvarint(buf[:], uint64(n)) + n
}

// nextEntry decodes the tidwall entry at the start of data: it returns the
// payload and the entry's total size, or an error saying why it is unreadable.
// Lengths are checked against len(data) before anything is sliced.
func nextEntry(data []byte) (payload []byte, n int, err error) {
	size, vn := binary.Uvarint(data)
	if vn == 0 {
		return nil, 0, errTornEntry // buffer ends inside the length
	}
	if vn < 0 {
		return nil, 0, errBadLength // overflows 64 bits
	}
	if size > uint64(len(data)-vn) {
		return nil, 0, errTornEntry
	}
	end := vn + int(size)
	payload, err = decodeFrame(data[vn:end])
	if err != nil {
		return nil, 0, err
	}
	return payload, end, nil
}

// scanResult is what scanSegment learned about one segment file.
type scanResult struct {
	count   uint64 // good records before the first bad one
	goodEnd int    // byte offset just past the last good record
	err     error  // nil when the whole segment is good
	// resync reports whether a valid entry starts somewhere after goodEnd: if
	// none does, the damage runs to the end of the file (a torn or zero-filled
	// tail); if one does, good data follows the damage (mid-log corruption).
	resync bool
}

// scanSegment checks every entry of a segment's contents, calling fn (if not
// nil) with each good payload in order.
func scanSegment(data []byte, fn func(payload []byte)) scanResult {
	var r scanResult
	for r.goodEnd < len(data) {
		payload, n, err := nextEntry(data[r.goodEnd:])
		if err != nil {
			r.err = err
			r.resync = findEntry(data[r.goodEnd+1:])
			return r
		}
		if fn != nil {
			fn(payload)
		}
		r.goodEnd += n
		r.count++
	}
	return r
}

// findEntry reports whether a valid entry starts at any offset of data. Its
// checksum work is bounded (a pathological input could otherwise cost
// quadratic time): past the budget it answers true, the cautious answer,
// which makes Open report corruption instead of silently cutting.
func findEntry(data []byte) bool {
	budget := 16*len(data) + 1<<20 // bytes to checksum
	for off := 0; off+1+minFrameSize <= len(data); off++ {
		size, vn := binary.Uvarint(data[off:])
		if vn <= 0 || size < minFrameSize || size > uint64(len(data)-off-vn) {
			continue
		}
		frame := data[off+vn : off+vn+int(size)]
		if frame[0] != frameVersion {
			continue
		}
		if budget -= len(frame); budget < 0 {
			return true
		}
		if _, err := decodeFrame(frame); err == nil {
			return true
		}
	}
	return false
}
