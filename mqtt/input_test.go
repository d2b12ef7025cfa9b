package mqtt

import (
	"bytes"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// peekHook records, for every publish, what InputBuffered said when the hook ran.
type peekHook struct {
	mochi.HookBase
	srv *Server
	got chan bool
}

func (h *peekHook) ID() string           { return "peek" }
func (h *peekHook) Provides(b byte) bool { return b == mochi.OnPublish }

// next returns what InputBuffered said for the next publish, failing t after 5 s.
func (h *peekHook) next(t testing.TB) bool {
	t.Helper()
	select {
	case v := <-h.got:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("publish not seen by the hook")
		return false
	}
}

func (h *peekHook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	h.got <- h.srv.InputBuffered(cl)
	return pk, nil
}

// TestInputBuffered: a publish followed in the same write by another sees input buffered behind
// it; the last of a burst and a lone publish do not; a nil client has none.
func TestInputBuffered(t *testing.T) {
	h := &peekHook{got: make(chan bool, 16)}
	srv := startServerWith(t, Options{}, func(s *Server) {
		h.srv = s
		if err := s.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	})
	if srv.InputBuffered(nil) {
		t.Error("InputBuffered(nil) = true")
	}
	nc := rawConnect(t, srv.Addr("tcp").String(), 5, "peek")
	next := func() bool { return h.next(t) }
	burst := slices.Concat(publishPacket(5, []byte("a/1"), []byte("x")), publishPacket(5, []byte("a/2"), []byte("yy")),
		publishPacket(5, []byte("a/3"), make([]byte, 300))) // 300: a two-byte remaining length
	if _, err := nc.Write(burst); err != nil {
		t.Fatal(err)
	}
	if got := []bool{next(), next(), next()}; !slices.Equal(got, []bool{true, true, false}) {
		t.Errorf("burst of three in one write: InputBuffered %v, want [true true false]", got)
	}
	if _, err := nc.Write(publishPacket(5, []byte("a/4"), []byte("z"))); err != nil {
		t.Fatal(err)
	}
	if next() {
		t.Error("lone publish: InputBuffered true, want false")
	}
}

// waitHook arms BeforeReadWait on every publish; the function reports how many publishes the
// reader had handled when it ran.
type waitHook struct {
	mochi.HookBase
	srv     *Server
	handled int // reader goroutine only
	ran     chan int
}

func (h *waitHook) ID() string           { return "wait" }
func (h *waitHook) Provides(b byte) bool { return b == mochi.OnPublish }

func (h *waitHook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	h.handled++
	if !h.srv.BeforeReadWait(cl, func() { h.ran <- h.handled }) {
		h.ran <- -1
	}
	return pk, nil
}

// TestBeforeReadWait: the function runs once the reader has handled everything it received, before
// it waits for more: once after a burst of three publishes in one write, not after each.
func TestBeforeReadWait(t *testing.T) {
	h := &waitHook{ran: make(chan int, 16)}
	srv := startServerWith(t, Options{}, func(s *Server) {
		h.srv = s
		if err := s.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	})
	if srv.BeforeReadWait(nil, func() {}) {
		t.Error("BeforeReadWait(nil) = true")
	}
	nc := rawConnect(t, srv.Addr("tcp").String(), 5, "waiter")
	next := func() int {
		t.Helper()
		select {
		case n := <-h.ran:
			return n
		case <-time.After(5 * time.Second):
			t.Fatal("the function did not run")
			return 0
		}
	}
	burst := slices.Concat(publishPacket(5, []byte("a/1"), []byte("x")), publishPacket(5, []byte("a/2"), []byte("yy")),
		publishPacket(5, []byte("a/3"), make([]byte, 300)))
	if _, err := nc.Write(burst); err != nil {
		t.Fatal(err)
	}
	if n := next(); n != 3 {
		t.Fatalf("after a burst of three: ran with %d handled, want 3 (once, at the end)", n)
	}
	if _, err := nc.Write(publishPacket(5, []byte("a/4"), []byte("z"))); err != nil {
		t.Fatal(err)
	}
	if n := next(); n != 4 {
		t.Fatalf("after a lone publish: ran with %d handled, want 4", n)
	}
	select {
	case n := <-h.ran:
		t.Fatalf("ran again (%d handled) with nothing armed", n)
	default:
	}
}

// countConn counts the write(2)s made on a real socket.
type countConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestOpenAcksOneWrite: while the reader waits in Read, a write goes out at once, one write(2)
// each; the gated PUBACKs of a round leave together, in one write(2), when OpenAcks opens them.
func TestOpenAcksOneWrite(t *testing.T) {
	inner, peer := socketPair(t)
	cc := &countConn{Conn: inner}
	c := newConn(cc, &Server{}, nil)
	cl := &mochi.Client{Net: mochi.ClientConnection{Conn: c}}
	cl.Properties.ProtocolVersion = 5
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		_, _ = c.Read(make([]byte, 1)) // the reader, blocked until the peer closes
	}()
	waitFor(t, 5*time.Second, "reader in Read", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.reading
	})
	connack := []byte{0x20, 2, 0, 0}
	if _, err := c.Write(connack); err != nil { // nothing else leaves before it
		t.Fatal(err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(peer, make([]byte, len(connack))); err != nil {
		t.Fatalf("peer read CONNACK: %v", err)
	}
	const n = 50
	srv := &Server{}
	send := func(gated bool) int64 {
		before := cc.writes.Load()
		var gates []*AckGate
		for i := range n {
			if gated {
				gates = append(gates, srv.GateAck(cl, uint16(i+1)))
			}
			if _, err := c.Write([]byte{0x40, 2, 0, byte(i + 1)}); err != nil { // mochi's PUBACK
				t.Fatal(err)
			}
		}
		if gated {
			if w := cc.writes.Load() - before; w != 0 {
				t.Fatalf("%d writes before the gates opened", w)
			}
			srv.OpenAcks(gates, make([]byte, n))
		}
		_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, n*4)
		if _, err := io.ReadFull(peer, got); err != nil {
			t.Fatalf("peer read: %v", err)
		}
		for i := range n {
			if got[4*i+3] != byte(i+1) {
				t.Fatalf("PUBACK %d is for %d", i+1, got[4*i+3])
			}
		}
		return cc.writes.Load() - before
	}
	if w := send(false); w != n {
		t.Errorf("not gated: %d writes for %d packets, want %d", w, n, n)
	}
	if w := send(true); w != 1 {
		t.Errorf("gated: %d writes for %d packets, want 1", w, n)
	}
	peer.Close()
	<-readDone
	_ = c.Close()
}

// TestConnackFirst: packets written before the CONNACK (mochi fans a message out to a resuming
// session before it writes the CONNACK) follow it on the wire, in order, also when the CONNACK
// shares a write with them; a DISCONNECT with nothing held passes at once.
func TestConnackFirst(t *testing.T) {
	pair := func(t *testing.T) (*conn, net.Conn) {
		inner, peer := socketPair(t)
		c := newConn(inner, &Server{}, nil)
		t.Cleanup(func() { _ = c.Close(); _ = peer.Close() })
		return c, peer
	}
	read := func(t *testing.T, peer net.Conn, n int) []byte {
		t.Helper()
		b := make([]byte, n)
		_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(peer, b); err != nil {
			t.Fatalf("peer read: %v", err)
		}
		return b
	}
	pub1 := publishPacket(5, []byte("a/1"), []byte("one"))
	pub2 := publishPacket(5, []byte("a/2"), make([]byte, 200)) // a two-byte remaining length
	connack := []byte{0x20, 3, 1, 0, 0}
	write := func(t *testing.T, c *conn, parts ...[]byte) {
		t.Helper()
		for _, p := range parts {
			if n, err := c.Write(p); err != nil || n != len(p) {
				t.Fatalf("Write: %d, %v", n, err)
			}
		}
	}
	t.Run("separate writes", func(t *testing.T) {
		c, peer := pair(t)
		write(t, c, pub1, pub2, connack)
		want := slices.Concat(connack, pub1, pub2)
		if got := read(t, peer, len(want)); !bytes.Equal(got, want) {
			t.Fatalf("wire % x\nwant % x", got, want)
		}
		write(t, c, pub1) // after the CONNACK: straight through
		if got := read(t, peer, len(pub1)); !bytes.Equal(got, pub1) {
			t.Fatalf("after CONNACK: % x", got)
		}
	})
	t.Run("one batched write", func(t *testing.T) {
		c, peer := pair(t)
		write(t, c, pub1, slices.Concat(pub2, connack, pub1))
		want := slices.Concat(connack, pub1, pub2, pub1)
		if got := read(t, peer, len(want)); !bytes.Equal(got, want) {
			t.Fatalf("wire % x\nwant % x", got, want)
		}
	})
	t.Run("disconnect passes", func(t *testing.T) {
		c, peer := pair(t)
		disconnect := []byte{0xe0, 1, 0x8b}
		write(t, c, disconnect)
		if got := read(t, peer, len(disconnect)); !bytes.Equal(got, disconnect) {
			t.Fatalf("wire % x", got)
		}
	})
}

// socketPair is a connected pair of TCP sockets on 127.0.0.1: the accepted side and the dialing
// peer, closed at cleanup.
func socketPair(t *testing.T) (accepted, peer net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	accepted, err = ln.Accept()
	if err != nil {
		peer.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close(); peer.Close() })
	return accepted, peer
}
