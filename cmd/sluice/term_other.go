//go:build !linux

package main

import (
	"bufio"
	"bytes"
	"os"

	"github.com/mattn/go-isatty"
)

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool { return isatty.IsTerminal(f.Fd()) }

// readSecretLine reads one line from f. Echo stays on: only Linux builds turn it off.
func readSecretLine(f *os.File) ([]byte, error) {
	line, err := bufio.NewReader(f).ReadBytes('\n')
	if err != nil && len(line) == 0 {
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}
