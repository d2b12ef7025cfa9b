package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sluicemq/sluice/devices"
	"github.com/sluicemq/sluice/loadtest"
)

const loadtestUsage = `Usage: sluice loadtest [--scenario FILE]... --broker URL [--compare URL] [flags]

Load-test any MQTT broker over the network and report throughput, latency percentiles (from each
message's intended send time, free of coordinated omission) and lost, duplicated and out-of-order
messages. Scenarios come from YAML files (configs/loadtest/*.yaml; --scenario may be repeated) or,
without --scenario, from the flags below; flags given on the command line override the files.
Kinds: fan-in, fan-out, p2p, shared, idle, storm, bridge-queue.

--compare URL runs each scenario against a second broker too and prints ratios (compare/broker).
--pid and --compare-pid sample the brokers' RSS and CPU from /proc.

Exit code 0 when nothing was lost, 1 when messages were lost or a run could not start or had
problems, 2 for bad input.`

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func cmdLoadtest(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("loadtest", loadtestUsage)
	var (
		files                                 stringList
		broker, compare, jsonOut, htmlOut     string
		label, compareLabel                   string
		pid, comparePID                       int
		noProgress                            bool
		kind, mode, protocol, rate, dur       string
		warmup, drain, connectRate, queueWait string
		queueAPI, queueName, topic, queueKey  string
		qos, subQoS, pubs, subs, pairs, conns int
		inflight, payloadSize, consumers      int
	)
	fs.Var(&files, "scenario", "scenario YAML `file` (repeatable)")
	fs.StringVar(&broker, "broker", "tcp://127.0.0.1:1883", "broker `URL`: tcp://, tls://, mqtts://, ws://, wss://")
	fs.StringVar(&compare, "compare", "", "second broker `URL` to run the same scenarios against")
	fs.StringVar(&label, "label", "", "name of --broker in reports (default: its host:port)")
	fs.StringVar(&compareLabel, "compare-label", "", "name of --compare in reports (default: its host:port)")
	fs.IntVar(&pid, "pid", 0, "PID of the --broker process, to sample its RSS and CPU")
	fs.IntVar(&comparePID, "compare-pid", 0, "PID of the --compare broker process")
	fs.StringVar(&jsonOut, "json", "", "write the report as JSON to `file`")
	fs.StringVar(&htmlOut, "html", "", "write the report as a self-contained HTML page to `file`")
	fs.BoolVar(&noProgress, "no-progress", false, "no progress bar")
	fs.StringVar(&kind, "kind", "fan-in", "scenario kind without a file: fan-in, fan-out, p2p, shared, idle, storm, bridge-queue")
	fs.StringVar(&mode, "mode", "open", "open (constant --rate) or closed (as fast as acks allow)")
	fs.StringVar(&protocol, "protocol", "5", "MQTT protocol version: 3.1.1 or 5")
	fs.IntVar(&qos, "qos", 1, "publish QoS")
	fs.IntVar(&subQoS, "subscribe-qos", -1, "subscription QoS (default: --qos)")
	fs.IntVar(&pubs, "publishers", 0, "publishers (default by kind)")
	fs.IntVar(&subs, "subscribers", 0, "subscribers (default by kind)")
	fs.IntVar(&pairs, "pairs", 0, "p2p: publisher/subscriber pairs")
	fs.IntVar(&conns, "connections", 0, "idle, storm: connections")
	fs.StringVar(&rate, "rate", "1000/s", "open mode: total publish rate")
	fs.IntVar(&inflight, "inflight", 100, "unacknowledged QoS 1/2 publishes per publisher")
	fs.IntVar(&payloadSize, "payload-size", 64, "payload bytes")
	fs.StringVar(&dur, "duration", "10s", "publishing (idle, storm: holding) time")
	fs.StringVar(&warmup, "warmup", "0s", "latency of messages sent before this is not recorded")
	fs.StringVar(&drain, "drain", "5s", "longest wait for in-flight messages at the end")
	fs.StringVar(&connectRate, "connect-rate", "0", "idle, storm: connections per second (0: all at once)")
	fs.StringVar(&topic, "topic", "devices/{id}/telemetry", "bridge-queue: publish topic")
	fs.StringVar(&queueAPI, "queue-api", "http://127.0.0.1:8080", "bridge-queue: queue HTTP API base URL")
	fs.StringVar(&queueName, "queue", "telemetry", "bridge-queue: queue name")
	fs.StringVar(&queueKey, "queue-api-key", "", "bridge-queue: API key for the queue API (default: $SLUICE_API_KEY)")
	fs.IntVar(&consumers, "consumers", 4, "bridge-queue: queue consumers")
	fs.StringVar(&queueWait, "queue-wait", "500ms", "bridge-queue: long-poll wait per receive")
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageFail(fs, stderr, "unexpected argument %q.", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	fail := func(err error) int {
		fmt.Fprintf(stderr, "sluice loadtest: %s\n", sentence(err))
		return 2
	}

	// The overlay of flags on a scenario (all of them when there is no file).
	overlay := func(s loadtest.Scenario, all bool) (loadtest.Scenario, error) {
		use := func(n string) bool { return all || set[n] }
		var err error
		parse := func(name, v string, f func(string) error) {
			if err == nil && use(name) {
				if e := f(v); e != nil {
					err = fmt.Errorf("--%s: %w", name, e)
				}
			}
		}
		durFn := func(dst *devices.Duration) func(string) error {
			return func(v string) error { d, e := devices.ParseDuration(v); *dst = devices.Duration(d); return e }
		}
		rateFn := func(dst *devices.Rate) func(string) error {
			return func(v string) error { r, e := devices.ParseRate(v); *dst = devices.Rate(r); return e }
		}
		if use("kind") {
			s.Kind = loadtest.Kind(kind)
			s.Name = ""
		}
		if use("mode") {
			s.Mode = loadtest.Mode(mode)
		}
		parse("protocol", protocol, func(v string) error { p, e := devices.ParseProtocol(v); s.Protocol = p; return e })
		parse("duration", dur, durFn(&s.Duration))
		parse("warmup", warmup, durFn(&s.Warmup))
		parse("drain", drain, durFn(&s.Drain))
		parse("queue-wait", queueWait, durFn(&s.Queue.Wait))
		parse("connect-rate", connectRate, rateFn(&s.ConnectRate))
		if use("rate") && (s.Mode != loadtest.Closed || set["rate"]) {
			parse("rate", rate, rateFn(&s.Rate))
		}
		ints := []struct {
			name string
			v    int
			dst  *int
		}{{"publishers", pubs, &s.Publishers}, {"subscribers", subs, &s.Subscribers}, {"pairs", pairs, &s.Pairs},
			{"connections", conns, &s.Connections}, {"inflight", inflight, &s.Inflight}, {"payload-size", payloadSize, &s.PayloadSize},
			{"consumers", consumers, &s.Queue.Consumers}}
		for _, x := range ints {
			if use(x.name) {
				if x.v < 0 {
					return s, fmt.Errorf("--%s %d must not be negative", x.name, x.v)
				}
				*x.dst = x.v
			}
		}
		if use("qos") {
			if qos < 0 || qos > 2 {
				return s, fmt.Errorf("--qos %d must be 0, 1 or 2", qos)
			}
			s.QoS = devices.QoS(qos)
		}
		if set["subscribe-qos"] {
			if subQoS < 0 || subQoS > 2 {
				return s, fmt.Errorf("--subscribe-qos %d must be 0, 1 or 2", subQoS)
			}
			q := devices.QoS(subQoS)
			s.SubscribeQoS = &q
		}
		if use("topic") {
			s.Topic = topic
		}
		if use("queue-api") {
			s.Queue.API = queueAPI
		}
		if use("queue") {
			s.Queue.Name = queueName
		}
		if set["queue-api-key"] {
			s.Queue.APIKey = queueKey
		} else if s.Queue.APIKey == "" {
			s.Queue.APIKey = os.Getenv("SLUICE_API_KEY")
		}
		if err != nil {
			return s, err
		}
		if !set["subscribe-qos"] && (set["qos"] || all) {
			s.SubscribeQoS = nil // follow --qos
		}
		s = s.WithDefaults()
		return s, s.Validate()
	}

	var scenarios []loadtest.Scenario
	if len(files) == 0 {
		s, err := overlay(loadtest.Scenario{}, true)
		if err != nil {
			return fail(err)
		}
		scenarios = append(scenarios, s)
	}
	for _, f := range files {
		s, err := loadtest.LoadScenario(f)
		if err != nil {
			return fail(err)
		}
		if s, err = overlay(s, false); err != nil {
			return fail(fmt.Errorf("%s with the flags given: %w", f, err))
		}
		scenarios = append(scenarios, s)
	}
	targets := []loadtest.Target{{Broker: broker, PID: pid}}
	labels := []string{orLabel(label, broker)}
	if compare != "" {
		targets = append(targets, loadtest.Target{Broker: compare, PID: comparePID})
		labels = append(labels, orLabel(compareLabel, compare))
		if labels[0] == labels[1] {
			labels[1] += " (compare)"
		}
	} else if comparePID != 0 {
		return usageFail(fs, stderr, "--compare-pid needs --compare.")
	}
	for _, t := range targets {
		if _, err := devices.ParseBroker(t.Broker); err != nil {
			return fail(err)
		}
		if t.PID != 0 {
			if err := loadtest.CheckPID(t.PID); err != nil {
				return fail(err)
			}
		}
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep := loadtest.NewReport(labels...)
	bar := newProgressBar(stderr, noProgress)
	code := 0
	for _, sc := range scenarios {
		var results []*loadtest.Result
		for i, t := range targets {
			if i > 0 && sc.Kind == loadtest.Bridge {
				// The consumers read Sluice's queue API: a second broker's messages never reach it.
				fmt.Fprintf(stderr, "sluice loadtest: %s runs against %s only (its consumers use the queue API at %s).\n", sc.Name, labels[0], sc.Queue.API)
				results = append(results, nil)
				continue
			}
			bar.start(sc.Name + " @ " + labels[i])
			res, err := loadtest.Run(ctx, sc, t, loadtest.Options{Progress: bar.update})
			bar.done()
			if err != nil {
				fmt.Fprintf(stderr, "sluice loadtest: %s against %s: %s\n", sc.Name, labels[i], sentence(err))
				code = 1
				results = append(results, nil)
				continue
			}
			if !res.OK() {
				code = 1
			}
			results = append(results, res)
		}
		rep.Add(results...)
		if ctx.Err() != nil {
			break
		}
	}
	if err := loadtest.WriteTable(stdout, rep); err != nil {
		fmt.Fprintf(stderr, "sluice loadtest: %s\n", sentence(err))
		return 1
	}
	for _, out := range []struct {
		path  string
		write func(io.Writer, *loadtest.Report) error
	}{{jsonOut, loadtest.WriteJSON}, {htmlOut, loadtest.WriteHTML}} {
		if out.path == "" {
			continue
		}
		if err := writeFile(out.path, rep, out.write); err != nil {
			fmt.Fprintf(stderr, "sluice loadtest: %s\n", sentence(err))
			code = 1
		}
	}
	if n := rep.Lost(); n > 0 {
		fmt.Fprintf(stderr, "sluice loadtest: %d messages were lost (%s).\n", n, lostWhere(rep))
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "sluice loadtest: interrupted.")
		code = 1
	}
	return code
}

func writeFile(path string, rep *loadtest.Report, write func(io.Writer, *loadtest.Report) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if err := write(f, rep); err != nil {
		_ = f.Close()
		return fmt.Errorf("write report %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	return nil
}

func orLabel(label, broker string) string {
	if label != "" {
		return label
	}
	if u, err := url.Parse(broker); err == nil && u.Host != "" {
		return u.Host
	}
	return broker
}

// progressBar draws "[#####-----]  45% fan-in @ sluice  run 4.5s/10s  sent … recv …" on stderr,
// refreshing in place on a terminal and as a line every 5s elsewhere.
type progressBar struct {
	w     io.Writer
	tty   bool
	off   bool
	name  string
	width int
	last  time.Time
}

func newProgressBar(w io.Writer, off bool) *progressBar {
	return &progressBar{w: w, tty: writesToTerminal(w), off: off}
}

func (p *progressBar) start(name string) {
	p.name, p.last = name, time.Time{}
	if !p.off && !p.tty {
		fmt.Fprintf(p.w, "running %s\n", name)
	}
}

func (p *progressBar) update(pr loadtest.Progress) {
	if p.off {
		return
	}
	frac := 0.0
	if pr.Total > 0 {
		frac = min(max(pr.Elapsed.Seconds()/pr.Total.Seconds(), 0), 1)
	}
	const cells = 24
	n := int(frac * cells)
	line := fmt.Sprintf("[%s%s] %3.0f%% %s  %s %.1fs/%v  sent %d  recv %d  conn %d  err %d",
		strings.Repeat("#", n), strings.Repeat("-", cells-n), frac*100, p.name, pr.Phase,
		pr.Elapsed.Seconds(), pr.Total, pr.Sent, pr.Received, pr.Connected, pr.Errors)
	if p.tty {
		now := time.Now()
		if now.Sub(p.last) < 200*time.Millisecond {
			return
		}
		p.last = now
		fmt.Fprintf(p.w, "\r%s%s", line, strings.Repeat(" ", max(p.width-len(line), 0)))
		p.width = len(line)
		return
	}
	if now := time.Now(); now.Sub(p.last) >= 5*time.Second {
		p.last = now
		fmt.Fprintln(p.w, line)
	}
}

func (p *progressBar) done() {
	if !p.off && p.tty && p.width > 0 {
		fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.width))
		p.width = 0
	}
}

// lostWhere names the broker and scenario of every loss in rep, e.g. "mosquitto: 672 in
// max-throughput", so that a comparison run says which side lost.
func lostWhere(rep *loadtest.Report) string {
	var parts []string
	for _, e := range rep.Scenarios {
		for i, r := range e.Results {
			if r != nil && r.Lost > 0 {
				name := r.Broker
				if i < len(rep.Brokers) {
					name = rep.Brokers[i] // the label, as in the table
				}
				parts = append(parts, fmt.Sprintf("%s: %d in %s", cmp.Or(name, "broker"), r.Lost, e.Name))
			}
		}
	}
	return strings.Join(parts, "; ")
}
