package bridge

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// UplinkTLS is the client side of TLS towards the upstream broker (tls://, mqtts://, ssl://, wss://).
type UplinkTLS struct {
	CAFile   string // PEM bundle of the CAs that sign the upstream's certificate; "" → the system roots
	CertFile string // PEM client certificate (chain) for mutual TLS; needs KeyFile
	KeyFile  string
	// ServerName overrides the name checked in the upstream's certificate; "" → the URL's host.
	ServerName string
	// InsecureSkipVerify accepts any upstream certificate. Never in production: it defeats TLS.
	InsecureSkipVerify bool
}

// upParseURL checks an upstream broker URL: tcp://, mqtt://, tls://, ssl://, mqtts://, ws:// or
// wss://, with a host and a port. It returns an error wrapping ErrInvalidUplink.
func upParseURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, fmt.Errorf("%w: upstream URL is empty", ErrInvalidUplink)
	}
	u, err := url.Parse(s)
	if err != nil || !strings.Contains(s, "://") {
		return nil, fmt.Errorf("%w: upstream URL %q is not a URL like mqtts://host:8883", ErrInvalidUplink, s)
	}
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt", "tls", "ssl", "mqtts", "ws", "wss":
	default:
		return nil, fmt.Errorf("%w: upstream URL %q has scheme %q; want tcp, mqtt, tls, ssl, mqtts, ws or wss", ErrInvalidUplink, s, u.Scheme)
	}
	if u.Hostname() == "" || u.Port() == "" {
		return nil, fmt.Errorf("%w: upstream URL %q needs a host and a port", ErrInvalidUplink, s)
	}
	return u, nil
}

func upSecureScheme(u *url.URL) bool {
	switch strings.ToLower(u.Scheme) {
	case "tls", "ssl", "mqtts", "wss":
		return true
	}
	return false
}

// tlsConfig builds the client TLS configuration; nil for plain schemes without TLS settings.
func (t UplinkTLS) config(u *url.URL) (*tls.Config, error) {
	if !upSecureScheme(u) {
		if t != (UplinkTLS{}) {
			return nil, fmt.Errorf("%w: TLS settings given for the plain %s:// upstream (use mqtts:// or wss://)", ErrInvalidUplink, u.Scheme)
		}
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // documented test-only switch
	if c.ServerName == "" {
		c.ServerName = u.Hostname()
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: read CA file: %v", ErrInvalidUplink, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: CA file %s holds no PEM certificate", ErrInvalidUplink, t.CAFile)
		}
		c.RootCAs = pool
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, fmt.Errorf("%w: a client certificate needs both cert_file and key_file", ErrInvalidUplink)
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: load client certificate: %v", ErrInvalidUplink, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// upDial opens the network connection to u, the TLS handshake or WebSocket upgrade included.
func upDial(ctx context.Context, u *url.URL, tlsCfg *tls.Config) (net.Conn, error) {
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt":
		var d net.Dialer
		return d.DialContext(ctx, "tcp", u.Host)
	case "tls", "ssl", "mqtts":
		d := tls.Dialer{Config: tlsCfg}
		return d.DialContext(ctx, "tcp", u.Host)
	case "ws", "wss":
		d := websocket.Dialer{
			Subprotocols:     []string{"mqtt"},
			HandshakeTimeout: 30 * time.Second,
			ReadBufferSize:   16 << 10,
			WriteBufferSize:  16 << 10,
			TLSClientConfig:  tlsCfg,
		}
		target := *u
		if target.Path == "" {
			target.Path = "/"
		}
		ws, resp, err := d.DialContext(ctx, target.String(), nil)
		if resp != nil && resp.Body != nil {
			_ = resp.Body.Close()
		}
		if err != nil {
			return nil, err
		}
		return &uplinkWSConn{Conn: ws}, nil
	}
	return nil, fmt.Errorf("unsupported scheme %q", u.Scheme)
}

// uplinkWSConn adapts a WebSocket to net.Conn: binary messages carry the MQTT bytes.
type uplinkWSConn struct {
	*websocket.Conn
	rmu sync.Mutex
	r   io.Reader
	wmu sync.Mutex
}

func (c *uplinkWSConn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}

func (c *uplinkWSConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *uplinkWSConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.r == nil {
			_, r, err := c.NextReader()
			if err != nil {
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}
