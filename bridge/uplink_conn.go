package bridge

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/sluicemq/sluice/queue"
)

// upOut is one message to publish upstream.
type upOut struct {
	seq     uint64 // the drain loop's handle
	topic   string
	qos     byte
	retain  bool
	payload []byte
	props   *queue.Properties // forwarded to MQTT 5 upstreams
	expiry  *uint32           // remaining message expiry, seconds (MQTT 5)
}

// upResult is the upstream's answer to one publish.
type upResult struct {
	seq    uint64
	code   byte   // MQTT 5 reason code of the PUBACK or PUBREC; ≥ 0x80 is a refusal
	reason string // the upstream's reason string, if it gave one
}

// upIn is a message the upstream sent us (downlink).
type upIn struct {
	topic   string
	qos     byte
	retain  bool
	payload []byte
	props   queue.Properties
	ack     func() // acknowledges it upstream (PUBACK / PUBREC); nil for QoS 0
}

// upParams is what a connection attempt needs.
type upParams struct {
	url       *url.URL
	tls       *tls.Config
	version   int // 4 (3.1.1) or 5
	clientID  string
	username  string
	password  string
	keepAlive time.Duration
	timeout   time.Duration // dial + handshake + CONNACK, and each write
	// results receives one upResult per publish confirmed on this connection. Its capacity must cover
	// the publishes that can be in flight, so the reader never blocks on it.
	results chan<- upResult
	// downlink, when subscribe is non-empty: messages are passed to onMessage on the reader goroutine,
	// which must not block for long (the upstream sends at most inflightIn unacknowledged ones), and
	// must give up when gone (the connection's end) is closed.
	subscribe  []string
	subQoS     byte
	inflightIn uint16
	onMessage  func(m upIn, gone <-chan struct{})
}

// upstreamConn is one live connection to the upstream broker. publish and flush are called from the
// drain loop only; the rest is safe from any goroutine.
type upstreamConn interface {
	// publish queues m for writing, in call order. An error means the connection is unusable.
	publish(m *upOut) error
	// flush writes what publish queued.
	flush() error
	// lost is closed when the connection is gone; cause then says why.
	lost() <-chan struct{}
	cause() error
	// window is how many publishes the upstream accepts in flight (its Receive Maximum).
	window() int
	// maxQoS is the highest QoS the upstream accepts.
	maxQoS() byte
	// close disconnects cleanly and waits for the connection's goroutines.
	close()
}

// ConnectError is a failed connection attempt: a network or TLS failure, or a CONNACK refusal.
type ConnectError struct {
	URL    string
	Code   byte   // CONNACK reason code (MQTT 5) or return code (3.1.1); 0 for network failures
	Reason string // the broker's reason string or a description of Code
	Err    error  // the network or TLS error, if any
}

func (e *ConnectError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("bridge: connect to %s: %v", e.URL, e.Err)
	}
	return fmt.Sprintf("bridge: connect to %s: refused with code 0x%02x (%s)", e.URL, e.Code, e.Reason)
}

func (e *ConnectError) Unwrap() error { return e.Err }

// errConnLost is the cause of a connection closed by us.
var errUpClosed = errors.New("bridge: connection closed")

// upLost is the shared part of a connection's end.
type upLost struct {
	once sync.Once
	ch   chan struct{}
	mu   sync.Mutex
	err  error
}

func newUpLost() upLost { return upLost{ch: make(chan struct{})} }

func (l *upLost) fail(err error) {
	l.once.Do(func() {
		l.mu.Lock()
		l.err = err
		l.mu.Unlock()
		close(l.ch)
	})
}

func (l *upLost) lost() <-chan struct{} { return l.ch }

func (l *upLost) cause() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// upConnect opens a connection with p.
func upConnect(ctx context.Context, p upParams) (upstreamConn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	if p.version == 4 {
		return connectV3(ctx, p)
	}
	nc, err := upDial(ctx, p.url, p.tls)
	if err != nil {
		return nil, &ConnectError{URL: upRedactURL(p.url), Err: err}
	}
	c, err := handshakeV5(ctx, nc, p)
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

// upRedactURL drops credentials from a URL for logs and errors.
func upRedactURL(u *url.URL) string {
	c := *u
	c.User = nil
	return c.String()
}

// upWriteBuffer is a bufio.Writer on a net.Conn that flushes with a deadline.
type upWriteBuffer struct {
	mu      sync.Mutex
	conn    net.Conn
	bw      *bufio.Writer
	timeout time.Duration
	dirty   bool // queued packets wait for a flush
}

// writeLocked writes a packet into the buffer; a write reaching the socket gets the deadline too.
func (w *upWriteBuffer) writeLocked(wt interface {
	WriteTo(io.Writer) (int64, error)
}) error {
	if w.bw.Available() < 4096 {
		_ = w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
	}
	_, err := wt.WriteTo(w.bw)
	return err
}

func (w *upWriteBuffer) flushLocked() error {
	w.dirty = false
	if w.bw.Buffered() == 0 {
		return nil
	}
	_ = w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.bw.Flush()
}

// upNetClosed reports whether err is the result of closing the connection ourselves.
func upNetClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
