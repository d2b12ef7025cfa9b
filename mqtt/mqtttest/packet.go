package mqtttest

import (
	"bufio"
	"io"
)

// AppendHeader appends an MQTT fixed header to b: first (packet type << 4 | flags), then the
// remaining length n as a variable byte integer.
func AppendHeader(b []byte, first byte, n int) []byte {
	b = append(b, first)
	for {
		c := byte(n % 128)
		n /= 128
		if n > 0 {
			c |= 0x80
		}
		b = append(b, c)
		if n == 0 {
			return b
		}
	}
}

// WritePacket writes one packet (fixed header, then body) to w. It does not flush; w keeps the
// first write error, which its Flush returns.
func WritePacket(w *bufio.Writer, first byte, body []byte) {
	_, _ = w.Write(AppendHeader(nil, first, len(body)))
	_, _ = w.Write(body)
}

// ReadPacket reads one packet from r and returns the first byte of its fixed header (type in the
// high nibble, flags in the low one) and its body.
func ReadPacket(r *bufio.Reader) (first byte, body []byte, err error) {
	first, err = r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mult := 0, 1
	for {
		c, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(c&0x7f) * mult
		if c&0x80 == 0 {
			break
		}
		mult *= 128
	}
	body = make([]byte, n)
	_, err = io.ReadFull(r, body)
	return first, body, err
}
