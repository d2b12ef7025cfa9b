package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// version is set at build time: go build -ldflags '-X main.version=v1.2.3' (see the Makefile).
var version = "dev"

// command is one subcommand: `sluice NAME ...`.
type command struct {
	name    string
	summary string // one line for `sluice help`
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// commands is the table of subcommands, in the order `sluice help` lists them. A subcommand adds one
// line here.
func commands() []command {
	return []command{
		{"serve", "run the MQTT broker with its bridge, queues and admin HTTP listener", cmdServe},
		{"queue", "use the queue HTTP API: ls, stats, receive, tail, send, dead, redrive, purge", cmdQueue},
		{"config", "print the default configuration: the reference of every key", cmdConfig},
		{"devices", "simulate a fleet of MQTT devices publishing telemetry", cmdDevices},
		{"loadtest", "load-test any MQTT broker: throughput, latency percentiles, loss; compare two", cmdLoadtest},
		{"passwd", "read a password on stdin and print its bcrypt hash for mqtt.users", cmdPasswd},
		{"version", "print the version and build information", cmdVersion},
	}
}

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches args (without the program name) to a subcommand and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "sluice: no command given.")
		mainUsage(stderr)
		return 2
	}
	name, rest := args[0], args[1:]
	switch name {
	case "-h", "-help", "--help":
		mainUsage(stdout)
		return 0
	case "help":
		if len(rest) == 0 {
			mainUsage(stdout)
			return 0
		}
		name, rest = rest[0], []string{"--help"}
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(ctx, rest, stdout, stderr)
		}
	}
	if strings.HasPrefix(name, "-") {
		fmt.Fprintf(stderr, "sluice: flag %s comes before a command; flags go after it.\n", name)
	} else {
		fmt.Fprintf(stderr, "sluice: unknown command %q.\n", name)
	}
	mainUsage(stderr)
	return 2
}

func mainUsage(w io.Writer) {
	fmt.Fprint(w, "Usage: sluice <command> [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "  help      show this help, or a command's (sluice help serve)\n\n"+
		"Every command takes -h or --help. Sluice is an MQTT broker with durable work queues;\n"+
		"`sluice serve` with no flags runs it on 127.0.0.1 with the embedded default configuration.\n")
}

// newFlagSet returns the flag set of `sluice NAME`. usage is the text printed before the flags: a
// "Usage: ..." line and a description.
func newFlagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet("sluice "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // parseFlags prints, so that --help goes to stdout and errors to stderr
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprint(out, strings.TrimRight(usage, "\n")+"\n")
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprint(out, "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// printUsage writes fs's usage to w.
func printUsage(fs *flag.FlagSet, w io.Writer) {
	fs.SetOutput(w)
	fs.Usage()
	fs.SetOutput(io.Discard)
}

// parseFlags parses args into fs. ok is false when the command must end with code: 0 after printing the
// help to stdout for -h/--help, 2 after printing one sentence and the usage to stderr for a bad flag.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, ok bool) {
	err := fs.Parse(args)
	switch {
	case err == nil:
		return 0, true
	case errors.Is(err, flag.ErrHelp):
		printUsage(fs, stdout)
		return 0, false
	default:
		fmt.Fprintf(stderr, "%s: %v.\n", fs.Name(), err)
		printUsage(fs, stderr)
		return 2, false
	}
}

// usageFail prints one sentence and fs's usage on stderr and returns exit code 2.
func usageFail(fs *flag.FlagSet, stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "%s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	printUsage(fs, stderr)
	return 2
}
