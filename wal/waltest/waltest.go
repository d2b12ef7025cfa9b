// Package waltest holds test helpers for logs of package wal: a
// fault-injecting wal.FS, functions that damage segment files the way
// crashes and bad disks do, and a log sink safe for concurrent writers.
package waltest

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"

	"github.com/sluicemq/sluice/wal"
)

// ErrInjected is the default error FaultFS injects.
var ErrInjected = errors.New("waltest: injected fault")

// FaultFS is a wal.FS over the OS that fails what it is told to fail. The
// zero value injects nothing. It is safe for concurrent use.
type FaultFS struct {
	wal.OSFS

	mu         sync.Mutex
	writeErr   error
	syncErr    error
	syncDirErr error
	syncOK     int               // file fsyncs that still succeed before syncErr applies
	syncDirOK  int               // directory fsyncs that still succeed before syncDirErr applies
	beforeSync func(name string) // called before each file fsync, outside mu
	writes     int
	syncs      int
	dirSyncs   int
}

var _ wal.FS = (*FaultFS)(nil)

// FailWrites makes every later BeforeWrite (that is, every batch write) fail
// with err; nil stops failing.
func (f *FaultFS) FailWrites(err error) { f.mu.Lock(); f.writeErr = err; f.mu.Unlock() }

// FailSyncs makes every later file fsync fail with err; nil stops failing.
func (f *FaultFS) FailSyncs(err error) { f.FailSyncsAfter(0, err) }

// FailSyncsAfter lets n more file fsyncs succeed, then fails every later one
// with err.
func (f *FaultFS) FailSyncsAfter(n int, err error) {
	f.mu.Lock()
	f.syncOK, f.syncErr = n, err
	f.mu.Unlock()
}

// FailDirSyncs makes every later directory fsync fail with err; nil stops failing.
func (f *FaultFS) FailDirSyncs(err error) { f.FailDirSyncsAfter(0, err) }

// FailDirSyncsAfter lets n more directory fsyncs succeed, then fails every
// later one with err.
func (f *FaultFS) FailDirSyncsAfter(n int, err error) {
	f.mu.Lock()
	f.syncDirOK, f.syncDirErr = n, err
	f.mu.Unlock()
}

// BeforeSync sets a function called before each file fsync (it may block).
func (f *FaultFS) BeforeSync(fn func(name string)) { f.mu.Lock(); f.beforeSync = fn; f.mu.Unlock() }

// Counts returns how many batch writes, file fsyncs and directory fsyncs
// were attempted.
func (f *FaultFS) Counts() (writes, syncs, dirSyncs int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes, f.syncs, f.dirSyncs
}

func (f *FaultFS) BeforeWrite(segment string, n int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	return f.writeErr
}

func (f *FaultFS) SyncDir(dir string) error {
	f.mu.Lock()
	f.dirSyncs++
	err := f.syncDirErr
	if err != nil && f.syncDirOK > 0 {
		f.syncDirOK--
		err = nil
	}
	f.mu.Unlock()
	if err != nil {
		return err
	}
	return f.OSFS.SyncDir(dir)
}

func (f *FaultFS) OpenFile(name string, flag int, perm fs.FileMode) (wal.File, error) {
	file, err := f.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f, name: name}, nil
}

type faultFile struct {
	wal.File
	fs   *FaultFS
	name string
}

func (ff *faultFile) Sync() error {
	ff.fs.mu.Lock()
	ff.fs.syncs++
	err, before := ff.fs.syncErr, ff.fs.beforeSync
	if err != nil && ff.fs.syncOK > 0 {
		ff.fs.syncOK--
		err = nil
	}
	ff.fs.mu.Unlock()
	if before != nil {
		before(ff.name)
	}
	if err != nil {
		return err
	}
	return ff.File.Sync()
}

// Segments returns the paths of the segment files in dir, in index order
// (.broken copies and other files excluded).
func Segments(tb testing.TB, dir string) []string {
	tb.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatalf("list %s: %v", dir, err)
	}
	var out []string
	for _, e := range ents {
		if len(e.Name()) == 20 && !e.IsDir() {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out
}

// Broken returns the .broken files in dir.
func Broken(tb testing.TB, dir string) []string {
	tb.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.broken"))
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// Truncate cuts the file at path to size bytes (a torn write).
func Truncate(tb testing.TB, path string, size int64) {
	tb.Helper()
	if err := os.Truncate(path, size); err != nil {
		tb.Fatalf("truncate %s: %v", path, err)
	}
}

// AppendZeros appends n zero bytes to the file at path (a tail whose size
// reached the disk before its data did).
func AppendZeros(tb testing.TB, path string, n int) {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, n)); err != nil {
		tb.Fatal(err)
	}
}

// FlipBit flips bit (0..7) of the byte at off in the file at path (bit rot).
func FlipBit(tb testing.TB, path string, off int64, bit uint) {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		tb.Fatalf("read %s at %d: %v", path, off, err)
	}
	b[0] ^= 1 << (bit % 8)
	if _, err := f.WriteAt(b, off); err != nil {
		tb.Fatal(err)
	}
}

// Size returns the size of the file at path.
func Size(tb testing.TB, path string) int64 {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Size()
}

// WriteAt overwrites the file at path with b at off.
func WriteAt(tb testing.TB, path string, off int64, b []byte) {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		tb.Fatal(err)
	}
}

// LogBuffer collects what loggers write from several goroutines (a zerolog sink); the zero value
// is ready to use.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
