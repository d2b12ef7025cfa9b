package mqtt

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	mochilisteners "github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// listener implements mochi's listeners.Listener for tcp, tls, ws and wss. It listens in Start
// (so a port in use is reported synchronously), admits a connection only under MaxConnections,
// sets the CONNECT deadline at accept, wraps every connection in *conn, and tracks connections
// so Shutdown can close the ones that never sent CONNECT.
type listener struct {
	srv    *Server
	cfg    Listener
	tlsCfg *tls.Config

	ln      net.Listener
	httpSrv *http.Server

	serveWG sync.WaitGroup // the accept loop (Serve)
	connWG  sync.WaitGroup // one per connection goroutine

	mu     sync.Mutex
	conns  map[*conn]struct{}
	closed bool
}

var _ mochilisteners.Listener = (*listener)(nil)

func loadTLS(ln Listener) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(ln.TLS.CertFile, ln.TLS.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: listener %q: load certificate %s and key %s: %v", ErrInvalidOptions, ln.Name, ln.TLS.CertFile, ln.TLS.KeyFile, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if ln.TLS.ClientCAFile != "" {
		pem, err := os.ReadFile(ln.TLS.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: listener %q: read client CA file: %v", ErrInvalidOptions, ln.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: listener %q: client CA file %s holds no PEM certificate", ErrInvalidOptions, ln.Name, ln.TLS.ClientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if ln.TLS.RequireClientCert {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	if ln.Type == TypeWSS {
		cfg.NextProtos = []string{"http/1.1"}
	}
	return cfg, nil
}

func (l *listener) ID() string { return l.cfg.Name }

func (l *listener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.cfg.Address
}

func (l *listener) Protocol() string { return l.cfg.Type }

// Init is a no-op: the socket is opened by listen, before mochi learns of the listener.
func (l *listener) Init(*slog.Logger) error { return nil }

func (l *listener) listen() error {
	ln, err := net.Listen("tcp", l.cfg.Address)
	if err != nil {
		return fmt.Errorf("mqtt: listener %q: listen on %s: %w", l.cfg.Name, l.cfg.Address, err)
	}
	l.ln = ln
	l.conns = map[*conn]struct{}{}
	l.serveWG.Add(1)
	return nil
}

// accept returns the next admitted raw connection with its CONNECT deadline set.
func (l *listener) accept() (net.Conn, error) {
	backoff := 5 * time.Millisecond
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and friends: wait a little rather than spin.
			l.srv.log.Warn().Err(err).Str("listener", l.cfg.Name).Msg("accept failed")
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		if !l.srv.admit() {
			l.srv.metrics.connRejected()
			_ = raw.Close()
			continue
		}
		_ = raw.SetDeadline(time.Now().Add(l.srv.opts.Limits.ConnectTimeout))
		return &countedConn{Conn: raw, srv: l.srv}, nil
	}
}

// admitListener is the listener as a net.Listener, for http.Server.
type admitListener struct{ l *listener }

func (a admitListener) Accept() (net.Conn, error) { return a.l.accept() }
func (a admitListener) Close() error              { return a.l.ln.Close() }
func (a admitListener) Addr() net.Addr            { return a.l.ln.Addr() }

// track registers c; it returns false (and closes c) if the listener is closed.
func (l *listener) track(c *conn) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		_ = c.Close()
		return false
	}
	l.conns[c] = struct{}{}
	l.connWG.Add(1)
	l.mu.Unlock()
	return true
}

func (l *listener) untrack(c *conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// Serve accepts connections until the listener is closed.
func (l *listener) Serve(establish mochilisteners.EstablishFn) {
	defer l.serveWG.Done()
	switch l.cfg.Type {
	case TypeWS, TypeWSS:
		l.serveHTTP(establish)
		return
	}
	for {
		raw, err := l.accept()
		if err != nil {
			return
		}
		inner := raw
		if l.tlsCfg != nil {
			inner = tls.Server(raw, l.tlsCfg)
		}
		c := newConn(inner, l.srv, l)
		if !l.track(c) {
			continue
		}
		go l.run(establish, c)
	}
}

// run is the connection's goroutine, the one mochi reads on. Its frame stays on the stack for the
// life of the connection, so the TLS handshake is done out of line (448 bytes of frame → 64): an
// idle reader's stack shrinks at GC only if under a quarter of it is in use. With stock mochi
// v2.7.9 the reader keeps 16 KiB anyway (README, memory per idle connection); with a read loop
// that waits in a shallow frame, this is what lets it shrink to 4 KiB.
func (l *listener) run(establish mochilisteners.EstablishFn, c *conn) {
	defer l.connWG.Done()
	if _, ok := c.Conn.(*tls.Conn); ok && !l.handshake(c) {
		return
	}
	_ = establish(l.cfg.Name, c) // mochi logs nothing useful here; outcomes are in metrics
	_ = c.Close()
}

// handshake completes the TLS handshake of c and notes its verified client certificate; on
// failure it closes c and returns false.
//
//go:noinline
func (l *listener) handshake(c *conn) bool {
	tc := c.Conn.(*tls.Conn)
	// The handshake runs under the CONNECT deadline set at accept.
	if err := tc.Handshake(); err != nil {
		l.srv.metrics.tlsFailure()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			l.srv.metrics.connectTimeout()
		}
		_ = c.Close()
		return false
	}
	st := tc.ConnectionState()
	if len(st.VerifiedChains) > 0 && len(st.PeerCertificates) > 0 {
		c.verified = true
		c.certCN = st.PeerCertificates[0].Subject.CommonName
	}
	return true
}

func (l *listener) serveHTTP(establish mochilisteners.EstablishFn) {
	up := &websocket.Upgrader{
		Subprotocols:    []string{"mqtt"},
		CheckOrigin:     func(*http.Request) bool { return true },
		ReadBufferSize:  1024,
		WriteBufferSize: 1024,
	}
	l.mu.Lock()
	l.httpSrv = &http.Server{
		ReadHeaderTimeout: l.srv.opts.Limits.ConnectTimeout,
		ErrorLog:          log.New(io.Discard, "", 0),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ws, err := up.Upgrade(w, r, nil)
			if err != nil {
				return // Upgrade has answered with an HTTP error
			}
			// http.Server cleared the accept-time deadline; CONNECT must still come in time.
			_ = ws.UnderlyingConn().SetDeadline(time.Now().Add(l.srv.opts.Limits.ConnectTimeout))
			c := newConn(&wsConn{Conn: ws.UnderlyingConn(), ws: ws}, l.srv, l)
			if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.PeerCertificates) > 0 {
				c.verified = true
				c.certCN = r.TLS.PeerCertificates[0].Subject.CommonName
			}
			if !l.track(c) {
				return
			}
			defer l.connWG.Done()
			_ = establish(l.cfg.Name, c)
			_ = c.Close()
		}),
	}
	srv := l.httpSrv
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return
	}
	var ln net.Listener = admitListener{l}
	if l.tlsCfg != nil {
		ln = tls.NewListener(ln, l.tlsCfg)
	}
	_ = srv.Serve(ln)
}

// Close stops accepting, disconnects this listener's MQTT clients (MQTT 5: DISCONNECT 0x8B), then
// closes connections that never completed CONNECT.
//
// It does not use mochi's closeClients: that lists the clients with Clients.GetByListener, which
// takes the clients' read lock twice (it calls Len under it). A client disconnecting at that moment
// waits for the write lock in between, and the two deadlock: Shutdown then never returned (1 in
// ~150 benchmark teardowns, 100 clients disconnecting as the server stopped).
func (l *listener) Close(mochilisteners.CloseFn) {
	l.mu.Lock()
	already := l.closed
	l.closed = true
	srv := l.httpSrv
	l.mu.Unlock()
	if already {
		return
	}
	if srv != nil {
		_ = srv.Close()
	}
	if l.ln != nil {
		_ = l.ln.Close()
	}
	for _, cl := range l.srv.mochi.Clients.GetAll() { // one read lock
		if cl.Net.Listener == l.cfg.Name && !cl.Closed() {
			_ = l.srv.mochi.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
	l.closeAll()
}

func (l *listener) closeAll() {
	l.mu.Lock()
	cs := make([]*conn, 0, len(l.conns))
	for c := range l.conns {
		cs = append(cs, c)
	}
	l.mu.Unlock()
	for _, c := range cs {
		_ = c.Close()
	}
}

// wsConn adapts a WebSocket connection to net.Conn: binary messages in, one binary message per
// Write out (conn above it coalesces several MQTT packets into one message, which MQTT over
// WebSocket allows).
type wsConn struct {
	net.Conn
	ws *websocket.Conn
	r  io.Reader
}

var errWSText = errors.New("mqtt: websocket message is not binary")

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			op, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errWSText
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Close() error { return c.ws.Close() }
