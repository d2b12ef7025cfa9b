//go:build unix

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// lockDataDir takes an exclusive lock on dir/sluice.lock so that two processes never share a data
// directory; release drops it. A directory locked by another process is an error naming it.
func lockDataDir(dir string) (release func(), err error) {
	p := filepath.Join(dir, "sluice.lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data_dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data_dir %s is in use by another sluice process (it holds %s)", dir, p)
		}
		return nil, fmt.Errorf("lock data_dir: %s: %w", p, err)
	}
	// The pid is for people looking at the file; the lock is what counts.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Close() }, nil
}
