package queue

import (
	"encoding/base64"
	"encoding/binary"
	"hash/crc32"
)

// Receipt layout (25 bytes, base64url without padding: 34 characters):
//
//	0      version (1)
//	1..4   epoch of the queue that issued it (random per Open, +1 per reopen after a failed write):
//	       receipts do not survive a restart or a reopen
//	5..8   CRC-32C of the queue name: a receipt of another queue is refused
//	9..16  log index of the message
//	17..20 attempt number of the delivery: a later delivery has a higher attempt, so an old
//	       receipt can never settle it
//	21..24 CRC-32C of bytes 0..20: garbage is told apart from stale receipts
const (
	rcptVersion = 1
	rcptLen     = 25
)

type receipt struct {
	epoch   uint32
	queue   uint32
	index   uint64
	attempt uint32
}

func nameHash(name string) uint32 { return crc32.Checksum([]byte(name), castagnoli) }

func encodeReceipt(r receipt) string {
	var b [rcptLen]byte
	b[0] = rcptVersion
	binary.LittleEndian.PutUint32(b[1:], r.epoch)
	binary.LittleEndian.PutUint32(b[5:], r.queue)
	binary.LittleEndian.PutUint64(b[9:], r.index)
	binary.LittleEndian.PutUint32(b[17:], r.attempt)
	binary.LittleEndian.PutUint32(b[21:], crc32.Checksum(b[:21], castagnoli))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func decodeReceipt(s string) (receipt, bool) {
	var r receipt
	if len(s) != base64.RawURLEncoding.EncodedLen(rcptLen) {
		return r, false
	}
	var b [rcptLen]byte
	if n, err := base64.RawURLEncoding.Strict().Decode(b[:], []byte(s)); err != nil || n != rcptLen {
		return r, false
	}
	if b[0] != rcptVersion || crc32.Checksum(b[:21], castagnoli) != binary.LittleEndian.Uint32(b[21:]) {
		return r, false
	}
	r.epoch = binary.LittleEndian.Uint32(b[1:])
	r.queue = binary.LittleEndian.Uint32(b[5:])
	r.index = binary.LittleEndian.Uint64(b[9:])
	r.attempt = binary.LittleEndian.Uint32(b[17:])
	return r, true
}
