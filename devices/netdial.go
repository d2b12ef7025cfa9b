package devices

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/gorilla/websocket"
)

// ParseBroker parses and checks a broker URL: tcp://, mqtt://, tls://, ssl://, mqtts://, ws:// or wss://,
// with a host and a port. A bare "host:port" means tcp.
func ParseBroker(s string) (*url.URL, error) {
	if s == "" {
		return nil, &ConfigError{Msg: "broker URL is empty"}
	}
	if !strings.Contains(s, "://") {
		s = "tcp://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, &ConfigError{Msg: fmt.Sprintf("broker URL %q is not a URL: %v", s, err)}
	}
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt", "tls", "ssl", "mqtts", "ws", "wss":
	default:
		return nil, &ConfigError{Msg: fmt.Sprintf("broker URL %q has scheme %q; want tcp, mqtt, tls, ssl, mqtts, ws or wss", s, u.Scheme)}
	}
	if u.Hostname() == "" || u.Port() == "" {
		return nil, &ConfigError{Msg: fmt.Sprintf("broker URL %q needs a host and a port", s)}
	}
	return u, nil
}

func isTLS(u *url.URL) bool {
	switch strings.ToLower(u.Scheme) {
	case "tls", "ssl", "mqtts", "wss":
		return true
	}
	return false
}

// dial opens the network connection for one client. The returned net.Conn is safe for concurrent
// writers (paho.golang writes from several goroutines).
func dial(ctx context.Context, u *url.URL, tlsCfg *tls.Config) (net.Conn, error) {
	if isTLS(u) && tlsCfg == nil {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if tlsCfg != nil && tlsCfg.ServerName == "" && !tlsCfg.InsecureSkipVerify {
		c := tlsCfg.Clone()
		c.ServerName = u.Hostname()
		tlsCfg = c
	}
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt":
		var d net.Dialer
		return d.DialContext(ctx, "tcp", u.Host)
	case "tls", "ssl", "mqtts":
		d := tls.Dialer{Config: tlsCfg}
		c, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, err
		}
		return packets.NewThreadSafeConn(c), nil
	case "ws", "wss":
		d := websocket.Dialer{
			Subprotocols:     []string{"mqtt"},
			HandshakeTimeout: 10 * time.Second,
			ReadBufferSize:   2048,
			WriteBufferSize:  2048,
		}
		if strings.EqualFold(u.Scheme, "wss") {
			d.TLSClientConfig = tlsCfg
		}
		path := *u
		if path.Path == "" {
			path.Path = "/"
		}
		ws, resp, err := d.DialContext(ctx, path.String(), nil)
		if resp != nil && resp.Body != nil {
			_ = resp.Body.Close()
		}
		if err != nil {
			return nil, err
		}
		return &wsConn{Conn: ws}, nil
	}
	return nil, fmt.Errorf("unsupported scheme %q", u.Scheme)
}

// wsConn adapts a websocket to net.Conn: binary messages carry MQTT bytes.
type wsConn struct {
	*websocket.Conn
	sync.Mutex // held by paho's packets.WriteTo for thread-safe writes

	rmu sync.Mutex
	r   io.Reader
	wmu sync.Mutex
}

func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Read(p []byte) (int, error) {
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
