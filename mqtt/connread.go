package mqtt

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

const (
	// clientReadBufferSize is mochi's per-client bufio.Reader (Options.ClientNetReadBufferSize),
	// held for the life of the connection. It is small because conn.Read below does the buffering
	// of a busy connection with a pooled buffer, and an idle connection needs none: mochi's 2 KiB
	// here were a quarter of an idle connection's heap (BenchmarkIdleConnections).
	clientReadBufferSize = 128
	// readBufSize is the pooled buffer one read(2) of a busy connection fills.
	readBufSize = 2048
)

var readBufPool = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// inbound is the read side of a TCP conn, touched only by the connection's reader goroutine.
// The socket is read through its syscall.RawConn, so that the pooled buffer is taken only when
// read(2) has data for it: a connection waiting for its next packet holds no buffer.
//
// TLS and WebSocket connections (raw nil) read through a bufio.Reader of readBufSize instead, as
// mochi's own was before: their net.Conn holds decrypted or unframed bytes out of sight, and a
// read of only what mochi asks for would leave them there, where InputBuffered cannot see them.
type inbound struct {
	raw      syscall.RawConn    // nil: TLS and WebSocket connections read through br
	fn       func(uintptr) bool // c.rawRead, bound once
	br       *bufio.Reader      // over (*socketReader)(c), when raw is nil
	buf      *[]byte            // pooled; (*buf)[off:end] is read but not yet returned
	off, end int

	beforeWait func() // run once before the next read of the socket (Server.BeforeReadWait)

	// one raw read in progress
	dst []byte
	n   int
	err error
}

// rawConnOf returns the RawConn of a plain TCP connection accepted by a listener, nil otherwise.
func rawConnOf(inner net.Conn) syscall.RawConn {
	if !rawReadSupported {
		return nil
	}
	cc, ok := inner.(*countedConn)
	if !ok {
		return nil
	}
	tc, ok := cc.Conn.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// Read returns what the last read(2) left in the pooled buffer (or br); when there is nothing
// left, it flushes pending writes (see Write) and reads the socket, blocking until data arrives.
func (c *conn) Read(p []byte) (int, error) {
	if in := &c.in; in.buf != nil {
		n := copy(p, (*in.buf)[in.off:in.end])
		in.off += n
		if in.off == in.end {
			in.release()
		}
		return n, nil
	} else if in.br != nil && in.br.Buffered() > 0 {
		return in.br.Read(p)
	}
	if c.in.raw == nil {
		c.beforeWait() // everything received so far is handled (a raw read does it on EAGAIN)
	}
	c.mu.Lock()
	if c.buf != nil && len(*c.buf) > 0 {
		if err := c.flushLocked(); err != nil {
			c.mu.Unlock()
			return 0, err
		}
	}
	c.reading = true
	c.mu.Unlock()

	n, err := c.readSocket(p)

	c.mu.Lock()
	c.reading = false
	c.mu.Unlock()
	if err != nil && !c.established.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
		c.srv.metrics.connectTimeout()
	}
	return n, err
}

// beforeWait runs the function BeforeReadWait left, if any: the reader goroutine is about to wait
// (for the network, or for a saturated subscriber under backpressure). Reader goroutine only.
func (c *conn) beforeWait() {
	if f := c.in.beforeWait; f != nil {
		c.in.beforeWait = nil
		f()
	}
}

// readSocket reads once from the connection into p: from br for TLS and WebSocket, else through
// the pooled buffer when p is smaller than it.
func (c *conn) readSocket(p []byte) (int, error) {
	in := &c.in
	switch {
	case in.br != nil:
		return in.br.Read(p)
	case len(p) == 0:
		return 0, nil
	}
	in.dst = p
	err := in.raw.Read(in.fn)
	n, rerr := in.n, in.err
	in.dst, in.n, in.err = nil, 0, nil
	switch {
	case err != nil: // closed, or a deadline passed
		in.release()
		return 0, err
	case rerr != nil:
		in.release()
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n == 0:
		in.release()
		return 0, io.EOF
	}
	c.rx.Add(int64(n)) // received, whether returned now or left in the buffer (see InputBuffered)
	if in.buf == nil { // read straight into p
		return n, nil
	}
	m := copy(p, (*in.buf)[:n])
	in.off, in.end = m, n
	if m == n {
		in.release()
	}
	return m, nil
}

// rawRead is the RawConn read callback: one read(2), into the caller's slice if it is at least
// readBufSize long, else into a pooled buffer. It returns false, holding no buffer, when there is
// nothing to read yet: RawConn then waits for readability (or the deadline) and calls it again.
func (c *conn) rawRead(fd uintptr) bool {
	in := &c.in
	dst := in.dst
	if len(dst) < readBufSize {
		in.buf = readBufPool.Get().(*[]byte)
		dst = *in.buf
	}
	n, err := rawReadFD(fd, dst)
	if err == syscall.EAGAIN { // read(2) returns a bare Errno
		in.release()
		c.beforeWait() // nothing more has arrived: the reader is about to wait
		return false
	}
	in.n, in.err = max(n, 0), err
	return true
}

// socketReader is the conn as the io.Reader under br: the underlying net.Conn, counted in rx.
type socketReader conn

func (r *socketReader) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.rx.Add(int64(n))
	return n, err
}

func (in *inbound) release() {
	if in.buf != nil {
		readBufPool.Put(in.buf)
		in.buf = nil
	}
	in.off, in.end = 0, 0
}
