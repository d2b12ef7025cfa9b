package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
)

// Server is an MQTT broker. Create it with New, then Start; stop it with Shutdown.
type Server struct {
	opts      Options
	log       zerolog.Logger
	dropLog   zerolog.Logger // sampled
	mochi     *mochi.Server
	auth      *authenticator
	metrics   *metrics
	listeners []*listener
	byName    map[string]*listener
	storage   *storageHook
	conns     atomic.Int64 // admitted, not yet closed network connections
	stopping  chan struct{}

	noCoalesce bool // benchmarks only: write every packet at once, as stock mochi does

	satCount atomic.Int32 // connected subscribers with a full in-flight window (backpressure)
	satMu    sync.Mutex
	satCh    chan struct{} // closed when a subscriber stops being saturated

	// Persistent sessions being resumed (see takeover.go): *mochi.Client → *takeover.
	byOld sync.Map // keyed by the client being taken over
	byNew sync.Map // keyed by the client taking over

	mu       sync.Mutex
	started  bool
	closed   bool
	ready    atomic.Bool
	extHooks []hookWithConfig
}

type hookWithConfig struct {
	h   mochi.Hook
	cfg any
}

// New validates opts and builds a server. It opens no sockets and no files except the TLS
// certificates, which it loads so that a missing or bad file is reported here. Errors wrap
// ErrInvalidOptions and name the field at fault.
func New(opts Options) (*Server, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	log := o.Logger.With().Str("component", "mqtt").Logger()
	s := &Server{
		opts:     o,
		log:      log,
		dropLog:  log.Sample(&zerolog.BurstSampler{Burst: 5, Period: 10 * time.Second}),
		auth:     newAuthenticator(o.Users, o.ACL),
		byName:   map[string]*listener{},
		stopping: make(chan struct{}),
		satCh:    make(chan struct{}),
	}
	for _, lc := range o.Listeners {
		l := &listener{srv: s, cfg: lc}
		if lc.Type == TypeTLS || lc.Type == TypeWSS {
			if l.tlsCfg, err = loadTLS(lc); err != nil {
				return nil, err
			}
		}
		s.listeners = append(s.listeners, l)
		s.byName[lc.Name] = l
	}

	caps := mochi.NewDefaultServerCapabilities()
	lim := o.Limits
	caps.MaximumPacketSize = lim.MaxPacketSize
	caps.ReceiveMaximum = lim.ReceiveMaximum
	caps.MaximumInflight = lim.MaxInflight
	caps.MaximumClientWritesPending = int32(min(lim.MaxPendingWrites, math.MaxInt32))
	caps.MaximumSessionExpiryInterval = uint32(lim.MaxSessionExpiry / time.Second)
	caps.MaximumMessageExpiryInterval = int64(lim.MaxMessageExpiry / time.Second)
	caps.TopicAliasMaximum = 64
	if lim.MaxConnections > 0 {
		caps.MaximumClients = int64(lim.MaxConnections)
	}
	caps.Compatibilities.NoInheritedPropertiesOnAck = !o.EchoUserProperties

	// mochi logs per packet at debug level (whole packets as attributes): keep it at info or above.
	mlog := o.Logger.With().Str("component", "mochi").Logger().
		Level(max(zerolog.InfoLevel, log.GetLevel())).
		Sample(&zerolog.BurstSampler{Burst: 20, Period: time.Second})
	s.mochi = mochi.New(&mochi.Options{
		Capabilities:             caps,
		ClientNetWriteBufferSize: 4096,
		ClientNetReadBufferSize:  clientReadBufferSize, // conn.Read buffers; see connread.go
		Logger:                   slog.New(zerolog.NewSlogHandler(mlog)),
		SysTopicResendInterval:   int64(o.SysInterval / time.Second),
	})
	if s.metrics, err = newMetrics(o.Registerer, s.mochi, s); err != nil {
		return nil, err
	}
	if err := s.mochi.AddHook(&hook{s: s}, nil); err != nil {
		return nil, fmt.Errorf("mqtt: add hook: %w", err)
	}
	return s, nil
}

// AddHook adds a mochi hook (the bridge's OnPublish, for instance). Call it before Start.
func (s *Server) AddHook(h mochi.Hook, config any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.started {
		return ErrStarted
	}
	if err := s.mochi.AddHook(h, config); err != nil {
		return fmt.Errorf("mqtt: add hook %s: %w", h.ID(), err)
	}
	return nil
}

// Start opens every listener (an address in use is an error naming the listener and address),
// opens the storage, restores persisted sessions, and serves in the background.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.started {
		return ErrStarted
	}
	for i, l := range s.listeners {
		if err := l.listen(); err != nil {
			for _, o := range s.listeners[:i] {
				_ = o.ln.Close()
				o.serveWG.Done()
			}
			return err
		}
	}
	undo := func() {
		for _, l := range s.listeners {
			_ = l.ln.Close()
			l.serveWG.Done()
		}
		if s.storage != nil {
			_ = s.storage.Stop()
		}
	}
	if s.opts.StorageDir != "" {
		st, err := openStorage(s.opts.StorageDir, s.opts.StorageSync)
		if err != nil {
			undo()
			return err
		}
		if err := s.mochi.AddHook(st, st.config()); err != nil {
			undo()
			return fmt.Errorf("mqtt: open storage in %s: %w", s.opts.StorageDir, err)
		}
		s.storage = st
	}
	for _, l := range s.listeners {
		if err := s.mochi.AddListener(l); err != nil {
			undo()
			return fmt.Errorf("mqtt: listener %q: %w", l.cfg.Name, err)
		}
	}
	if err := s.mochi.Serve(); err != nil {
		undo()
		return fmt.Errorf("mqtt: start: %w", err)
	}
	s.started = true
	s.ready.Store(true)
	for _, l := range s.listeners {
		s.log.Info().Str("listener", l.cfg.Name).Str("type", l.cfg.Type).Str("address", l.Address()).
			Bool("anonymous", l.cfg.AllowAnonymous).Msg("listening")
	}
	return nil
}

// Addr returns the bound address of the named listener, or nil if there is none or the server has
// not started.
func (s *Server) Addr(name string) net.Addr {
	l, ok := s.byName[name]
	if !ok || l.ln == nil {
		return nil
	}
	return l.ln.Addr()
}

// Reload swaps users and ACL atomically. Connected clients stay connected; their next ACL check
// uses the new rules. On invalid input it returns an error wrapping ErrInvalidOptions and keeps
// the old rules.
func (s *Server) Reload(users []User, acl []ACLRule) error {
	if err := validateUsers(users); err != nil {
		return err
	}
	if err := validateACL(acl); err != nil {
		return err
	}
	s.auth.reload(users, acl)
	s.log.Info().Int("users", len(users)).Int("acl_rules", len(acl)).Msg("users and acl reloaded")
	return nil
}

// Ready reports whether the server has started and is not shutting down.
func (s *Server) Ready() bool { return s.ready.Load() }

// stopGrace bounds how long Shutdown waits for mochi after ctx ended and every connection was closed.
const stopGrace = 2 * time.Second

// Shutdown stops accepting, disconnects clients (MQTT 5: DISCONNECT 0x8B server shutting down;
// wills are published as the spec says for a server-side close), closes and syncs the storage.
// If ctx ends first, remaining connections are closed at once and ctx's error is returned.
// A second call returns ErrClosed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	started := s.started
	s.mu.Unlock()
	s.ready.Store(false)
	close(s.stopping)
	if !started {
		return nil
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.mochi.Close() // listeners, clients, hooks (storage closes here)
		for _, l := range s.listeners {
			l.serveWG.Wait()
			l.connWG.Wait()
		}
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		for _, l := range s.listeners {
			l.closeAll()
		}
		select {
		case <-done:
		case <-time.After(stopGrace):
			// Every connection is closed; what is left is mochi's own teardown. Shutdown is
			// bounded: say so and return rather than hang the process.
			s.log.Error().Dur("waited", stopGrace).Msg("mochi did not finish stopping after its connections were closed; stopping anyway")
		}
	}
	if s.storage != nil {
		if serr := s.storage.syncFile(); serr != nil && err == nil {
			err = serr
		}
	}
	s.log.Info().Msg("stopped")
	return err
}

func (s *Server) listenerCfg(name string) Listener {
	if l, ok := s.byName[name]; ok {
		return l.cfg
	}
	return Listener{}
}

// admit takes a connection slot if MaxConnections allows.
func (s *Server) admit() bool {
	max := s.opts.Limits.MaxConnections
	n := s.conns.Add(1)
	if max > 0 && n > int64(max) {
		s.conns.Add(-1)
		return false
	}
	s.metrics.connAccepted()
	return true
}

func (s *Server) logDrop(cl *mochi.Client, pk packets.Packet, reason string) {
	s.dropLog.Warn().Str("client", cl.ID).Str("topic", pk.TopicName).Str("reason", reason).Msg("message dropped for slow subscriber")
}

// storageFile is the bolt database inside StorageDir.
func storageFile(dir string) string { return filepath.Join(dir, "sessions.bolt") }

var errStorageDir = errors.New("mqtt: storage directory")

func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("%w %s: %v", errStorageDir, dir, err)
	}
	return nil
}
