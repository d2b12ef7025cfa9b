package wal

import (
	"io"
	"io/fs"
	"os"
)

// FS is the filesystem seam: every file operation this package does itself
// goes through it, so tests can fail, tear or corrupt them.
//
// What it covers: creating and locking the directory, listing it, reading
// segment files (Read, Scan, and the verification and repair of Open), the
// .broken copies, cutting a torn segment, renaming and removing segment
// files, the fsync of the tail segment that makes an append durable, and
// every directory fsync.
//
// What it does not cover: github.com/tidwall/wal writes segment files
// through package os itself, and fsyncs each full segment before it creates
// the next one (it is opened with NoSync, so it never decides durability
// otherwise). BeforeWrite is called before each group-commit batch is handed
// to tidwall/wal; returning an error there simulates a failed write (nothing
// is written, and the log fails exactly as it would after a failed write).
// Torn writes and bit rot are simulated by damaging the files directly
// between runs (see package waltest).
type FS interface {
	MkdirAll(dir string, perm fs.FileMode) error
	ReadDir(dir string) ([]fs.DirEntry, error)
	ReadFile(name string) ([]byte, error)
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	Truncate(name string, size int64) error
	Rename(oldpath, newpath string) error
	Remove(name string) error
	// SyncDir fsyncs a directory, making creations, renames and removals in it durable.
	SyncDir(dir string) error
	// Lock takes an exclusive lock on the file name (creating it), held
	// until the returned Closer is closed; ErrLocked if another holder has it.
	Lock(name string) (io.Closer, error)
	// BeforeWrite is called with the tail segment's path and the batch's size
	// in bytes before each write; an error fails the write.
	BeforeWrite(segment string, n int) error
}

// File is an open file as FS returns it.
type File interface {
	ReadAt(p []byte, off int64) (int, error)
	Write(p []byte) (int, error)
	Sync() error
	Close() error
}

// OSFS is the FS of the operating system; a nil Options.FS means OSFS{}.
// Tests embed it and override what they want to fail.
type OSFS struct{}

var _ FS = OSFS{}

func (OSFS) MkdirAll(dir string, perm fs.FileMode) error { return os.MkdirAll(dir, perm) }
func (OSFS) ReadDir(dir string) ([]fs.DirEntry, error)   { return os.ReadDir(dir) }
func (OSFS) ReadFile(name string) ([]byte, error)        { return os.ReadFile(name) }
func (OSFS) Truncate(name string, size int64) error      { return os.Truncate(name, size) }
func (OSFS) Rename(oldpath, newpath string) error        { return os.Rename(oldpath, newpath) }
func (OSFS) Remove(name string) error                    { return os.Remove(name) }
func (OSFS) BeforeWrite(segment string, n int) error     { return nil }

func (OSFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err // a nil *os.File must not become a non-nil File
	}
	return f, nil
}

func (OSFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
