package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/configs"
	"github.com/sluicemq/sluice/mqtt"
)

const serveUsage = `Usage: sluice serve [--config FILE] [--check] [--log-level LEVEL]

Runs the MQTT broker, the bridge into durable queues and the admin HTTP listener (/metrics, /healthz,
/readyz, /v1/queues). With no --config it runs the embedded default: MQTT on 127.0.0.1:1883, WebSocket
on 127.0.0.1:8083, HTTP on 127.0.0.1:8080, data under ./data. A config file is read on top of the
default; see configs/sluice.yaml for every key.

Signals: SIGINT or SIGTERM shut down gracefully (within 10s; a second signal ends the process at once);
SIGHUP reads --config again and applies mqtt.users and mqtt.acl without dropping connections.
Exit codes: 0 after a graceful shutdown, 2 for a bad flag or configuration or a failure to start
(one sentence on stderr), 1 when shutdown did not complete.`

// errAlreadyShutDown is returned by a second app.Shutdown.
var errAlreadyShutDown = errors.New("serve: already shut down")

// shutdownTimeout bounds a graceful shutdown after SIGINT or SIGTERM.
const shutdownTimeout = 10 * time.Second

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("serve", serveUsage)
	configPath := fs.String("config", "", "YAML configuration `file`, read on top of the embedded default")
	check := fs.Bool("check", false, "validate the configuration, print \"FILE: ok\" and exit")
	logLevel := fs.String("log-level", "", "log `level`: trace, debug, info, warn or error (overrides log.level)")
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageFail(fs, stderr, "unexpected argument %q (the configuration file goes after --config).", fs.Arg(0))
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "sluice serve: %v\n", err)
		return 2
	}
	if *logLevel != "" {
		cfg.Log.Level = *logLevel
	}
	log, err := newLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		fmt.Fprintf(stderr, "sluice serve: %v.\n", err)
		return 2
	}
	if *check {
		if err := checkConfig(cfg); err != nil {
			fmt.Fprintf(stderr, "sluice serve: %v\n", err)
			return 2
		}
		fmt.Fprintf(stdout, "%s: ok\n", configName(*configPath))
		return 0
	}

	a, err := newApp(cfg, *configPath, log)
	if err != nil {
		fmt.Fprintf(stderr, "sluice serve: %v\n", err)
		return 2
	}
	if n, ok := spareProc(os.Getenv("GOMAXPROCS")); ok {
		log.Debug().Int("gomaxprocs", n).Msg("one P more than the CPUs, for the queues' fsyncs")
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	if err := a.Start(ctx); err != nil {
		fmt.Fprintf(stderr, "sluice serve: %s\n", startErrText(err))
		return 2
	}
	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case <-hup:
			_ = a.Reload() // logs its outcome; a bad file keeps the running settings
		}
	}
	stop() // from here a second SIGINT or SIGTERM ends the process at once
	a.log.Info().Dur("timeout", shutdownTimeout).Msg("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := a.Shutdown(sctx); err != nil {
		a.log.Error().Err(err).Msg("shutdown incomplete")
		return 1
	}
	a.log.Info().Msg("stopped")
	return 0
}

// spareProc runs Go code on one more P than the CPUs it may use, unless the user set GOMAXPROCS
// (env is its value). A queue's writer waits in fsync, a blocking system call during which it keeps
// its P until the runtime takes it back, and after which it queues for a P behind every runnable
// goroutine before it can wake the publishers whose records are durable. Measured on 2 CPUs
// (BenchmarkBridgeIngest 100x8 with -cpu 2 and 3, and sluice loadtest against sluice serve):
// +16–17% bridged QoS 1 ingest; ingest that does not fsync is unchanged.
func spareProc(env string) (int, bool) {
	if env != "" {
		return 0, false
	}
	n := runtime.GOMAXPROCS(0) + 1
	runtime.GOMAXPROCS(n)
	return n, true
}

func configName(path string) string {
	if path == "" {
		return configs.EmbeddedName
	}
	return path
}

// loadConfig returns the validated configuration from path, or the embedded default when path is "".
func loadConfig(path string) (*configs.Config, error) {
	var cfg *configs.Config
	var err error
	if path == "" {
		cfg, err = configs.Default()
	} else {
		cfg, err = configs.Load(path)
	}
	if err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// checkConfig does what serve does before it opens sockets and files: it builds the broker (which
// loads the TLS certificates), without storage.
func checkConfig(cfg *configs.Config) error {
	opts := mqttOptions(cfg, zerolog.Nop(), nil)
	opts.StorageDir = ""
	srv, err := mqtt.New(opts)
	if err != nil {
		return err
	}
	_ = srv.Shutdown(context.Background()) // never started: releases nothing but marks it closed
	return nil
}

// mqttUsers converts the configuration's users and ACL for the broker.
func mqttUsers(m configs.MQTT) ([]mqtt.User, []mqtt.ACLRule) {
	users := make([]mqtt.User, len(m.Users))
	for i, u := range m.Users {
		users[i] = mqtt.User{Username: u.Username, PasswordHash: u.PasswordHash}
	}
	acl := make([]mqtt.ACLRule, len(m.ACL))
	for i, r := range m.ACL {
		acl[i] = mqtt.ACLRule{Username: r.Username, ClientID: r.ClientID, Publish: r.Publish, Subscribe: r.Subscribe}
	}
	return users, acl
}

// mqttOptions converts the configuration for the broker. reg may be nil (no metrics).
func mqttOptions(cfg *configs.Config, log zerolog.Logger, reg prometheus.Registerer) mqtt.Options {
	m := cfg.MQTT
	users, acl := mqttUsers(m)
	o := mqtt.Options{
		Users:              users,
		ACL:                acl,
		Slow:               mqtt.SlowSubscribers{Policy: m.SlowSubscribers.Policy, DisconnectAfter: m.SlowSubscribers.DisconnectAfter},
		StorageDir:         filepath.Join(cfg.DataDir, "mqtt"),
		EchoUserProperties: m.EchoUserProperties,
		SysInterval:        m.SysInterval,
		StorageSync:        m.StorageSync,
		Logger:             log,
		Registerer:         reg,
		Limits: mqtt.Limits{
			MaxPacketSize:    m.Limits.MaxPacketSize,
			MaxConnections:   m.Limits.MaxConnections,
			ReceiveMaximum:   m.Limits.ReceiveMaximum,
			MaxInflight:      m.Limits.MaxInflight,
			MaxPendingWrites: m.Limits.MaxPendingWrites,
			KeepAliveMin:     m.Limits.KeepAliveMin,
			KeepAliveMax:     m.Limits.KeepAliveMax,
			MaxSessionExpiry: m.Limits.MaxSessionExpiry,
			MaxMessageExpiry: m.Limits.MaxMessageExpiry,
			MaxTopicLength:   m.Limits.MaxTopicLength,
			MaxTopicLevels:   m.Limits.MaxTopicLevels,
			PublishRate:      m.Limits.PublishRate,
			PublishBurst:     m.Limits.PublishBurst,
			ConnectTimeout:   m.Limits.ConnectTimeout,
		},
	}
	for _, l := range m.Listeners {
		o.Listeners = append(o.Listeners, mqtt.Listener{
			Name:           l.Name,
			Type:           l.Type,
			Address:        l.Address,
			AllowAnonymous: l.AllowAnonymous,
			TLS: mqtt.TLS{
				CertFile:          l.TLS.CertFile,
				KeyFile:           l.TLS.KeyFile,
				ClientCAFile:      l.TLS.ClientCAFile,
				RequireClientCert: l.TLS.RequireClientCert,
				CertIdentity:      l.TLS.CertIdentity,
			},
		})
	}
	return o
}

// app is a running `sluice serve`: the broker, the queues and the admin HTTP listener. main runs one
// per process; tests run it in-process on 127.0.0.1:0.
//
// Start, then Shutdown, are called once each from one goroutine; Reload and the address methods may be
// called from any goroutine between them.
type app struct {
	configPath string         // "" = the embedded default (nothing to reload)
	log        zerolog.Logger // component=serve
	baseLog    zerolog.Logger // for components that add their own component field
	reg        *prometheus.Registry
	broker     *mqtt.Server
	mux        *http.ServeMux

	httpSrv  *http.Server
	httpLn   net.Listener
	httpDone chan struct{}

	// stopQueues closes the bridge and the queues; stopUplinks the uplinks that drain them upstream.
	stopQueues  func(context.Context) error
	stopUplinks func(context.Context) error
	unlock      func() // releases the data directory's lock

	mu  sync.Mutex // guards cfg and state
	cfg *configs.Config
	// state: 0 new, 1 started, 2 shut down.
	state int
}

// newApp builds the app from a validated configuration. configPath is the file cfg came from ("" for
// the embedded default); Reload reads it again. It opens no socket and no file except the TLS files.
func newApp(cfg *configs.Config, configPath string, log zerolog.Logger) (*app, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("register go metrics: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("register process metrics: %w", err)
	}
	broker, err := mqtt.New(mqttOptions(cfg, log, reg))
	if err != nil {
		return nil, err
	}
	a := &app{
		configPath: configPath,
		log:        log.With().Str("component", "serve").Logger(),
		baseLog:    log,
		reg:        reg,
		broker:     broker,
		mux:        http.NewServeMux(),
		cfg:        cfg,
	}
	a.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	a.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	a.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !a.broker.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready\n")
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return a, nil
}

// Start creates and locks the data directory (one process per directory), opens the queues and the bridge, starts the broker's listeners and
// the HTTP listener, and logs "started" with every bound address. On failure everything started is
// stopped again and the error is one sentence (a port in use names the listener and the address).
func (a *app) Start(ctx context.Context) (err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state != 0 {
		return errors.New("serve: already started")
	}
	a.state = 1
	cfg := a.cfg
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("create data_dir: %w", err)
	}
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	a.unlock = unlock
	undo := []func(context.Context) error{func(context.Context) error { unlock(); return nil }}
	defer func() {
		if err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
			defer cancel()
			for i := len(undo) - 1; i >= 0; i-- {
				_ = undo[i](sctx)
			}
			a.unlock, a.stopQueues, a.stopUplinks = nil, nil, nil
		}
	}()
	// The queues and the bridge's hook, before the broker starts; uplinks' topic filters become rules.
	qm, stopQueues, err := startQueues(ctx, withUplinkRules(cfg), a.broker, a.mux, a.reg, a.baseLog)
	if err != nil {
		return err
	}
	a.stopQueues = stopQueues
	undo = append(undo, a.stopQueues)
	if err := a.broker.Start(); err != nil {
		return err
	}
	undo = append(undo, a.broker.Shutdown)
	a.stopUplinks, err = startUplinks(ctx, cfg, qm, a.mux, a.reg, a.baseLog)
	if err != nil {
		return err
	}
	undo = append(undo, a.stopUplinks)
	if cfg.HTTP.Address != "" {
		ln, err := net.Listen("tcp", cfg.HTTP.Address)
		if err != nil {
			return fmt.Errorf("http listener: %w", listenErr(cfg.HTTP.Address, err))
		}
		a.httpLn = ln
		a.httpSrv = &http.Server{
			Handler:           a.mux,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          nil,
		}
		a.httpDone = make(chan struct{})
		go func() {
			defer close(a.httpDone)
			if err := a.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error().Err(err).Msg("http listener failed")
			}
		}()
	}
	ev := a.log.Info()
	ls := zerolog.Dict()
	for _, l := range cfg.MQTT.Listeners {
		if addr := a.broker.Addr(l.Name); addr != nil {
			ls.Str(l.Name, addr.String())
		}
	}
	ev = ev.Dict("listeners", ls)
	if a.httpLn != nil {
		ev = ev.Str("http", a.httpLn.Addr().String())
	}
	ev.Str("config", configName(a.configPath)).Str("data_dir", cfg.DataDir).Str("version", version).Msg("started")
	return nil
}

// startErrText renders err on one line for the user: a failed listen reads "... listen on ADDR: address
// already in use" rather than repeating the address, and joined errors are separated by "; ".
func startErrText(err error) string {
	msg := err.Error()
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "listen" {
		var se *os.SyscallError
		if errors.As(op.Err, &se) {
			msg = strings.Replace(msg, op.Error(), se.Err.Error(), 1)
		}
	}
	return strings.ReplaceAll(strings.TrimSpace(msg), "\n", "; ")
}

// listenErr shortens a listen error to "listen on ADDR: address already in use" and the like.
func listenErr(addr string, err error) error {
	var se *os.SyscallError
	if errors.As(err, &se) {
		return fmt.Errorf("listen on %s: %w", addr, se.Err)
	}
	return err
}

// MQTTAddr returns the bound address of the named MQTT listener, or nil.
func (a *app) MQTTAddr(name string) net.Addr { return a.broker.Addr(name) }

// HTTPAddr returns the bound address of the HTTP listener, or nil when it is off or not started.
func (a *app) HTTPAddr() net.Addr {
	if a.httpLn == nil {
		return nil
	}
	return a.httpLn.Addr()
}

// Reload reads the configuration file again and applies its users and ACL to the broker; connected
// clients stay. A file that does not load or validate changes nothing. It logs the outcome and returns
// the error.
func (a *app) Reload() error {
	if a.configPath == "" {
		a.log.Info().Msg("reload: running the embedded default configuration; nothing to reload")
		return nil
	}
	cfg, err := loadConfig(a.configPath)
	if err == nil {
		users, acl := mqttUsers(cfg.MQTT)
		err = a.broker.Reload(users, acl)
	}
	if err != nil {
		a.log.Error().Str("config", a.configPath).Str("error", err.Error()).Msg("reload failed; keeping the running users and acl")
		return err
	}
	a.mu.Lock()
	old := a.cfg
	// Only users and acl are applied: keep the rest as it runs, so that the comparison below stays true.
	next := *old
	next.MQTT.Users, next.MQTT.ACL = cfg.MQTT.Users, cfg.MQTT.ACL
	a.cfg = &next
	a.mu.Unlock()
	cfg.MQTT.Users, cfg.MQTT.ACL = old.MQTT.Users, old.MQTT.ACL
	if !sameSettings(cfg, old) {
		a.log.Warn().Str("config", a.configPath).Msg("reload: settings other than mqtt.users and mqtt.acl changed; they apply after a restart")
	}
	a.log.Info().Str("config", a.configPath).Int("users", len(next.MQTT.Users)).Int("acl_rules", len(next.MQTT.ACL)).Msg("reloaded")
	return nil
}

// sameSettings compares two configurations' values (not where they were read from).
func sameSettings(a, b *configs.Config) bool {
	return reflect.DeepEqual(a.Log, b.Log) && reflect.DeepEqual(a.MQTT, b.MQTT) && reflect.DeepEqual(a.HTTP, b.HTTP) &&
		a.DataDir == b.DataDir && reflect.DeepEqual(a.Queues, b.Queues) && reflect.DeepEqual(a.Bridge, b.Bridge) &&
		reflect.DeepEqual(a.Uplinks, b.Uplinks)
}

// Shutdown stops in order: the broker (stop accepting, disconnect clients, flush storage), the bridge
// and the queues, then the HTTP listener. It is bounded by ctx. A second call returns errAlreadyShutDown.
func (a *app) Shutdown(ctx context.Context) error {
	a.mu.Lock()
	state := a.state
	a.state = 2
	a.mu.Unlock()
	if state == 2 {
		return errAlreadyShutDown
	}
	var errs []error
	if err := a.broker.Shutdown(ctx); err != nil && !errors.Is(err, mqtt.ErrClosed) {
		errs = append(errs, fmt.Errorf("mqtt: %w", err))
	}
	if a.stopUplinks != nil {
		if err := a.stopUplinks(ctx); err != nil {
			errs = append(errs, fmt.Errorf("uplinks: %w", err))
		}
	}
	if a.stopQueues != nil {
		if err := a.stopQueues(ctx); err != nil {
			errs = append(errs, fmt.Errorf("queues: %w", err))
		}
	}
	if a.httpSrv != nil {
		if err := a.httpSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http: %w", err))
			_ = a.httpSrv.Close()
		}
		<-a.httpDone
	}
	if a.unlock != nil && state == 1 {
		a.unlock()
	}
	return errors.Join(errs...)
}
