package wal

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// maxOpenReaders is how many segment files Read keeps open per log (more
// are opened while that many are in use).
const maxOpenReaders = 8

// readers caches open segment files for Read, least recently used first out.
type readers struct {
	mu     sync.Mutex
	open   map[uint64]*segReader // by segment start index
	tick   uint64
	closed bool
}

type segReader struct {
	f    File
	refs int    // Reads using f
	used uint64 // tick of the last use
	gone bool   // out of the cache: close when refs drops to 0
}

// acquire returns the open file of the segment starting at start; release it.
func (l *Log) acquire(start uint64) (*segReader, error) {
	rd := &l.rd
	rd.mu.Lock()
	if rd.closed {
		rd.mu.Unlock()
		return nil, ErrClosed
	}
	rd.tick++
	if r := rd.open[start]; r != nil {
		r.refs++
		r.used = rd.tick
		rd.mu.Unlock()
		return r, nil
	}
	rd.mu.Unlock()

	f, err := l.fs.OpenFile(filepath.Join(l.dir, segmentName(start)), os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound // removed by TruncateFront meanwhile
	}
	if err != nil {
		return nil, fmt.Errorf("wal: open segment %s: %w", segmentName(start), err)
	}
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if rd.closed {
		_ = f.Close()
		return nil, ErrClosed
	}
	if r := rd.open[start]; r != nil { // opened by another Read meanwhile
		_ = f.Close()
		r.refs++
		return r, nil
	}
	r := &segReader{f: f, refs: 1, used: rd.tick}
	rd.open[start] = r
	for len(rd.open) > maxOpenReaders {
		var lru uint64
		var victim *segReader
		for s, o := range rd.open {
			if o.refs == 0 && (victim == nil || o.used < victim.used) {
				lru, victim = s, o
			}
		}
		if victim == nil {
			break // all in use
		}
		delete(rd.open, lru)
		_ = victim.f.Close()
	}
	return r, nil
}

func (l *Log) release(r *segReader) {
	l.rd.mu.Lock()
	r.refs--
	closeIt := r.refs == 0 && r.gone
	l.rd.mu.Unlock()
	if closeIt {
		_ = r.f.Close()
	}
}

// forget drops the segment starting at start from the cache (TruncateFront
// removed it).
func (l *Log) forget(start uint64) {
	rd := &l.rd
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if r := rd.open[start]; r != nil {
		delete(rd.open, start)
		l.drop(r)
	}
}

// closeReaders closes every cached file (Close); Reads in flight close theirs.
func (l *Log) closeReaders() {
	rd := &l.rd
	rd.mu.Lock()
	defer rd.mu.Unlock()
	rd.closed = true
	for s, r := range rd.open {
		delete(rd.open, s)
		l.drop(r)
	}
}

// drop closes r now or, if a Read uses it, when that Read releases it.
func (l *Log) drop(r *segReader) {
	if r.refs == 0 {
		_ = r.f.Close()
		return
	}
	r.gone = true
}
