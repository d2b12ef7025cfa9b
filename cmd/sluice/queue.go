package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/sluicemq/sluice/queue/client"
)

const queueUsage = `Usage: sluice queue [--url URL] [--key KEY] <command> [args]

Commands (the queue HTTP API from the shell):
  ls                                  list queues with their counts
  stats Q [--json]                    one queue's counts and counters
  receive Q [--max N] [--wait D] [--lease D] [--ack]
                                      lease up to N messages and print them, one JSON object a line;
                                      with --ack they are acked after printing (else they come back
                                      when the lease ends)
  tail Q [--batch N]                  receive, print and ack continuously until interrupted (consumes!)
  send Q [--topic T] [--whole]        enqueue the lines of stdin, one message each (--whole: all of stdin
                                      as one message)
  dead Q [--max N]                    print dead letters, one JSON object a line
  redrive Q [ID...]                   move dead letters (all, or the given ids) back into Q
  purge Q --yes                       delete every message of Q

The broker URL and API key come from --url/--key or SLUICE_URL/SLUICE_API_KEY
(default http://127.0.0.1:8080, no key).
`

// cmdQueue runs `sluice queue ...`. It returns the process exit code: 0 done, 1 failed, 2 bad usage.
func cmdQueue(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return cmdQueueWithStdin(ctx, args, os.Stdin, stdout, stderr)
}

// usageError is a mistake on the command line (exit code 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// queueCLI holds what every queue subcommand shares.
type queueCLI struct {
	c      *client.Client
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

func cmdQueueWithStdin(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	url := os.Getenv("SLUICE_URL")
	if url == "" {
		url = "http://127.0.0.1:8080"
	}
	key := os.Getenv("SLUICE_API_KEY")
	cli := &queueCLI{c: &client.Client{}, stdin: stdin, stdout: stdout, stderr: stderr}

	// Global flags may also be given after the subcommand: each subcommand's flag set has them.
	global := func(fs *flag.FlagSet) {
		fs.StringVar(&url, "url", url, "broker HTTP URL (env SLUICE_URL)")
		fs.StringVar(&key, "key", key, "API key (env SLUICE_API_KEY)")
	}
	fs := flag.NewFlagSet("sluice queue", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	global(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, queueUsage)
			return 0
		}
		fmt.Fprintf(stderr, "sluice queue: %v\n%s", err, queueUsage)
		return 2
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, queueUsage)
		return 2
	}
	sub, rest := rest[0], rest[1:]
	sfs := flag.NewFlagSet("sluice queue "+sub, flag.ContinueOnError)
	sfs.SetOutput(io.Discard)
	global(sfs)

	var run func(ctx context.Context, pos []string) error
	switch sub {
	case "ls":
		run = func(ctx context.Context, pos []string) error { return cli.ls(ctx, pos) }
	case "stats":
		asJSON := sfs.Bool("json", false, "print JSON")
		run = func(ctx context.Context, pos []string) error { return cli.stats(ctx, pos, *asJSON) }
	case "receive":
		maxN := sfs.Int("max", 1, "messages to receive, 1..1000")
		wait := sfs.Duration("wait", 0, "wait up to this long for a message (≤ 20s)")
		lease := sfs.Duration("lease", 0, "lease time (default: the queue's)")
		ack := sfs.Bool("ack", false, "ack the messages after printing them")
		run = func(ctx context.Context, pos []string) error {
			return cli.receive(ctx, pos, client.ReceiveOptions{Max: *maxN, Wait: *wait, Lease: *lease}, *ack)
		}
	case "tail":
		batch := sfs.Int("batch", 100, "messages per receive, 1..1000")
		run = func(ctx context.Context, pos []string) error { return cli.tail(ctx, pos, *batch) }
	case "send":
		topic := sfs.String("topic", "", "topic recorded with the messages")
		whole := sfs.Bool("whole", false, "send all of stdin as one message")
		run = func(ctx context.Context, pos []string) error { return cli.send(ctx, pos, *topic, *whole) }
	case "dead":
		maxN := sfs.Int("max", 100, "dead letters to print, 1..1000")
		run = func(ctx context.Context, pos []string) error { return cli.dead(ctx, pos, *maxN) }
	case "redrive":
		run = func(ctx context.Context, pos []string) error { return cli.redrive(ctx, pos) }
	case "purge":
		yes := sfs.Bool("yes", false, "really delete every message")
		run = func(ctx context.Context, pos []string) error { return cli.purge(ctx, pos, *yes) }
	case "help":
		fmt.Fprint(stdout, queueUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "sluice queue: unknown command %q\n%s", sub, queueUsage)
		return 2
	}
	pos, err := parseInterleaved(sfs, rest)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, queueUsage)
			return 0
		}
		fmt.Fprintf(stderr, "sluice queue %s: %v\n", sub, err)
		return 2
	}
	cli.c.BaseURL, cli.c.APIKey = url, key
	if err := run(ctx, pos); err != nil {
		if _, ok := errors.AsType[*usageError](err); ok {
			fmt.Fprintf(stderr, "sluice queue %s: %v\n", sub, err)
			return 2
		}
		fmt.Fprintf(stderr, "sluice queue %s: %v\n", sub, err)
		return 1
	}
	return 0
}

// parseInterleaved parses flags that may come before, between or after positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func queueArg(pos []string, extra bool) (string, error) {
	if len(pos) == 0 {
		return "", usagef("a queue name is required")
	}
	if !extra && len(pos) > 1 {
		return "", usagef("unexpected arguments %q", pos[1:])
	}
	return pos[0], nil
}

func (cli *queueCLI) ls(ctx context.Context, pos []string) error {
	if len(pos) > 0 {
		return usagef("ls takes no arguments")
	}
	qs, err := cli.c.Queues(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(cli.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "QUEUE\tREADY\tLEASED\tDELAYED\tDEAD\tOLDEST\t")
	for _, s := range qs {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t\n", s.Name, s.Ready, s.Leased, s.Delayed, s.Dead,
			(time.Duration(s.OldestAgeMS) * time.Millisecond).String())
	}
	return tw.Flush()
}

func (cli *queueCLI) stats(ctx context.Context, pos []string, asJSON bool) error {
	q, err := queueArg(pos, false)
	if err != nil {
		return err
	}
	s, err := cli.c.Stats(ctx, q)
	if err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(cli.stdout).Encode(s)
	}
	tw := tabwriter.NewWriter(cli.stdout, 0, 4, 1, ' ', 0)
	for _, kv := range []struct {
		k string
		v any
	}{
		{"queue", s.Name}, {"ready", s.Ready}, {"leased", s.Leased}, {"delayed", s.Delayed}, {"dead", s.Dead},
		{"bytes", s.Bytes}, {"oldest", time.Duration(s.OldestAgeMS) * time.Millisecond},
		{"enqueued", s.Enqueued}, {"acked", s.Acked}, {"nacked", s.Nacked}, {"dead_lettered", s.DeadLettered},
		{"expired", s.Expired}, {"dropped", s.Dropped},
		{"rates", fmt.Sprintf("enqueue %.1f/s, ack %.1f/s, nack %.1f/s, dead-letter %.1f/s", s.EnqueueRate, s.AckRate, s.NackRate, s.DeadLetterRate)},
	} {
		fmt.Fprintf(tw, "%s:\t%v\n", kv.k, kv.v)
	}
	return tw.Flush()
}

// printed is how a message is shown: the payload as text when it is UTF-8, else base64.
type printed struct {
	ID            string            `json:"id"`
	Receipt       string            `json:"receipt,omitempty"`
	Attempt       int               `json:"attempt,omitempty"`
	Attempts      int               `json:"attempts,omitempty"`
	Reason        string            `json:"reason,omitempty"`
	EnqueuedAt    time.Time         `json:"enqueued_at"`
	Topic         string            `json:"topic,omitempty"`
	ClientID      string            `json:"client_id,omitempty"`
	QoS           byte              `json:"qos"`
	Properties    client.Properties `json:"properties,omitzero"`
	Payload       *string           `json:"payload,omitempty"`
	PayloadBase64 []byte            `json:"payload_base64,omitempty"`
}

func setPayload(p *printed, b []byte) {
	if utf8.Valid(b) {
		s := string(b)
		p.Payload = &s
	} else {
		p.PayloadBase64 = b
	}
}

func (cli *queueCLI) printMessage(m client.Message) error {
	p := printed{ID: m.ID, Receipt: m.Receipt, Attempt: m.Attempt, EnqueuedAt: m.EnqueuedAt, Topic: m.Topic,
		ClientID: m.ClientID, QoS: m.QoS, Properties: m.Properties}
	setPayload(&p, m.Payload)
	return json.NewEncoder(cli.stdout).Encode(p)
}

func (cli *queueCLI) receive(ctx context.Context, pos []string, opts client.ReceiveOptions, ack bool) error {
	q, err := queueArg(pos, false)
	if err != nil {
		return err
	}
	if opts.Max < 1 || opts.Max > client.MaxReceive {
		return usagef("--max must be between 1 and %d", client.MaxReceive)
	}
	if opts.Wait < 0 || opts.Wait > client.MaxWait {
		return usagef("--wait must be between 0 and %s", client.MaxWait)
	}
	msgs, err := cli.c.Receive(ctx, q, opts)
	if err != nil {
		return err
	}
	receipts, err := cli.printMessages(msgs)
	if err != nil {
		return err
	}
	if ack && len(receipts) > 0 {
		return cli.ack(ctx, q, receipts)
	}
	return nil
}

// printMessages prints msgs in order and returns their receipts.
func (cli *queueCLI) printMessages(msgs []client.Message) ([]string, error) {
	receipts := make([]string, 0, len(msgs))
	for _, m := range msgs {
		if err := cli.printMessage(m); err != nil {
			return nil, err
		}
		receipts = append(receipts, m.Receipt)
	}
	return receipts, nil
}

func (cli *queueCLI) ack(ctx context.Context, q string, receipts []string) error {
	errs, err := cli.c.Ack(context.WithoutCancel(ctx), q, receipts)
	if err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	failed := 0
	for _, e := range errs {
		if e != nil {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("ack: %d of %d receipts refused (leases ended?)", failed, len(receipts))
	}
	return nil
}

func (cli *queueCLI) tail(ctx context.Context, pos []string, batch int) error {
	q, err := queueArg(pos, false)
	if err != nil {
		return err
	}
	if batch < 1 || batch > client.MaxReceive {
		return usagef("--batch must be between 1 and %d", client.MaxReceive)
	}
	for ctx.Err() == nil {
		msgs, err := cli.c.Receive(ctx, q, client.ReceiveOptions{Max: batch, Wait: client.MaxWait})
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return err
		}
		receipts, err := cli.printMessages(msgs)
		if err != nil {
			return err
		}
		if len(receipts) > 0 {
			if err := cli.ack(ctx, q, receipts); err != nil {
				return err
			}
		}
	}
	return nil // interrupted: a normal end of tail
}

func (cli *queueCLI) send(ctx context.Context, pos []string, topic string, whole bool) error {
	q, err := queueArg(pos, false)
	if err != nil {
		return err
	}
	p := &client.Producer{Client: cli.c, Queue: q}
	var msgs []client.NewMessage
	total := 0
	flush := func() error {
		if len(msgs) == 0 {
			return nil
		}
		ids, err := p.Send(ctx, msgs)
		total += len(ids)
		msgs = msgs[:0]
		return err
	}
	if whole {
		b, err := io.ReadAll(cli.stdin)
		if err != nil {
			return fmt.Errorf("read stdin: %w", err)
		}
		msgs = append(msgs, client.NewMessage{Topic: topic, Payload: b})
	} else {
		sc := bufio.NewScanner(cli.stdin)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			line := strings.TrimSuffix(sc.Text(), "\r")
			msgs = append(msgs, client.NewMessage{Topic: topic, Payload: []byte(line)})
			if len(msgs) == client.MaxBatch {
				if err := flush(); err != nil {
					return fmt.Errorf("after %d messages sent: %w", total, err)
				}
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("read stdin after %d messages sent: %w", total, err)
		}
	}
	if err := flush(); err != nil {
		return fmt.Errorf("after %d messages sent: %w", total, err)
	}
	fmt.Fprintf(cli.stdout, "sent %d messages to %s\n", total, q)
	return nil
}

func (cli *queueCLI) dead(ctx context.Context, pos []string, maxN int) error {
	q, err := queueArg(pos, false)
	if err != nil {
		return err
	}
	if maxN < 1 || maxN > 1000 {
		return usagef("--max must be between 1 and 1000")
	}
	dls, err := cli.c.Dead(ctx, q, maxN)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(cli.stdout)
	for _, d := range dls {
		p := printed{ID: d.ID, Attempts: d.Attempts, Reason: d.Reason, EnqueuedAt: d.EnqueuedAt, Topic: d.Topic,
			ClientID: d.ClientID, QoS: d.QoS, Properties: d.Properties}
		setPayload(&p, d.Payload)
		if err := enc.Encode(p); err != nil {
			return err
		}
	}
	return nil
}

func (cli *queueCLI) redrive(ctx context.Context, pos []string) error {
	q, err := queueArg(pos, true)
	if err != nil {
		return err
	}
	n, err := cli.c.Redrive(ctx, q, pos[1:])
	if err != nil {
		return err
	}
	fmt.Fprintf(cli.stdout, "redrove %d messages into %s\n", n, q)
	return nil
}

func (cli *queueCLI) purge(ctx context.Context, pos []string, yes bool) error {
	q, err := queueArg(pos, false)
	if err != nil {
		return err
	}
	if !yes {
		return usagef("purge deletes every message of %s: add --yes", q)
	}
	n, err := cli.c.Purge(ctx, q)
	if err != nil {
		return err
	}
	fmt.Fprintf(cli.stdout, "purged %d messages from %s\n", n, q)
	return nil
}
