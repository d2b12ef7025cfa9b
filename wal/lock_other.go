//go:build !unix

package wal

import (
	"io"
	"os"
)

// Lock only creates name: this platform has no flock(2), so two processes
// opening the same log are not detected.
func (OSFS) Lock(name string) (io.Closer, error) {
	return os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o640)
}
