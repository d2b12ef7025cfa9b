package mqtt

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// TestReadPath: what a client writes reaches subscribers intact however it is cut into reads:
// a byte per write, a burst of packets larger than the pooled read buffer, a packet larger than
// it (read straight into mochi's slice). TLS and WebSocket connections, which read through their
// net.Conn, are covered by TestTLSAndMTLS and TestWebSocket.
func TestReadPath(t *testing.T) {
	small := func(i int) []byte { return fmt.Appendf(nil, "message %03d %s", i, bytes.Repeat([]byte("x"), 40)) }
	big := bytes.Repeat([]byte("0123456789abcdef"), 3*readBufSize/16+5) // 3 buffers and a bit
	for _, tc := range []struct {
		name     string
		payloads [][]byte
		chunk    int // bytes per write of the client; 0: everything in one write
	}{
		{"byte-per-write", [][]byte{small(0), small(1), small(2)}, 1},
		{"burst-over-read-buffer", func() (ps [][]byte) {
			for i := range 3 * readBufSize / len(small(0)) {
				ps = append(ps, small(i))
			}
			return ps
		}(), 0},
		{"packet-over-read-buffer", [][]byte{small(0), big, small(1)}, 0},
		{"packet-over-read-buffer-in-pieces", [][]byte{big, small(0)}, 700},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startServer(t, Options{})
			addr := srv.Addr("tcp").String()
			sub := mustV5(t, addr, v5opts{id: "sub", clean: true})
			sub.sub(t, "r/#", 0)
			nc := rawConnect(t, addr, 5, "pub")
			if c := connOfRemote(t, srv, nc.LocalAddr()); c.in.raw == nil {
				t.Fatal("plain TCP connection without RawConn reads")
			}
			var stream []byte
			for i, p := range tc.payloads {
				stream = append(stream, publishPacket(5, fmt.Appendf(nil, "r/%d", i), p)...)
			}
			writeChunks(t, nc, stream, tc.chunk)
			for i, want := range tc.payloads {
				got := sub.next(t, 10*time.Second)
				if got.Topic != fmt.Sprintf("r/%d", i) || !bytes.Equal(got.Payload, want) {
					t.Fatalf("message %d: topic %s, %d bytes; want r/%d, %d bytes", i, got.Topic, len(got.Payload), i, len(want))
				}
			}
		})
	}
}

func writeChunks(t testing.TB, nc net.Conn, b []byte, chunk int) {
	t.Helper()
	if chunk == 0 {
		chunk = len(b)
	}
	for len(b) > 0 {
		n := min(chunk, len(b))
		if _, err := nc.Write(b[:n]); err != nil {
			t.Fatal(err)
		}
		b = b[n:]
	}
}

// connOfRemote finds the server side of the client connection whose local address is addr.
func connOfRemote(t testing.TB, srv *Server, addr net.Addr) *conn {
	t.Helper()
	var found *conn
	waitFor(t, 5*time.Second, "server side of "+addr.String(), func() bool {
		for _, l := range srv.listeners {
			l.mu.Lock()
			for c := range l.conns {
				if c.RemoteAddr().String() == addr.String() {
					found = c
				}
			}
			l.mu.Unlock()
		}
		return found != nil
	})
	return found
}

// bufHook reports, for every packet read, whether its connection held a pooled read buffer when
// the packet was parsed (it runs on the connection's reader goroutine, which owns that state).
type bufHook struct {
	mochi.HookBase
	got chan bool
}

func (h *bufHook) ID() string           { return "readbuf" }
func (h *bufHook) Provides(b byte) bool { return b == mochi.OnPacketRead }
func (h *bufHook) OnPacketRead(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if c := connOf(cl); c != nil {
		h.got <- c.in.buf != nil
	}
	return pk, nil
}

// TestIdleConnectionHoldsNoReadBuffer: a connection holds a pooled read buffer only while the
// bytes of one read(2) are being parsed: a lone packet leaves none behind, a burst holds one
// until its last bytes are handed to mochi, and after the burst none is held again.
func TestIdleConnectionHoldsNoReadBuffer(t *testing.T) {
	h := &bufHook{got: make(chan bool, 256)}
	srv := startServerWith(t, Options{}, func(s *Server) {
		if err := s.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	})
	nc := rawConnect(t, srv.Addr("tcp").String(), 5, "idle")
	<-h.got // the CONNECT
	ping := []byte{0xC0, 0}
	exchange := func(b []byte) []bool {
		t.Helper()
		if _, err := nc.Write(b); err != nil {
			t.Fatal(err)
		}
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp := make([]byte, 2)
		if _, err := io.ReadFull(nc, resp); err != nil || resp[0] != 0xD0 {
			t.Fatalf("PINGRESP: %x %v", resp, err)
		}
		var held []bool
		for len(h.got) > 0 {
			held = append(held, <-h.got)
		}
		return held
	}
	if held := exchange(ping); !slices.Equal(held, []bool{false}) {
		t.Errorf("lone PINGREQ: buffer held %v, want [false]", held)
	}
	var burst []byte
	for i := range 20 {
		burst = append(burst, publishPacket(5, []byte("b/1"), fmt.Appendf(nil, "burst %02d %s", i, bytes.Repeat([]byte("y"), 40)))...)
	}
	burst = append(burst, ping...)
	held := exchange(burst)
	if len(held) != 21 || !slices.Contains(held, true) || held[20] {
		t.Errorf("burst of 21 packets (%d bytes) in one write: buffer held %v, want some true and the last false", len(burst), held)
	}
	if held := exchange(ping); !slices.Equal(held, []bool{false}) {
		t.Errorf("lone PINGREQ after the burst: buffer held %v, want [false]", held)
	}
}

// TestKeepAliveDeadline: a client with a 1 s keep-alive that goes silent after one PINGREQ is
// answered, then disconnected: mochi's keep-alive read deadline reaches the RawConn read.
func TestKeepAliveDeadline(t *testing.T) {
	srv := startServer(t, Options{Limits: Limits{KeepAliveMin: 1}})
	addr := srv.Addr("tcp").String()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	connect := connectPacket(4, "ka1")
	connect[11] = 1 // keep alive 1 s (bytes 10-11 of the MQTT 3.1.1 CONNECT)
	// CONNECT, then a PINGREQ
	if _, err := nc.Write(append(connect, 0xC0, 0)); err != nil {
		t.Fatal(err)
	}
	if c := connOfRemote(t, srv, nc.LocalAddr()); c.in.raw == nil {
		t.Fatal("plain TCP connection without RawConn reads")
	}
	got := expectClose(t, nc) // fails unless the server closes within 5 s
	if !bytes.HasPrefix(got, []byte{0x20, 2}) || !bytes.HasSuffix(got, []byte{0xD0, 0}) {
		t.Errorf("before closing, the server sent %x; want a CONNACK and a PINGRESP", got)
	}
}

// TestInputBufferedTLS: over TLS, a burst of publishes larger than mochi's read buffer, in one
// write, still shows input buffered behind all but the last (the decrypted bytes are read into
// inbound.br, where InputBuffered counts them, not left inside the tls.Conn).
func TestInputBufferedTLS(t *testing.T) {
	pki := newPKI(t)
	h := &peekHook{got: make(chan bool, 16)}
	srv := startServerWith(t, Options{Listeners: []Listener{{Name: "tls", Type: TypeTLS, Address: "127.0.0.1:0",
		TLS: TLS{CertFile: pki.certFile, KeyFile: pki.keyFile}, AllowAnonymous: true}}}, func(s *Server) {
		h.srv = s
		if err := s.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	})
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", srv.Addr("tls").String(),
		&tls.Config{RootCAs: pki.pool, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write(connectPacket(5, "peek-tls")); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(nc, hdr); err != nil || hdr[0] != 0x20 {
		t.Fatalf("CONNACK: %x %v", hdr, err)
	}
	if _, err := io.ReadFull(nc, make([]byte, hdr[1])); err != nil {
		t.Fatal(err)
	}
	next := func() bool { return h.next(t) }
	var burst []byte
	for i := range 3 {
		burst = append(burst, publishPacket(5, fmt.Appendf(nil, "t/%d", i), make([]byte, 300))...)
	}
	if _, err := nc.Write(burst); err != nil {
		t.Fatal(err)
	}
	if got := []bool{next(), next(), next()}; !slices.Equal(got, []bool{true, true, false}) {
		t.Errorf("burst of three 300-byte publishes in one TLS write: InputBuffered %v, want [true true false]", got)
	}
}
