package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

const versionUsage = `Usage: sluice version

Prints the version, the Go version and platform, and the source revision when known.`

func cmdVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version", versionUsage)
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return usageFail(fs, stderr, "unexpected argument %q.", fs.Arg(0))
	}
	fmt.Fprintln(stdout, versionString())
	return 0
}

// versionString is "sluice VERSION (GOVERSION OS/ARCH[, rev REVISION[-dirty]])".
func versionString() string {
	s := fmt.Sprintf("sluice %s (%s %s/%s", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, kv := range bi.Settings {
			switch {
			case kv.Key == "vcs.revision" && len(kv.Value) >= 12:
				rev = kv.Value[:12]
			case kv.Key == "vcs.modified" && kv.Value == "true":
				dirty = "-dirty"
			}
		}
		if rev != "" {
			s += ", rev " + rev + dirty
		}
	}
	return s + ")"
}
