//go:build !unix

package queue

import (
	"fmt"
	"os"
	"path/filepath"
)

const lockFile = ".lock" // queue names cannot start with a dot

// lockDir creates dir/.lock exclusively on systems without flock; a stale file after a crash must be
// removed by hand (the error says so).
func lockDir(dir string) (*os.File, error) {
	p := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if os.IsExist(err) {
			return nil, fmt.Errorf("%w: %s (remove %s if no sluice is running)", ErrLocked, dir, p)
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrNotWritable, dir, err)
	}
	return f, nil
}

// unlockDir releases the lock taken by lockDir.
func unlockDir(f *os.File) error {
	err := f.Close()
	if rerr := os.Remove(f.Name()); err == nil {
		err = rerr
	}
	return err
}
