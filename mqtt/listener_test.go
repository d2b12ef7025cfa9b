package mqtt

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemq/sluice/mqtt/mqtttest"
)

// testPKI is a CA, a server certificate for 127.0.0.1 and a client certificate with CN "device-7",
// written as PEM files under a temp dir.
type testPKI struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
	client                    tls.Certificate
	rogue                     tls.Certificate // signed by a CA the server does not trust
}

func newPKI(t testing.TB) testPKI {
	t.Helper()
	dir := t.TempDir()
	ca := mqtttest.NewCA(t, "test ca")
	var p testPKI
	p.caFile = ca.WriteFile(t, dir, "ca")
	p.certFile, p.keyFile = ca.Issue(t, "127.0.0.1", x509.ExtKeyUsageServerAuth).WriteFiles(t, dir, "server")
	p.pool = ca.Pool()
	p.client = ca.Issue(t, "device-7", x509.ExtKeyUsageClientAuth).TLS()
	p.rogue = mqtttest.NewCA(t, "rogue ca").Issue(t, "device-7", x509.ExtKeyUsageClientAuth).TLS()
	return p
}

func TestTLSAndMTLS(t *testing.T) {
	pki := newPKI(t)
	srv := startServer(t, Options{
		Listeners: []Listener{
			{Name: "tls", Type: TypeTLS, Address: "127.0.0.1:0", TLS: TLS{CertFile: pki.certFile, KeyFile: pki.keyFile}, AllowAnonymous: true},
			{Name: "mtls", Type: TypeTLS, Address: "127.0.0.1:0", TLS: TLS{CertFile: pki.certFile, KeyFile: pki.keyFile,
				ClientCAFile: pki.caFile, RequireClientCert: true, CertIdentity: true}},
		},
		ACL: []ACLRule{{Username: "device-7", Publish: []string{"d/%u"}, Subscribe: []string{"d/%u"}}, {Subscribe: []string{"open/#"}}},
	})
	dialTLS := func(name string, certs ...tls.Certificate) (net.Conn, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", srv.Addr(name).String(),
			&tls.Config{RootCAs: pki.pool, Certificates: certs, MinVersion: tls.VersionTLS12})
	}

	t.Run("tls anonymous", func(t *testing.T) {
		nc, err := dialTLS("tls")
		if err != nil {
			t.Fatal(err)
		}
		c := mustV5(t, "", v5opts{id: "tls-anon", conn: nc})
		if sa := c.sub(t, "open/x", 1); sa.Reasons[0] != 1 {
			t.Fatalf("subscribe over tls: %#x", sa.Reasons[0])
		}
	})
	t.Run("tls 1.1 refused", func(t *testing.T) {
		_, err := tls.Dial("tcp", srv.Addr("tls").String(), &tls.Config{RootCAs: pki.pool, MaxVersion: tls.VersionTLS11})
		if err == nil {
			t.Fatal("TLS 1.1 handshake succeeded")
		}
	})
	t.Run("mtls identity from certificate", func(t *testing.T) {
		nc, err := dialTLS("mtls", pki.client)
		if err != nil {
			t.Fatal(err)
		}
		c := mustV5(t, "", v5opts{id: "anything", conn: nc})
		c.sub(t, "d/device-7", 1)
		if r := c.pub(t, "d/device-7", 1, "hello"); r.ReasonCode != 0 {
			t.Fatalf("publish as device-7: %#x", r.ReasonCode)
		}
		if p := c.next(t, 5*time.Second); string(p.Payload) != "hello" {
			t.Fatalf("got %q", p.Payload)
		}
		if r := c.pub(t, "d/device-8", 1, "x"); r.ReasonCode != 0x87 {
			t.Fatalf("publish as another device: %#x, want 0x87", r.ReasonCode)
		}
	})
	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
	}{{"mtls without certificate", nil}, {"mtls with untrusted certificate", []tls.Certificate{pki.rogue}}} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := dialTLS("mtls", tc.certs...)
			if err == nil {
				// TLS 1.3: the client learns of the rejection on its first read.
				_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
				_, err = nc.Read(make([]byte, 1))
				nc.Close()
			}
			if err == nil {
				t.Fatal("connection without a trusted client certificate was accepted")
			}
		})
	}
}

// wsDial opens an MQTT-over-WebSocket connection as a net.Conn.
func wsDial(t testing.TB, url string, tlsCfg *tls.Config) net.Conn {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, TLSClientConfig: tlsCfg, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("ws dial %s: %v", url, err)
	}
	resp.Body.Close()
	return &wsClientConn{Conn: ws.UnderlyingConn(), ws: ws}
}

type wsClientConn struct {
	net.Conn
	mu sync.Mutex // paho writes from several goroutines; gorilla allows one writer
	ws *websocket.Conn
	r  io.Reader
}

func (c *wsClientConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsClientConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(p), c.ws.WriteMessage(websocket.BinaryMessage, p)
}
func (c *wsClientConn) Close() error { return c.ws.Close() }

func TestWebSocket(t *testing.T) {
	pki := newPKI(t)
	srv := startServer(t, Options{Listeners: []Listener{
		{Name: "ws", Type: TypeWS, Address: "127.0.0.1:0", AllowAnonymous: true},
		{Name: "wss", Type: TypeWSS, Address: "127.0.0.1:0", AllowAnonymous: true, TLS: TLS{CertFile: pki.certFile, KeyFile: pki.keyFile}},
	}})
	wsc := mustV5(t, "", v5opts{id: "ws-sub", conn: wsDial(t, "ws://"+srv.Addr("ws").String()+"/mqtt", nil)})
	wsc.sub(t, "w/#", 1)
	wss := mustV5(t, "", v5opts{id: "wss-pub", conn: wsDial(t, "wss://"+srv.Addr("wss").String()+"/mqtt", &tls.Config{RootCAs: pki.pool})})
	for i := range 20 {
		wss.pub(t, "w/x", 1, string(rune('a'+i)))
	}
	var got bytes.Buffer
	for range 20 {
		got.Write(wsc.next(t, 5*time.Second).Payload)
	}
	if got.String() != "abcdefghijklmnopqrst" {
		t.Fatalf("over ws got %q", got.String())
	}
	// A plain HTTP request is not upgraded.
	resp, err := http.Get("http://" + srv.Addr("ws").String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("plain GET: %d", resp.StatusCode)
	}
}

func TestConnectTimeout(t *testing.T) {
	reg := prometheus.NewRegistry()
	pki := newPKI(t)
	const timeout = 300 * time.Millisecond
	srv := startServer(t, Options{
		Listeners: []Listener{
			{Name: "tcp", Type: TypeTCP, Address: "127.0.0.1:0", AllowAnonymous: true},
			{Name: "tls", Type: TypeTLS, Address: "127.0.0.1:0", TLS: TLS{CertFile: pki.certFile, KeyFile: pki.keyFile}},
			{Name: "ws", Type: TypeWS, Address: "127.0.0.1:0"},
		},
		Limits:     Limits{ConnectTimeout: timeout},
		Registerer: reg,
	})
	for _, name := range []string{"tcp", "tls", "ws"} {
		t.Run("listener="+name, func(t *testing.T) {
			nc, err := net.Dial("tcp", srv.Addr(name).String())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			if name == "tcp" {
				nc.Write([]byte{0x10}) // half a CONNECT
			}
			start := time.Now()
			_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.Copy(io.Discard, nc)
			if err != nil {
				t.Fatalf("socket not closed by the server: %v", err)
			}
			if d := time.Since(start); d > timeout+2*time.Second {
				t.Fatalf("closed after %s, want about %s", d, timeout)
			}
		})
	}
	waitFor(t, 5*time.Second, "connect timeouts counted", func() bool {
		return counterValue(t, reg, "sluice_mqtt_connect_timeouts_total", nil) >= 2
	})
	// A client that connects in time is not affected by the connect deadline afterwards.
	c := mustV5(t, srv.Addr("tcp").String(), v5opts{id: "slowpoke"})
	time.Sleep(2 * timeout) // let the (cleared) connect deadline pass: this is the behaviour under test
	c.sub(t, "still/here", 0)
	_ = context.Background
}

func TestMaxConnections(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv := startServer(t, Options{Limits: Limits{MaxConnections: 2}, Registerer: reg})
	addr := srv.Addr("tcp").String()
	mustV5(t, addr, v5opts{id: "a"})
	mustV5(t, addr, v5opts{id: "b"})
	if _, _, err := dialV5(t, addr, v5opts{id: "c"}); err == nil {
		t.Fatal("third connection accepted with MaxConnections 2")
	}
	if got := counterValue(t, reg, "sluice_mqtt_connections_rejected_total", nil); got != 1 {
		t.Fatalf("rejected %v, want 1", got)
	}
}
