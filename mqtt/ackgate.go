package mqtt

import (
	"encoding/binary"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// AckGate holds back the acknowledgement of one QoS 1 publish on its connection until the
// caller decides it (OpenAcks). It is how the bridge acks a publish only once its record is
// durable without blocking the connection's reader: mochi handles the publish as usual (ACL,
// retain, delivery to subscribers, PUBACK) while the record is written, and the PUBACK it writes
// waits here.
//
// While a connection has a gate not yet opened, every acknowledgement written after it (PUBACK,
// PUBREC, PUBCOMP, and a DISCONNECT) waits behind it, so acknowledgements leave in the order the
// publishes came [MQTT-4.6.0-2]; other packets (deliveries to the client, PINGRESP, SUBACK) pass.
type AckGate struct {
	c  *conn
	id uint16
	v5 bool
	// guarded by c.mu
	opened bool
	code   byte   // set by OpenAcks: < 0x80 sends mochi's ack, ≥ 0x80 a failure
	ack    []byte // mochi's acknowledgement, once written (in ackBuf when it fits)
	ackBuf [8]byte
}

// ackItem is a gate, or (gate nil) an acknowledgement written behind one.
type ackItem struct {
	g   *AckGate
	pkt []byte
}

// GateAck gates the acknowledgement of cl's QoS 1 publish packetID. Call it from an OnPublish
// hook (the connection's reader goroutine) that then returns the packet to mochi without error:
// mochi writes the PUBACK, which waits until OpenAcks. It returns nil when cl is not on one of
// this server's listeners or its connection is closed; the caller must then not rely on a gate.
func (s *Server) GateAck(cl *mochi.Client, packetID uint16) *AckGate {
	if cl == nil {
		return nil
	}
	c := connOf(cl)
	if c == nil {
		return nil
	}
	g := &AckGate{c: c, id: packetID, v5: cl.Properties.ProtocolVersion == 5}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.acks = append(c.acks, ackItem{g: g})
	return g
}

// OpenAcks decides gates: codes[i] below 0x80 lets the acknowledgement mochi wrote for gates[i]
// go out; 0x80 or above replaces it by a PUBACK with that reason code for MQTT 5 clients and by
// nothing for MQTT 3.1.1 clients (they resend). What became free to leave leaves in one write per
// connection. Safe from any goroutine.
func (s *Server) OpenAcks(gates []*AckGate, codes []byte) {
	var c *conn
	for i, g := range gates {
		if g.c != c {
			if c != nil {
				c.openedLocked()
				c.mu.Unlock()
			}
			c = g.c
			c.mu.Lock()
		}
		g.opened, g.code = true, codes[i]
	}
	if c != nil {
		c.openedLocked()
		c.mu.Unlock()
	}
}

// openedLocked writes the acknowledgements that became free to leave. c.mu is held.
func (c *conn) openedLocked() {
	if c.closed || c.werr != nil {
		return
	}
	if out := c.readyAcksLocked(c.scratch[:0]); len(out) > 0 {
		_, _ = c.writeLocked(out)
		c.keepScratch(out)
	}
}

// maxScratch bounds the buffer a connection keeps for gated writes: acknowledgements are small,
// a delivery passing a gate may not be.
const maxScratch = 1024

// keepScratch keeps out, written, for the next gated write. c.mu is held.
func (c *conn) keepScratch(out []byte) {
	if cap(out) <= maxScratch {
		c.scratch = out[:0]
	} else {
		c.scratch = nil
	}
}

// gateLocked sorts the packets of p while gates are pending: acknowledgements join the queue
// behind the gates (mochi's ack for a gate is kept in its gate), other packets pass. It returns
// what may be written now. c.mu is held.
func (c *conn) gateLocked(p []byte) []byte {
	out := c.scratch[:0]
	for i := 0; i < len(p); {
		size, ok := packetLen(p[i:])
		if !ok { // not whole packets (mochi always writes whole ones): let them pass
			out = append(out, p[i:]...)
			break
		}
		pk := p[i : i+size]
		i += size
		switch pk[0] >> 4 {
		case packets.Puback:
			if g := c.gateFor(pk); g != nil {
				g.ack = append(g.ackBuf[:0], pk...)
				continue
			}
			fallthrough
		case packets.Pubrec, packets.Pubcomp, packets.Disconnect:
			c.acks = append(c.acks, ackItem{pkt: append([]byte(nil), pk...)})
		default:
			out = append(out, pk...)
		}
	}
	return c.readyAcksLocked(out)
}

// gateFor returns the gate waiting for the PUBACK pk: the latest gate of its packet id without
// its ack yet (a client reuses an id only after its PUBACK, or after a failure that sent none).
func (c *conn) gateFor(pk []byte) *AckGate {
	hdr, _, _ := fixedHeader(pk) // pk is a whole packet
	if len(pk) < hdr+2 {
		return nil
	}
	id := binary.BigEndian.Uint16(pk[hdr:])
	for i := len(c.acks) - 1; i >= 0; i-- {
		if g := c.acks[i].g; g != nil && g.id == id && g.ack == nil {
			return g
		}
	}
	return nil
}

// readyAcksLocked appends to out the acknowledgements at the head of the queue that may leave:
// up to the first gate not opened or whose ack mochi has not written yet. c.mu is held.
func (c *conn) readyAcksLocked(out []byte) []byte {
	n := 0
	for ; n < len(c.acks); n++ {
		it := c.acks[n]
		if it.g == nil {
			out = append(out, it.pkt...)
			continue
		}
		g := it.g
		if !g.opened || g.ack == nil {
			break
		}
		switch {
		case g.code < 0x80:
			out = append(out, g.ack...)
		case g.v5:
			// PUBACK, remaining length 3: packet id and reason code, no properties.
			out = append(out, packets.Puback<<4, 3, byte(g.id>>8), byte(g.id), g.code)
		}
	}
	if n > 0 {
		rest := copy(c.acks, c.acks[n:])
		clear(c.acks[rest:])
		c.acks = c.acks[:rest]
	}
	return out
}

// closingAcksLocked is what of the queue leaves when the connection closes: what may leave, and a
// DISCONNECT waiting behind a gate that was not opened (its publish gets no ack: the client
// resends it). c.mu is held.
func (c *conn) closingAcksLocked() []byte {
	out := c.readyAcksLocked(nil)
	for _, it := range c.acks {
		if it.g == nil && it.pkt[0]>>4 == packets.Disconnect {
			out = append(out, it.pkt...)
		}
	}
	clear(c.acks)
	c.acks = nil
	return out
}
