package mqtt

import (
	"bufio"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

const (
	// flushThreshold: a Write that makes the pending buffer this large is written at once.
	flushThreshold = 4096
	// flushDelay bounds how long a Write may wait in the buffer when the reader is busy.
	flushDelay = 2 * time.Millisecond
	// closeFlushTimeout bounds the final flush of Close to a peer that does not read.
	closeFlushTimeout = time.Second
)

var writeBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 2*flushThreshold); return &b }}

// conn is the net.Conn mochi gets for every accepted connection. It
//   - coalesces writes: a Write made while the connection's reader goroutine is processing packets
//     is buffered and written when the reader is about to block in Read, when the buffer passes
//     flushThreshold, or after flushDelay — whichever comes first. A Write made while the reader is
//     blocked in Read is written at once. Data is never held longer than flushDelay. One PUBACK per
//     write(2) was 44% of stock mochi's CPU in QoS 1 fan-in; this turns a batch of acks into one.
//   - notices the CONNECT timeout (a read deadline set at accept, replaced by mochi's keep-alive
//     deadline after CONNECT) and counts it;
//   - reads a plain TCP socket through a pooled buffer taken only while read(2) has data, so that
//     an idle connection holds no read buffer (connread.go);
//   - carries per-connection state for our hooks (ACL grants, rate bucket, slow-subscriber state),
//     so hooks find it with a type assertion on cl.Net.Conn instead of a locked map.
type conn struct {
	net.Conn
	srv      *Server
	ln       *listener
	certCN   string // CommonName of a verified client certificate, "" if none
	verified bool   // a client certificate was presented and verified

	in inbound // read side (connread.go), reader goroutine only

	mu      sync.Mutex
	buf     *[]byte
	reading bool
	// connacked: the CONNACK has been written; until then other packets wait in early
	// (beforeConnack).
	connacked bool
	early     []byte
	acks      []ackItem // gates not yet opened, and acknowledgements behind them (ackgate.go)
	scratch   []byte    // what gateLocked and openedLocked write (writeLocked keeps no reference)
	closed    bool
	timer     *time.Timer
	armed     bool
	werr      error

	established atomic.Bool
	grants      atomic.Pointer[grants]

	// input accounting (see InputBuffered): bytes Read returned, and bytes of the packets mochi
	// parsed from them; written by the reader goroutine only.
	rx, parsed atomic.Int64

	// rate limiting, touched only by the reader goroutine (OnPacketRead).
	tokens   float64
	lastFill time.Time

	// slow subscriber state, touched by publisher goroutines.
	fullSince atomic.Int64 // unix nanos of the first drop of the current episode, 0 if none
	lastDrop  atomic.Int64
	waiters   atomic.Int32
	sentMu    sync.Mutex
	sentCh    chan struct{} // closed and replaced when the writer sends a packet and someone waits
	saturated atomic.Bool   // in-flight window full (backpressure policy)
}

func newConn(inner net.Conn, srv *Server, ln *listener) *conn {
	c := &conn{Conn: inner, srv: srv, ln: ln}
	if c.in.raw = rawConnOf(inner); c.in.raw != nil {
		c.in.fn = c.rawRead
	} else {
		c.in.br = bufio.NewReaderSize((*socketReader)(c), readBufSize)
	}
	return c
}

// Write buffers p or writes it at once; see the type comment.
func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if c.werr != nil {
		return 0, c.werr
	}
	if !c.connacked {
		out, ok := c.beforeConnack(p)
		if !ok {
			return len(p), nil // held until the CONNACK
		}
		if _, err := c.writeLocked(out); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if len(c.acks) > 0 {
		out := c.gateLocked(p)
		if len(out) > 0 {
			_, err := c.writeLocked(out)
			c.keepScratch(out)
			if err != nil {
				return 0, err
			}
		}
		return len(p), nil
	}
	return c.writeLocked(p)
}

// beforeConnack keeps the CONNACK first on the wire [MQTT-3.2.0-1]. mochi v2.7.9 registers a
// resuming client (Clients.Add) before it writes the CONNACK, and its writer goroutine already
// runs, so a message fanned out at that moment was written first and clients (paho.golang:
// "unexpected packet") dropped the connection. Packets written before the CONNACK are held and
// follow it; p may hold several packets (mochi batches writes). DISCONNECT and AUTH pass, as mochi
// sends them. It returns what to write now, and false while nothing may be written yet.
func (c *conn) beforeConnack(p []byte) ([]byte, bool) {
	var connack, rest []byte
	pass := false // a DISCONNECT or AUTH first, with nothing held
	for i := 0; i < len(p); {
		size, ok := packetLen(p[i:])
		if !ok { // not whole packets (mochi always writes whole ones): stop reordering
			c.connacked = true
			out := slices.Concat(c.early, p)
			c.early = nil
			return out, true
		}
		pk := p[i : i+size]
		i += size
		switch pk[0] >> 4 {
		case packets.Connack:
			connack = pk
			continue
		case packets.Disconnect, packets.Auth:
			if connack == nil && len(c.early) == 0 && len(rest) == 0 {
				pass = true
			}
		}
		rest = append(rest, pk...)
	}
	switch {
	case connack != nil:
		c.connacked = true
		out := slices.Concat(connack, c.early, rest)
		c.early = nil
		return out, true
	case pass:
		return rest, true
	}
	c.early = append(c.early, rest...)
	return nil, false
}

// packetLen returns the size of the MQTT packet at the start of b, false if b does not hold it all.
func packetLen(b []byte) (int, bool) {
	hdr, remaining, ok := fixedHeader(b)
	if !ok {
		return 0, false
	}
	return hdr + remaining, hdr+remaining <= len(b)
}

// fixedHeader decodes the fixed header at the start of b: its length (type byte and remaining
// length) and the remaining length; false if b does not hold it all.
func fixedHeader(b []byte) (hdr, remaining int, ok bool) {
	mul := 1
	for i := 1; i < len(b) && i <= 4; i++ {
		remaining += int(b[i]&0x7f) * mul
		if b[i]&0x80 == 0 {
			return i + 1, remaining, true
		}
		mul *= 128
	}
	return 0, 0, false
}

// writeLocked writes p at once or buffers it (see the type comment); c.mu is held.
func (c *conn) writeLocked(p []byte) (int, error) {
	direct := c.reading
	if (direct || c.srv.noCoalesce) && (c.buf == nil || len(*c.buf) == 0) {
		n, err := c.Conn.Write(p)
		if err != nil {
			c.werr = err
		}
		return n, err
	}
	if c.buf == nil {
		c.buf = writeBufPool.Get().(*[]byte)
	}
	*c.buf = append(*c.buf, p...)
	if direct || len(*c.buf) >= flushThreshold {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	if !c.armed {
		c.armed = true
		if c.timer == nil {
			c.timer = time.AfterFunc(flushDelay, c.timerFlush)
		} else {
			c.timer.Reset(flushDelay)
		}
	}
	return len(p), nil
}

func (c *conn) timerFlush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.armed = false
	if !c.closed {
		_ = c.flushLocked()
	}
}

// flushLocked writes the pending buffer and returns it to the pool. c.mu must be held.
func (c *conn) flushLocked() error {
	if c.buf == nil {
		return c.werr
	}
	b := c.buf
	c.buf = nil
	if c.armed && c.timer.Stop() {
		c.armed = false // nothing left for the timer to flush
	}
	var err error
	if len(*b) > 0 && c.werr == nil {
		_, err = c.Conn.Write(*b)
		if err != nil {
			c.werr = err
		}
	}
	if cap(*b) <= 4*flushThreshold {
		*b = (*b)[:0]
		writeBufPool.Put(b)
	}
	if err != nil {
		return err
	}
	return c.werr
}

// Close flushes what is pending (bounded by closeFlushTimeout) and closes the connection.
func (c *conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	if len(c.acks) > 0 {
		if out := c.closingAcksLocked(); len(out) > 0 && c.werr == nil {
			if c.buf == nil {
				c.buf = writeBufPool.Get().(*[]byte)
			}
			*c.buf = append(*c.buf, out...)
		}
	}
	if c.buf != nil && len(*c.buf) > 0 && c.werr == nil {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
		_ = c.flushLocked()
	}
	c.closed = true
	if c.timer != nil {
		c.timer.Stop()
	}
	if c.buf != nil {
		*c.buf = (*c.buf)[:0]
		writeBufPool.Put(c.buf)
		c.buf = nil
	}
	c.mu.Unlock()
	err := c.Conn.Close()
	if c.ln != nil {
		c.ln.untrack(c)
	}
	return err
}

// abort closes the connection without flushing: for a subscriber whose socket is full, where a
// flush (or a DISCONNECT) would block the caller.
func (c *conn) abort() {
	// Close first, without c.mu: a writer blocked on the full socket holds c.mu, and Close is what
	// unblocks it.
	_ = c.Conn.Close()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	if c.timer != nil {
		c.timer.Stop()
	}
	c.buf = nil
	c.acks = nil
	c.mu.Unlock()
	if c.ln != nil {
		c.ln.untrack(c)
	}
}

// notifySent wakes publishers waiting under the backpressure policy.
func (c *conn) notifySent() {
	if c.waiters.Load() == 0 {
		return
	}
	c.sentMu.Lock()
	if c.sentCh != nil {
		close(c.sentCh)
		c.sentCh = nil
	}
	c.sentMu.Unlock()
}

// sentSignal returns a channel closed at the next packet the connection writes.
func (c *conn) sentSignal() <-chan struct{} {
	c.sentMu.Lock()
	defer c.sentMu.Unlock()
	if c.sentCh == nil {
		c.sentCh = make(chan struct{})
	}
	return c.sentCh
}

// countedConn releases the listener's connection slot when closed (once).
type countedConn struct {
	net.Conn
	srv  *Server
	once atomic.Bool
}

func (c *countedConn) Close() error {
	if c.once.CompareAndSwap(false, true) {
		c.srv.conns.Add(-1)
		c.srv.metrics.connClosed()
	}
	return c.Conn.Close()
}
