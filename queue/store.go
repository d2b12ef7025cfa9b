package queue

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/wal"
)

// store is one log of message records with its ack state: a queue's messages, or its dead letters.
// Its in-memory fields are guarded by the owning queue's mutex; the logs are safe on their own.
type store struct {
	dir  string
	log  *wal.Log // message records
	acks *wal.Log // ack-state events
	idx  deque

	head   uint64   // no live entry below head (advanced lazily)
	count  [6]int64 // entries per state (stAbsent not counted; stGone only grows)
	bytes  int64    // record bytes of live entries
	events int      // ack-log records appended since the last checkpoint
	// failed is set when a write to the store's logs failed: the index may then hold effects
	// (acks) that are not durable, so no more checkpoints are written from it.
	failed bool
}

func isLive(st uint8) bool { return st >= stReady && st <= stDying }

// set changes the state of e, keeping the counts.
func (s *store) set(e *entry, st uint8) {
	if e.state != stAbsent {
		s.count[e.state]--
	}
	if st != stAbsent {
		s.count[st]++
	}
	switch was, is := isLive(e.state), isLive(st); {
	case was && !is:
		s.bytes -= int64(e.size)
	case !was && is:
		s.bytes += int64(e.size)
	}
	e.state = st
}

// live is the number of live entries.
func (s *store) live() int64 {
	return s.count[stReady] + s.count[stLeased] + s.count[stDelayed] + s.count[stDying]
}

const (
	logDir         = "log"
	acksDir        = "acks"
	checkpointFile = "checkpoint"
	deadDir        = "dead"
)

// openStore opens (creating if needed) the store in dir and recovers its index from the checkpoint,
// the message log headers and the ack log. forceCP reports that recovery found ack state the logs do
// not back (a log lost its unsynced tail) and a checkpoint must be written before new appends.
func openStore(dir string, sync wal.SyncPolicy, logger zerolog.Logger, walFS func(string) wal.FS) (s *store, forceCP bool, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, false, fmt.Errorf("create %s: %w", dir, err)
	}
	cpPath := filepath.Join(dir, checkpointFile)
	var cp *checkpoint
	switch b, err := os.ReadFile(cpPath); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, false, fmt.Errorf("read checkpoint: %w", err)
	default:
		if cp, err = decodeCheckpoint(b); err != nil {
			return nil, false, &CorruptError{Path: cpPath, Reason: err.Error()}
		}
	}
	s = &store{dir: dir}
	openLog := func(name string) (*wal.Log, error) {
		p := filepath.Join(dir, name)
		o := wal.Options{Sync: sync, Logger: logger.With().Str("log", p).Logger()}
		if walFS != nil {
			o.FS = walFS(p)
		}
		l, err := wal.Open(p, o)
		if err != nil {
			var ce *wal.CorruptionError
			if errors.As(err, &ce) {
				return nil, &CorruptError{Path: filepath.Join(p, ce.Segment), Index: ce.Index, Reason: "damaged record in the middle of the log", Err: err}
			}
			return nil, fmt.Errorf("open %s: %w", p, err)
		}
		return l, nil
	}
	if s.log, err = openLog(logDir); err != nil {
		return nil, false, err
	}
	if s.acks, err = openLog(acksDir); err != nil {
		_ = s.log.Close()
		return nil, false, err
	}
	if forceCP, err = s.recover(cp); err != nil {
		_ = s.log.Close()
		_ = s.acks.Close()
		return nil, false, err
	}
	return s, forceCP, nil
}

// recover rebuilds the index. Ack state for indexes the message log does not have (its unsynced
// tail was lost) is ignored, and forceCP is set so that it is overwritten before those indexes are
// reused.
func (s *store) recover(cp *checkpoint) (forceCP bool, err error) {
	last := s.log.LastIndex()
	start := s.log.FirstIndex()
	if start == 0 {
		start = last + 1 // empty log: the next append gets last+1 (1 for a new log)
	}
	if cp != nil && cp.base > start {
		start = cp.base
	}
	if start > last+1 {
		forceCP = true
		start = last + 1
	}
	s.idx = newDeque(start)
	s.head = start
	if last >= start {
		s.idx.extend(last)
		err := s.log.Scan(start, func(i uint64, rec []byte) error {
			h, err := decodeHeader(rec)
			if err != nil {
				return &CorruptError{Path: filepath.Join(s.dir, logDir), Index: i, Reason: "message record: " + err.Error()}
			}
			e := s.idx.at(i)
			*e = entry{enq: h.enqueued, size: uint32(len(rec))}
			s.set(e, stReady)
			return nil
		})
		if err != nil {
			var ce *CorruptError
			if errors.As(err, &ce) {
				return false, err
			}
			return false, &CorruptError{Path: filepath.Join(s.dir, logDir), Reason: "scan", Err: err}
		}
	}
	from := uint64(1)
	if cp != nil {
		if cp.end > last+1 {
			forceCP = true
		}
		for _, g := range cp.gone {
			for i := g[0]; i < g[0]+g[1]; i++ {
				s.apply(event{kind: evGone, index: i})
			}
		}
		for _, st := range cp.state {
			s.applyState(st.index, st.state, st.attempt, st.vis)
		}
		from = cp.acks + 1
	}
	if f := s.acks.FirstIndex(); f > from {
		return false, &CorruptError{Path: filepath.Join(s.dir, checkpointFile),
			Reason: fmt.Sprintf("ack log starts at %d but the checkpoint covers only up to %d (checkpoint missing or old)", f, from-1)}
	}
	if al := s.acks.LastIndex(); cp != nil && al < cp.acks {
		forceCP = true // the ack log lost its tail: new events would get indexes the checkpoint claims
	}
	err = s.acks.Scan(from, func(i uint64, rec []byte) error {
		derr := decodeEvents(rec, func(e event) {
			if s.apply(e) {
				forceCP = true
			}
		})
		if derr != nil {
			return &CorruptError{Path: filepath.Join(s.dir, acksDir), Index: i, Reason: "ack-state record: " + derr.Error()}
		}
		return nil
	})
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) {
			return false, err
		}
		return false, &CorruptError{Path: filepath.Join(s.dir, acksDir), Reason: "scan", Err: err}
	}
	s.advanceHead()
	return forceCP, nil
}

// apply replays one event; beyond reports that it names an index past the end of the log.
func (s *store) apply(e event) (beyond bool) {
	switch e.kind {
	case evGone:
		return s.goneAt(e.index)
	case evRange:
		for i := e.index; i < e.index+e.attempt && i >= e.index; i++ {
			if s.goneAt(i) {
				return true
			}
		}
		return false
	case evLease:
		return s.applyState(e.index, stLeased, uint32(min(e.attempt, 1<<32-1)), e.vis)
	case evDelay:
		return s.applyState(e.index, stDelayed, uint32(min(e.attempt, 1<<32-1)), e.vis)
	}
	return false
}

func (s *store) goneAt(i uint64) (beyond bool) {
	if !s.idx.has(i) {
		return i >= s.idx.end
	}
	if e := s.idx.at(i); isLive(e.state) {
		s.set(e, stGone)
	}
	return false
}

func (s *store) applyState(i uint64, st uint8, attempt uint32, vis int64) (beyond bool) {
	if !s.idx.has(i) {
		return i >= s.idx.end
	}
	e := s.idx.at(i)
	if e.state == stGone || e.state == stAbsent || attempt < uint32(e.attempt) {
		return false
	}
	e.attempt, e.vis = uint16(min(attempt, maxAttempts)), vis
	s.set(e, st)
	return false
}

// advanceHead moves head past gone entries.
func (s *store) advanceHead() {
	if s.head < s.idx.start {
		s.head = s.idx.start
	}
	for s.head < s.idx.end && s.idx.at(s.head).state == stGone {
		s.head++
	}
}

// fill records the entries of appended records [first, first+len(sizes)).
func (s *store) fill(first uint64, sizes []uint32, enq []int64) {
	if first < s.idx.start { // cannot happen: appends get indexes past everything recovered
		panic(fmt.Sprintf("queue: append got index %d below the index start %d", first, s.idx.start))
	}
	s.idx.extend(first + uint64(len(sizes)) - 1)
	for k, sz := range sizes {
		e := s.idx.at(first + uint64(k))
		*e = entry{enq: enq[k], size: sz}
		s.set(e, stReady)
	}
}

// snapshot encodes the ack state as a checkpoint. Called with the queue lock held; now is used for
// entries that are waiting for the dead-letter queue (recorded as leases that expired at now, so
// recovery dead-letters them again).
func (s *store) snapshot(now int64) (data []byte, acksIndex uint64) {
	s.advanceHead()
	acksIndex = s.acks.LastIndex()
	w := newCPWriter(s.head)
	for i := s.head; i < s.idx.end; i++ {
		e := s.idx.at(i)
		switch e.state {
		case stGone:
			w.gone(i)
		case stLeased, stDelayed:
			w.state(i, e.state, uint32(e.attempt), e.vis)
		case stDying:
			w.state(i, stLeased, uint32(e.attempt), now)
		case stReady:
			if e.attempt > 0 {
				w.state(i, stReady, uint32(e.attempt), 0)
			}
		}
	}
	return w.finish(acksIndex, s.head, s.idx.end), acksIndex
}

// writeCheckpoint makes data the store's checkpoint durably (temp file, fsync, rename, directory
// fsync), then drops the ack-log records it covers and the message-log segments below head.
func (s *store) writeCheckpoint(data []byte, acksIndex, head uint64) error {
	p := filepath.Join(s.dir, checkpointFile)
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write checkpoint %s: %w", p, err)
	}
	if acksIndex > 0 {
		if err := s.acks.TruncateFront(acksIndex + 1); err != nil {
			return fmt.Errorf("truncate ack log: %w", err)
		}
	}
	return s.reclaim(head)
}

// reclaim drops message-log segments wholly below head.
func (s *store) reclaim(head uint64) error {
	if f := s.log.FirstIndex(); f == 0 || f >= head {
		return nil
	}
	if err := s.log.TruncateFront(head); err != nil {
		return fmt.Errorf("truncate message log: %w", err)
	}
	return nil
}

func (s *store) close() error {
	err := s.log.Close()
	if aerr := s.acks.Close(); err == nil {
		err = aerr
	}
	return err
}

func syncDir(dir string) error {
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
