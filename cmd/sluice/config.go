package main

import (
	"context"
	"io"

	"github.com/sluicemq/sluice/configs"
)

const configUsage = `Usage: sluice config

Prints the embedded default configuration, which is also the reference of every key with its default
and its meaning. Start a configuration file from it:

  sluice config > sluice.yaml && sluice serve --config sluice.yaml --check`

func cmdConfig(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("config", configUsage)
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageFail(fs, stderr, "unexpected argument %q.", fs.Arg(0))
	}
	if _, err := stdout.Write(configs.Embedded()); err != nil {
		return 1
	}
	return 0
}
