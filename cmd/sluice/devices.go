package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sluicemq/sluice/devices"
)

const devicesUsage = `Usage: sluice devices [--fleet FILE] [flags]

Simulate a fleet of MQTT devices. Each device connects (MQTT 5 or 3.1.1), publishes a payload
(JSON telemetry, a GPS track or a binary blob, each with a sequence number and a send timestamp)
every interval to its topic, and reconnects with exponential backoff. A fleet file
(configs/fleet.yaml is an example) sets everything; flags given on the command line override it.
The defaults publish JSON telemetry from 10 devices to devices/{id}/telemetry on
tcp://127.0.0.1:1883, which the default 'sluice serve' bridges into the queue "telemetry".

A status line (connected, published/s, acked, errors, reconnects) is shown on stderr while it
runs, and a summary at the end. Exit code 0, 1 when the fleet could not connect, 2 for bad input.`

// devicesFlags are the flags of `sluice devices`, kept apart so the fleet file can be overlaid.
type devicesFlags struct {
	fleet, broker, protocol, topic, payload, idPattern    string
	interval, jitter, duration, connectRate               string
	count, qos                                            int
	username, password, statusTopic, commandTopic, caFile string
	insecure, persistent, quiet                           bool
	statusEvery                                           time.Duration
}

func cmdDevices(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("devices", devicesUsage)
	var f devicesFlags
	fs.StringVar(&f.fleet, "fleet", "", "fleet YAML `file` (flags override its values)")
	fs.StringVar(&f.broker, "broker", "tcp://127.0.0.1:1883", "broker `URL`: tcp://, mqtts:// (TLS), ws://, wss://")
	fs.IntVar(&f.count, "count", 10, "number of devices")
	fs.StringVar(&f.interval, "interval", "1s", "time between two publishes of one device")
	fs.StringVar(&f.jitter, "jitter", "0s", "each interval varies by up to ± this")
	fs.IntVar(&f.qos, "qos", 1, "publish QoS: 0, 1 or 2")
	fs.StringVar(&f.protocol, "protocol", "5", "MQTT protocol version: 3.1.1 or 5")
	fs.StringVar(&f.topic, "topic", "devices/{id}/telemetry", "publish topic; {id} is the device id")
	fs.StringVar(&f.payload, "payload", "telemetry", "payload profile: telemetry, gps or blob:SIZE")
	fs.StringVar(&f.duration, "duration", "0s", "how long to run (0: until Ctrl-C)")
	fs.StringVar(&f.connectRate, "connect-rate", "200/s", "ramp-up: new connections per second (0: all at once)")
	fs.StringVar(&f.idPattern, "id-pattern", "dev-{n}", "device id and MQTT client id; {n} is 1, 2, ...")
	fs.StringVar(&f.username, "username", "", "MQTT username")
	fs.StringVar(&f.password, "password", "", "MQTT password")
	fs.StringVar(&f.statusTopic, "status-topic", "", "retained online/offline status topic (will on disconnect), e.g. devices/{id}/status")
	fs.StringVar(&f.commandTopic, "command-topic", "", "topic each device subscribes to and answers on TOPIC/reply, e.g. devices/{id}/commands")
	fs.StringVar(&f.caFile, "tls-ca", "", "CA certificate `file` (PEM) for TLS brokers")
	fs.BoolVar(&f.insecure, "tls-insecure", false, "skip TLS certificate verification")
	fs.BoolVar(&f.persistent, "persistent", false, "persistent sessions instead of clean ones")
	fs.BoolVar(&f.quiet, "quiet", false, "no status line, only the summary")
	fs.DurationVar(&f.statusEvery, "status-interval", 0, "status line period (default: 500ms on a terminal, 10s otherwise)")
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageFail(fs, stderr, "unexpected argument %q.", fs.Arg(0))
	}
	cfg, err := f.config(fs)
	if err != nil {
		fmt.Fprintf(stderr, "sluice devices: %v\n", sentence(err))
		return 2
	}
	fleet, err := devices.NewFleet(cfg, devices.Options{})
	if err != nil {
		fmt.Fprintf(stderr, "sluice devices: %v\n", sentence(err))
		return 2
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	cfg = fleet.Config()
	st := newStatusLine(stderr, f.quiet)
	if f.statusEvery > 0 {
		st.every = f.statusEvery
	}
	statusCtx, stopStatus := context.WithCancel(context.Background())
	statusDone := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(statusDone)
		st.loop(statusCtx, func(elapsed time.Duration, rate float64) string {
			s := fleet.Stats()
			return fmt.Sprintf("connected %d/%d  published %d (%.1f/s)  acked %d  errors %d  reconnects %d  commands %d",
				s.Connected, cfg.Count, s.Published, rate, s.Acked, s.Errors, s.Reconnects, s.Commands)
		}, func() uint64 { return fleet.Stats().Published })
	}()
	runErr := fleet.Run(ctx)
	stopStatus()
	<-statusDone
	if runErr != nil {
		fmt.Fprintf(stderr, "sluice devices: %v\n", sentence(runErr))
		return 1
	}
	s := fleet.Stats()
	el := time.Since(start)
	fmt.Fprintf(stderr, "sluice devices: %d devices for %v: published %d (%.1f/s), acked %d, errors %d, reconnects %d, commands answered %d.\n",
		s.Devices, el.Round(100*time.Millisecond), s.Published, float64(s.Published)/el.Seconds(), s.Acked, s.Errors, s.Reconnects, s.Commands)
	return 0
}

// config builds the fleet config: the file (if any), then every flag given on the command line,
// or the flag defaults when there is no file.
func (f *devicesFlags) config(fs *flag.FlagSet) (devices.Config, error) {
	var cfg devices.Config
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	use := func(name string) bool { return f.fleet == "" || set[name] }
	if f.fleet != "" {
		c, err := devices.LoadConfig(f.fleet)
		if err != nil {
			return cfg, err
		}
		cfg = c
	}
	var err error
	dur := func(name, v string) devices.Duration {
		if err != nil {
			return 0
		}
		d, e := devices.ParseDuration(v)
		if e != nil {
			err = fmt.Errorf("--%s: %w", name, e)
		}
		return devices.Duration(d)
	}
	if use("broker") {
		cfg.Broker = f.broker
	}
	if use("count") {
		cfg.Count = f.count
	}
	if use("interval") {
		cfg.Interval = dur("interval", f.interval)
	}
	if use("jitter") {
		cfg.Jitter = dur("jitter", f.jitter)
	}
	if use("duration") {
		cfg.Duration = dur("duration", f.duration)
	}
	if use("qos") {
		if f.qos < 0 || f.qos > 2 {
			return cfg, fmt.Errorf("--qos %d must be 0, 1 or 2", f.qos)
		}
		cfg.QoS = devices.QoS(f.qos)
	}
	if use("protocol") {
		p, e := devices.ParseProtocol(f.protocol)
		if e != nil {
			return cfg, fmt.Errorf("--protocol: %w", e)
		}
		cfg.Protocol = p
	}
	if use("topic") {
		cfg.Topic = f.topic
	}
	if use("payload") {
		p, e := devices.ParsePayload(f.payload)
		if e != nil {
			return cfg, fmt.Errorf("--payload: %w", e)
		}
		cfg.Payload = p
	}
	if use("connect-rate") {
		r, e := devices.ParseRate(f.connectRate)
		if e != nil {
			return cfg, fmt.Errorf("--connect-rate: %w", e)
		}
		cfg.ConnectRate = devices.Rate(r)
	}
	if use("id-pattern") {
		cfg.IDPattern = f.idPattern
	}
	if set["username"] {
		cfg.Username = f.username
	}
	if set["password"] {
		cfg.Password = f.password
	}
	if set["status-topic"] {
		cfg.StatusTopic = f.statusTopic
	}
	if set["command-topic"] {
		cfg.CommandTopic, cfg.ReplyTopic = f.commandTopic, ""
	}
	if set["tls-ca"] {
		cfg.TLS.CAFile = f.caFile
	}
	if set["tls-insecure"] {
		cfg.TLS.InsecureSkipVerify = f.insecure
	}
	if set["persistent"] {
		cfg.PersistentSession = f.persistent
	}
	if err != nil {
		return cfg, err
	}
	cfg = cfg.WithDefaults()
	if e := cfg.Validate(); e != nil {
		if f.fleet != "" {
			return cfg, fmt.Errorf("with the flags given: %w", e)
		}
		return cfg, e
	}
	return cfg, nil
}

// sentence makes an error one sentence: capitalization as is, a final period.
func sentence(err error) string {
	s := strings.TrimSpace(err.Error())
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return s
}

// statusLine shows a refreshing line on a terminal (\r) and a line every 10s elsewhere.
type statusLine struct {
	w     io.Writer
	tty   bool
	quiet bool
	every time.Duration
}

// writesToTerminal reports whether w is a file that is a terminal.
func writesToTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isTerminal(f)
}

func newStatusLine(w io.Writer, quiet bool) *statusLine {
	tty := writesToTerminal(w)
	every := 10 * time.Second
	if tty {
		every = 500 * time.Millisecond
	}
	return &statusLine{w: w, tty: tty, quiet: quiet, every: every}
}

// loop prints line() until ctx ends; rate is computed from count() over the last period.
func (s *statusLine) loop(ctx context.Context, line func(elapsed time.Duration, rate float64) string, count func() uint64) {
	if s.quiet {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(s.every)
	defer t.Stop()
	start, last, lastAt := time.Now(), count(), time.Now()
	width := 0
	for {
		select {
		case <-ctx.Done():
			if s.tty && width > 0 {
				fmt.Fprintf(s.w, "\r%s\r", strings.Repeat(" ", width))
			}
			return
		case now := <-t.C:
			c := count()
			rate := float64(c-last) / now.Sub(lastAt).Seconds()
			last, lastAt = c, now
			text := line(now.Sub(start), rate)
			if s.tty {
				pad := max(width-len(text), 0)
				fmt.Fprintf(s.w, "\r%s%s", text, strings.Repeat(" ", pad))
				width = len(text)
			} else {
				fmt.Fprintf(s.w, "%s %s\n", now.Sub(start).Round(time.Second), text)
			}
		}
	}
}
