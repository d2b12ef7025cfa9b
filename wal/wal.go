package wal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	tidwall "github.com/tidwall/wal"
)

// SyncPolicy says when Append returns relative to fsync.
type SyncPolicy string

const (
	// SyncAlways: Append returns after the fsync of its batch, shared by all
	// waiters of the batch. The default.
	SyncAlways SyncPolicy = "always"
	// SyncInterval: Append returns after the write; an fsync follows within
	// Options.SyncInterval.
	SyncInterval SyncPolicy = "interval"
	// SyncNone: Append returns after the write; fsync happens only when a
	// segment is full and on Close.
	SyncNone SyncPolicy = "none"
)

// Defaults applied by Open to zero Options fields.
const (
	DefaultSegmentSize  = 4 << 20
	DefaultSyncInterval = 10 * time.Millisecond
	DefaultMaxBatch     = 4096

	// MaxSegmentSize bounds Options.SegmentSize (entry offsets are 32-bit).
	MaxSegmentSize = 1 << 30
	// MaxAppendSize bounds the bytes of one Append's records.
	MaxAppendSize = 1 << 30
	// maxBatchBytes stops a group commit from taking more requests.
	maxBatchBytes = 64 << 20
)

// Options configure a Log. The zero value is valid.
type Options struct {
	// SegmentSize is the target size of a segment file in bytes; 0 means
	// DefaultSegmentSize. tidwall/wal holds the whole tail segment in memory
	// (and up to two older ones as a read cache), hence a smaller default
	// than tidwall's 20 MB.
	SegmentSize int
	// Sync is the sync policy; "" means SyncAlways.
	Sync SyncPolicy
	// SyncInterval bounds the time between a write and its fsync under
	// SyncInterval; 0 means DefaultSyncInterval.
	SyncInterval time.Duration
	// MaxBatch is the most records one group commit takes (a single larger
	// Append is never split); 0 means DefaultMaxBatch.
	MaxBatch int
	// Repair makes Open cut the log at corruption found in the middle of the
	// log too, instead of returning a *CorruptionError. What is cut is kept in
	// .broken files and logged. A torn or zero-filled tail is always repaired.
	Repair bool
	// FS is the filesystem seam; nil means OSFS{}.
	FS FS
	// Logger receives repair and failure reports; the zero value discards them.
	Logger zerolog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.SegmentSize < 0 {
		return o, fmt.Errorf("%w: segment size %d is negative", ErrInvalidOptions, o.SegmentSize)
	}
	if o.SegmentSize == 0 {
		o.SegmentSize = DefaultSegmentSize
	}
	if o.SegmentSize > MaxSegmentSize {
		return o, fmt.Errorf("%w: segment size %d is over the %d limit", ErrInvalidOptions, o.SegmentSize, MaxSegmentSize)
	}
	switch o.Sync {
	case "":
		o.Sync = SyncAlways
	case SyncAlways, SyncInterval, SyncNone:
	default:
		return o, fmt.Errorf("%w: unknown sync policy %q (want always, interval or none)", ErrInvalidOptions, o.Sync)
	}
	if o.SyncInterval < 0 {
		return o, fmt.Errorf("%w: sync interval %v is negative", ErrInvalidOptions, o.SyncInterval)
	}
	if o.SyncInterval == 0 {
		o.SyncInterval = DefaultSyncInterval
	}
	if o.MaxBatch < 0 {
		return o, fmt.Errorf("%w: max batch %d is negative", ErrInvalidOptions, o.MaxBatch)
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.FS == nil {
		o.FS = OSFS{}
	}
	return o, nil
}

// Log is a crash-safe write-ahead log of non-empty records with consecutive
// indexes. All methods are safe for concurrent use.
type Log struct {
	dir  string
	opts Options
	fs   FS
	log  zerolog.Logger
	tw   *tidwall.Log // used only by the writer (and Open)
	lock io.Closer    // the directory's LOCK file

	reqs chan *appendReq // to the writer
	ops  chan func()     // run on the writer between batches (tests inspect its state)
	quit chan struct{}   // closed by Close
	done chan struct{}   // closed by the writer when it has stopped

	closeMu  sync.RWMutex // held shared while sending to the writer, exclusively to close
	closed   bool         // guarded by closeMu
	isClosed atomic.Bool

	failed  atomic.Pointer[error] // set once by the writer; wraps ErrFailed
	durable atomic.Uint64         // durable watermark: readers see records ≤ durable
	first   atomic.Uint64         // first index of the first segment

	batches, records atomic.Uint64 // group commits done, records in them
	fsyncs, fsyncNs  atomic.Uint64 // fsyncs of the tail segment by the writer, and their total time
	reqPool          sync.Pool     // of *appendReq

	segMu sync.RWMutex
	segs  []uint64   // first index of every segment, ascending; guarded by segMu
	ends  [][]uint32 // per segment, the end offset of every entry; guarded by segMu

	rd readers // open segment files for Read

	// truncMu is held exclusively while TruncateFront removes segment
	// files, and shared while Scan reads one.
	truncMu sync.RWMutex
	// removed counts segments TruncateFront removed that tidwall/wal still
	// lists in memory; past reopenAfter the writer reopens tidwall/wal to
	// forget them. Guarded by truncMu.
	removed, reopenAfter int

	w writer // owned by the writer goroutine
}

// writer is the state of the writer goroutine.
type writer struct {
	written  uint64 // last index handed to tidwall/wal
	tailSize int    // bytes in the tail segment, as tidwall/wal counts them
	tailPath string // path of the tail segment
	syncF    File   // the tail segment, opened to fsync it
	dirty    bool   // written but not fsynced
	batch    tidwall.Batch
	pending  []*appendReq
	rolls    []uint64   // first indexes of the segments the batch creates
	ends     []uint32   // entry ends the batch adds to the current tail
	rollEnds [][]uint32 // entry ends in each segment the batch creates
	lastReqs int        // requests in the last batch
	timer    *time.Timer
	timerOn  bool
	closeErr error
	tail     tailBuf // sizes tidwall/wal's in-memory tail segment
}

// appendReq is one Append waiting for the writer. Requests are recycled
// through Log.reqPool unless their waiter gave up (ctx ended): the writer may
// then still use it.
type appendReq struct {
	frames      [][]byte
	buf         []byte // the frames, back to back
	first, last uint64
	err         error
	done        chan struct{}                       // capacity 1: the writer never blocks on an abandoned waiter
	cb          func(first, last uint64, err error) // AppendAsync's: called instead of done
}

// Group-commit batching: see Log.commit.
const (
	yieldBatch = 256
	maxYields  = 8
)

// maxPooledBuf bounds the frame buffer a recycled request keeps.
const maxPooledBuf = 64 << 10

// Open opens the log in dir, creating dir if missing. It verifies every
// segment; a torn or zero-filled tail is cut to the last good record (a
// .broken copy of the damaged segment is kept and the cut is logged).
// Corruption in the middle of the log returns a *CorruptionError naming the
// segment and index, unless opts.Repair cuts there too. Invalid options
// return an error wrapping ErrInvalidOptions.
func Open(dir string, opts Options) (*Log, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, fmt.Errorf("%w: empty directory name", ErrInvalidOptions)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	l := &Log{
		dir:  dir,
		opts: opts,
		fs:   opts.FS,
		log:  opts.Logger.With().Str("component", "wal").Str("dir", dir).Logger(),
		reqs: make(chan *appendReq, 1024),

		reopenAfter: 1024,
		ops:         make(chan func()),
		quit:        make(chan struct{}),
		done:        make(chan struct{}),
	}
	if err := l.fs.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("wal: create %s: %w", dir, err)
	}
	if err := l.fs.SyncDir(filepath.Dir(dir)); err != nil {
		return nil, fmt.Errorf("wal: sync parent of %s: %w", dir, err)
	}
	l.lock, err = l.fs.Lock(filepath.Join(dir, lockName))
	if err != nil {
		if errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, dir)
		}
		return nil, fmt.Errorf("wal: lock %s: %w", dir, err)
	}
	began := time.Now()
	if err := l.openLocked(); err != nil {
		_ = l.lock.Close()
		return nil, err
	}
	l.log.Debug().Uint64("first_index", l.FirstIndex()).Uint64("last_index", l.LastIndex()).
		Int("segments", len(l.segs)).Dur("took", time.Since(began)).Msg("opened")
	go l.run()
	return l, nil
}

// lockName is the lock file in a log's directory (tidwall/wal ignores files
// whose names are not 20 digits long).
const lockName = "LOCK"

func (l *Log) openLocked() error {
	rec, err := l.recover()
	if err != nil {
		return err
	}
	l.tw, err = l.openTidwall()
	if err != nil {
		return err
	}
	if err := l.start(rec); err != nil {
		_ = l.tw.Close()
		return err
	}
	return nil
}

func (l *Log) openTidwall() (*tidwall.Log, error) {
	tw, err := tidwall.Open(l.dir, &tidwall.Options{
		NoSync:      true, // durability is ours: see Log.write
		SegmentSize: l.opts.SegmentSize,
		NoCopy:      true, // never read through: Read and Scan use the files
		AllowEmpty:  true, // TruncateFront may leave only an empty tail segment
		DirPerms:    0o750,
		FilePerms:   0o640,
	})
	if err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", l.dir, err)
	}
	return tw, nil
}

// start checks tidwall/wal agrees with recover and prepares the writer.
func (l *Log) start(rec recovered) error {
	if len(rec.segs) == 0 { // tidwall/wal created the first segment
		rec.segs = []uint64{1}
		rec.ends = [][]uint32{nil}
		rec.last = 0
	}
	first, err := l.tw.FirstIndex()
	if err != nil {
		return fmt.Errorf("wal: open: %w", err)
	}
	last, err := l.tw.LastIndex()
	if err != nil {
		return fmt.Errorf("wal: open: %w", err)
	}
	if first != rec.segs[0] || last != rec.last {
		return fmt.Errorf("wal: open: tidwall/wal sees indexes %d..%d, verification saw %d..%d", first, last, rec.segs[0], rec.last)
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("wal: sync dir: %w", err)
	}
	l.segs, l.ends = rec.segs, rec.ends
	l.rd.open = make(map[uint64]*segReader)
	l.first.Store(rec.segs[0])
	l.durable.Store(rec.last)
	l.w.written = rec.last
	l.w.tail = newTailBuf(l.opts.SegmentSize)
	l.w.tailSize = rec.tailSize
	l.w.tailPath = filepath.Join(l.dir, segmentName(rec.segs[len(rec.segs)-1]))
	l.w.syncF, err = l.fs.OpenFile(l.w.tailPath, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("wal: open tail segment: %w", err)
	}
	return nil
}

// Append writes recs as consecutive records and returns the first and last
// index given to them, once they are durable under the sync policy. Every
// record must be non-empty (ErrEmptyRecord). Each record is copied before
// Append returns or waits, so the caller may reuse its buffers at once.
// Cancelling ctx stops the wait, not the write: the records may still be
// stored. After a failed write or fsync every waiter of that batch, and every
// later call, gets an error wrapping ErrFailed.
func (l *Log) Append(ctx context.Context, recs ...[]byte) (first, last uint64, err error) {
	req, err := l.submit(ctx, recs, nil)
	if err != nil {
		return 0, 0, err
	}
	select {
	case <-req.done:
		first, last, err = req.first, req.last, req.err
		l.recycle(req)
		if err != nil {
			return 0, 0, err
		}
		return first, last, nil
	case <-ctx.Done():
		return 0, 0, ctx.Err() // req stays with the writer
	}
}

// AppendAsync is Append without the wait: it returns once recs are queued for a group commit
// (or with the error that refused them), and the writer calls done with what Append would have
// returned once they are durable under the sync policy, or failed. done runs on the log's writer
// goroutine, between commits: it must be quick and must not call into the log. It is called
// exactly once for every nil return, also when the log is closed meanwhile (the queued records
// are then still written).
func (l *Log) AppendAsync(recs [][]byte, done func(first, last uint64, err error)) error {
	_, err := l.submit(context.Background(), recs, done)
	return err
}

// submit checks recs, frames them into a request and hands it to the writer.
func (l *Log) submit(ctx context.Context, recs [][]byte, cb func(first, last uint64, err error)) (*appendReq, error) {
	if len(recs) == 0 {
		return nil, fmt.Errorf("%w: no records", ErrEmptyRecord)
	}
	var size int64 // int64: on 32-bit platforms an int could overflow
	for i, r := range recs {
		if len(r) == 0 {
			return nil, fmt.Errorf("%w: record %d of %d is empty", ErrEmptyRecord, i, len(recs))
		}
		if size += frameHeaderSize + int64(len(r)); size > MaxAppendSize {
			return nil, fmt.Errorf("%w: over %d bytes in one append", ErrTooLarge, MaxAppendSize)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	req, _ := l.reqPool.Get().(*appendReq)
	if req == nil {
		req = &appendReq{done: make(chan struct{}, 1)}
	}
	buf := slices.Grow(req.buf[:0], int(size))
	frames := req.frames[:0]
	for _, r := range recs {
		s := len(buf)
		buf = appendUnsealedFrame(buf, r)
		frames = append(frames, buf[s:len(buf):len(buf)])
	}
	req.buf, req.frames, req.cb = buf, frames, cb

	l.closeMu.RLock()
	defer l.closeMu.RUnlock()
	if l.closed {
		l.recycle(req)
		return nil, ErrClosed
	}
	if f := l.failed.Load(); f != nil {
		l.recycle(req)
		return nil, *f
	}
	select {
	case l.reqs <- req:
		return req, nil
	case <-ctx.Done():
		l.recycle(req)
		return nil, ctx.Err()
	}
}

// recycle puts a request whose waiter (or callback) has its answer back in the pool.
func (l *Log) recycle(req *appendReq) {
	if cap(req.buf) > maxPooledBuf {
		req.buf = nil
	}
	clear(req.frames)
	req.frames = req.frames[:0]
	req.err, req.cb = nil, nil
	l.reqPool.Put(req)
}

// Read returns a copy of the record at index. It returns ErrNotFound outside
// [FirstIndex, LastIndex], a *CorruptionError if the record fails its checks
// (damage that appeared after Open), and ErrClosed after Close. Reads run
// concurrently: each is one pread of the record's entry, located by an
// in-memory table of entry offsets (4 bytes a record).
func (l *Log) Read(index uint64) ([]byte, error) {
	var rec []byte
	err := l.readRun(index, 1, func(r []byte) { rec = r })
	return rec, err
}

// ReadRun returns copies of the n records from first on (first, first+1, …),
// reading the part of each segment they lie in with one pread: what n calls of
// Read would return, for fewer system calls. It returns ErrNotFound if any of
// them lies outside [FirstIndex, LastIndex] (none is returned then), and
// otherwise the errors of Read. The records share one buffer per segment.
func (l *Log) ReadRun(first uint64, n int) ([][]byte, error) {
	if n <= 0 {
		return nil, nil
	}
	recs := make([][]byte, 0, n)
	err := l.readRun(first, n, func(r []byte) { recs = append(recs, r) })
	if err != nil {
		return nil, err
	}
	return recs, nil
}

// readRun reads the records [first, first+n) and calls fn with each, in order.
func (l *Log) readRun(first uint64, n int, fn func(rec []byte)) error {
	if l.isClosed.Load() {
		return ErrClosed
	}
	last := first + uint64(n) - 1
	if first == 0 || last < first || first < l.first.Load() || last > l.durable.Load() {
		return ErrNotFound
	}
	var scratch [8]uint32 // entry ends of a short run, without allocating
	for index := first; index <= last; {
		// The part of the run in the segment holding index: its entries' offsets.
		l.segMu.RLock()
		k := sort.Search(len(l.segs), func(i int) bool { return l.segs[i] > index }) - 1
		if k < 0 || index-l.segs[k] >= uint64(len(l.ends[k])) {
			l.segMu.RUnlock()
			return ErrNotFound // truncated meanwhile
		}
		start, i := l.segs[k], index-l.segs[k]
		j := min(uint64(len(l.ends[k])), i+(last-index+1)) // one past the last entry read here
		var off uint32
		if i > 0 {
			off = l.ends[k][i-1]
		}
		ends := append(scratch[:0], l.ends[k][i:j]...)
		l.segMu.RUnlock()

		r, err := l.acquire(start)
		if err != nil {
			return err
		}
		buf := make([]byte, ends[len(ends)-1]-off)
		got, err := r.f.ReadAt(buf, int64(off))
		l.release(r)
		if got < len(buf) {
			if err == nil || errors.Is(err, io.EOF) {
				return &CorruptionError{Segment: segmentName(start), Index: index, Offset: int64(off), Reason: "segment ends before the record"}
			}
			if l.isClosed.Load() {
				return ErrClosed
			}
			return fmt.Errorf("wal: read %d from segment %s: %w", index, segmentName(start), err)
		}
		pos := off
		for _, end := range ends {
			entry := buf[pos-off : end-off : end-off]
			idx, payload, size, err := nextEntry(entry)
			reason := ""
			switch {
			case err != nil:
				reason = err.Error()
			case size != len(entry):
				reason = "entry length changed since it was written"
			case idx != index:
				reason = errWrongIndex.Error()
			}
			if reason != "" {
				return &CorruptionError{Segment: segmentName(start), Index: index, Offset: int64(pos), Reason: reason}
			}
			fn(payload) // buf is ours to give away
			index++
			pos = end
		}
	}
	return nil
}

// Scan calls fn for every record in [from, LastIndex] in order (from below
// FirstIndex starts at FirstIndex), with LastIndex taken when Scan starts.
// rec is valid only during fn and must not be modified. Scan stops at and
// returns the first error of fn or of a read: a *CorruptionError for a
// damaged record, ErrNotFound if a concurrent TruncateFront removed a
// segment not yet scanned.
//
// Scan reads whole segment files, one at a time, checking every record
// (about 5 million 256-byte records a second here); it holds no lock while
// fn runs, so fn may call any method of the log.
func (l *Log) Scan(from uint64, fn func(index uint64, rec []byte) error) error {
	if l.isClosed.Load() {
		return ErrClosed
	}
	if f := l.first.Load(); from < f {
		from = f
	}
	last := l.durable.Load()
	if from == 0 || from > last {
		return nil
	}
	l.segMu.RLock()
	segs := slices.Clone(l.segs)
	l.segMu.RUnlock()
	k := sort.Search(len(segs), func(i int) bool { return segs[i] > from }) - 1
	if k < 0 {
		return ErrNotFound // truncated since from was clamped
	}
	for i := k; i < len(segs) && segs[i] <= last; i++ {
		start, name := segs[i], segmentName(segs[i])
		end := last // last index to scan in this segment
		if i+1 < len(segs) && segs[i+1]-1 < end {
			end = segs[i+1] - 1
		}
		l.truncMu.RLock()
		data, err := l.fs.ReadFile(filepath.Join(l.dir, name))
		l.truncMu.RUnlock()
		if errors.Is(err, fs.ErrNotExist) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("wal: scan: read segment %s: %w", name, err)
		}
		var fnErr error
		res := scanSegment(data, start, func(index uint64, rec []byte, _ int) error {
			if index > end {
				return errScanDone
			}
			if index >= from {
				if fnErr = fn(index, rec); fnErr != nil {
					return fnErr
				}
			}
			return nil
		})
		switch {
		case fnErr != nil:
			return fnErr
		case res.err == errScanDone:
		case start+res.count <= end: // damage, or the file ends early, at or below end
			reason := "segment ends before the record"
			if res.err != nil {
				reason = res.err.Error()
			}
			return &CorruptionError{Segment: name, Index: start + res.count, Offset: int64(res.goodEnd), Reason: reason}
		}
	}
	return nil
}

// errScanDone stops scanSegment past the range Scan wants.
var errScanDone = errors.New("wal: scan done")

// FirstIndex returns the first readable index, or 0 if there is none.
func (l *Log) FirstIndex() uint64 {
	f, d := l.first.Load(), l.durable.Load()
	if f == 0 || f > d {
		return 0
	}
	return f
}

// LastIndex returns the durable watermark: the last index that is durable
// under the sync policy (0 if nothing was ever appended). It does not go
// back when TruncateFront empties the log.
func (l *Log) LastIndex() uint64 { return l.durable.Load() }

// Stats are counters of a log's writer since Open, for metrics: the mean group-commit batch is
// Records/Commits, the mean fsync latency FsyncTime/Fsyncs.
type Stats struct {
	Commits   uint64        // group commits (one WriteBatch each)
	Records   uint64        // records written by them
	Fsyncs    uint64        // fsyncs of the tail segment
	FsyncTime time.Duration // their total duration
}

// Stats returns the log's counters; safe for concurrent use, also after Close.
func (l *Log) Stats() Stats {
	return Stats{
		Commits:   l.batches.Load(),
		Records:   l.records.Load(),
		Fsyncs:    l.fsyncs.Load(),
		FsyncTime: time.Duration(l.fsyncNs.Load()),
	}
}

// TruncateFront drops records below index, by whole segments only: it removes
// the segment files that lie entirely below index (oldest first, then fsyncs
// the directory), so FirstIndex may stay below index. The tail segment is
// never removed. It is cheap: it neither copies data nor waits for the
// writer, and appends go on meanwhile. It returns ErrClosed after Close, and
// the error of a failed removal (the log stays usable; a crash before the
// directory fsync may bring removed segments back, never a gap).
func (l *Log) TruncateFront(index uint64) error {
	l.closeMu.RLock()
	defer l.closeMu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	l.truncMu.Lock()
	defer l.truncMu.Unlock()
	removed := false
	for {
		l.segMu.RLock()
		// segs[0] lies entirely below index if the next segment starts at or below index
		ok := len(l.segs) > 1 && l.segs[1] <= index
		var start, next uint64
		if ok {
			start, next = l.segs[0], l.segs[1]
		}
		l.segMu.RUnlock()
		if !ok {
			break
		}
		// readers stop asking for the segment before its file goes
		l.first.Store(next)
		if err := l.fs.Remove(filepath.Join(l.dir, segmentName(start))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			l.first.Store(start)
			return fmt.Errorf("wal: truncate front: remove segment %s: %w", segmentName(start), err)
		}
		l.segMu.Lock()
		l.segs = l.segs[1:]
		l.ends[0] = nil
		l.ends = l.ends[1:]
		l.segMu.Unlock()
		l.forget(start)
		removed = true
		l.removed++
	}
	if removed {
		if err := l.fs.SyncDir(l.dir); err != nil {
			return fmt.Errorf("wal: truncate front: sync dir: %w", err)
		}
	}
	if l.removed >= l.reopenAfter {
		errc := make(chan error, 1)
		l.ops <- func() { errc <- l.reopenTidwall() }
		if err := <-errc; err != nil {
			return err
		}
		l.removed = 0
	}
	return nil
}

// reopenTidwall runs on the writer: it reopens tidwall/wal so that it
// forgets the segments TruncateFront removed (it would list them, a few
// dozen bytes each, for as long as the log is open). It costs a read of the
// tail segment; appends wait (this is the writer), reads go on.
func (l *Log) reopenTidwall() error {
	if f := l.failed.Load(); f != nil {
		return *f
	}
	if err := l.tw.Close(); err != nil {
		return l.fail(fmt.Errorf("reopen tidwall/wal: %w", err))
	}
	tw, err := l.openTidwall()
	if err != nil {
		return l.fail(err)
	}
	l.tw = tw
	return nil
}

// Close stops the writer after it has written what was queued, fsyncs, and
// closes the files. Later calls, and every other method, return ErrClosed.
func (l *Log) Close() error {
	l.closeMu.Lock()
	if l.closed {
		l.closeMu.Unlock()
		return ErrClosed
	}
	l.closed = true
	l.isClosed.Store(true)
	l.closeMu.Unlock()
	close(l.quit)
	<-l.done
	return l.w.closeErr
}

// run is the writer goroutine: the only one that writes, fsyncs or truncates.
func (l *Log) run() {
	defer close(l.done)
	l.w.timer = time.NewTimer(time.Hour)
	l.w.timer.Stop()
	for {
		select {
		case r := <-l.reqs:
			l.commit(r)
		case op := <-l.ops:
			op()
		case <-l.w.timer.C:
			l.w.timerOn = false
			if l.w.dirty && l.failed.Load() == nil {
				if err := l.syncTail(); err != nil {
					l.fail(fmt.Errorf("fsync %s: %w", filepath.Base(l.w.tailPath), err))
					l.log.Error().Err(err).Msg("interval fsync failed; log refuses appends until reopened")
				}
				l.w.dirty = false
			}
		case <-l.quit:
			for {
				select {
				case r := <-l.reqs:
					l.commit(r)
					continue
				default:
				}
				break
			}
			l.shutdown()
			return
		}
	}
}

// commit is one group commit: it takes r and whatever else is queued (up to
// MaxBatch records), writes them with one WriteBatch, fsyncs once, advances
// the durable watermark and wakes every waiter.
func (l *Log) commit(r *appendReq) {
	w := &l.w
	w.pending = append(w.pending[:0], r)
	n, bytes := len(r.frames), len(r.buf)
	for yields := 0; ; yields++ {
	collect:
		for n < l.opts.MaxBatch && bytes < maxBatchBytes {
			select {
			case r := <-l.reqs:
				w.pending = append(w.pending, r)
				n += len(r.frames)
				bytes += len(r.buf)
			default:
				break collect
			}
		}
		// The waiters of the last batch were just woken and may be about to
		// append again: if fewer requests are here than last time, let them
		// run, as long as that brings more, rather than fsync for half of
		// them and make the other half wait for the next fsync. (Measured
		// here: 1.4× records/s at 100 writers, 1.6× at 10.) A batch of
		// yieldBatch records already amortizes its fsync well; yielding more
		// then only serializes the appenders' work.
		if len(w.pending) >= w.lastReqs || n >= yieldBatch || bytes >= maxBatchBytes || n >= l.opts.MaxBatch || yields == maxYields {
			break
		}
		before := len(w.pending)
		runtime.Gosched()
		if len(l.reqs) == 0 && before == len(w.pending) {
			break
		}
	}
	w.lastReqs = len(w.pending)
	err := l.write()
	l.batches.Add(1)
	l.records.Add(uint64(n))
	for i, r := range w.pending {
		w.pending[i] = nil
		if r.cb != nil {
			r.cb(r.first, r.last, err)
			l.recycle(r)
			continue
		}
		r.err = err
		r.done <- struct{}{} // r belongs to its waiter from here on
	}
}

func (l *Log) write() error {
	if f := l.failed.Load(); f != nil {
		return *f
	}
	w := &l.w
	w.batch.Clear()
	w.rolls = w.rolls[:0]
	w.ends = w.ends[:0]         // entry ends in the current tail segment
	w.rollEnds = w.rollEnds[:0] // entry ends in each segment the batch creates
	idx, size, tail := w.written, 0, w.tailSize
	segSize := l.opts.SegmentSize
	cur := &w.ends
	roll := func(next uint64) {
		w.rolls = append(w.rolls, next)
		w.rollEnds = append(w.rollEnds, nil)
		cur = &w.rollEnds[len(w.rollEnds)-1]
		tail = 0
	}
	if tail > segSize { // tidwall/wal rolls before a batch when the tail is over size
		roll(idx + 1)
	}
	for _, r := range w.pending {
		r.first = idx + 1
		for _, f := range r.frames {
			idx++
			sealFrame(f, idx)
			w.batch.Write(idx, f)
			es := entrySize(len(f))
			size += es
			tail += es
			*cur = append(*cur, uint32(tail))
			// tidwall/wal rolls after an entry that fills the segment.
			if tail >= segSize {
				roll(idx + 1)
			}
		}
		r.last = idx
	}
	if err := l.fs.BeforeWrite(w.tailPath, size); err != nil {
		return l.fail(fmt.Errorf("write %s: %w", filepath.Base(w.tailPath), err))
	}
	if n := len(w.ends); n > 0 {
		if err := w.tail.reserve(l.tw, int(w.ends[n-1])-w.tailSize, n); err != nil {
			return l.fail(fmt.Errorf("size tail segment buffer: %w", err))
		}
	}
	if err := l.tw.WriteBatch(&w.batch); err != nil {
		return l.fail(fmt.Errorf("write %s: %w", filepath.Base(w.tailPath), err))
	}
	w.written = idx
	w.tailSize = tail
	w.dirty = true
	l.segMu.Lock()
	last := len(l.ends) - 1
	l.ends[last] = append(l.ends[last], w.ends...)
	l.segs = append(l.segs, w.rolls...)
	l.ends = append(l.ends, w.rollEnds...)
	l.segMu.Unlock()
	if len(w.rolls) > 0 {
		// tidwall/wal fsynced each full segment before creating the next one;
		// make the new files durable in the directory and fsync the new tail.
		if err := l.roll(w.rolls); err != nil {
			return l.fail(err)
		}
	}
	if l.opts.Sync != SyncAlways {
		l.durable.Store(idx)
		if l.opts.Sync == SyncInterval && !w.timerOn {
			w.timer.Reset(l.opts.SyncInterval)
			w.timerOn = true
		}
		return nil
	}
	if err := l.syncTail(); err != nil {
		return l.fail(fmt.Errorf("fsync %s: %w", filepath.Base(w.tailPath), err))
	}
	w.dirty = false
	l.durable.Store(idx)
	return nil
}

// syncTail fsyncs the tail segment and counts it (writer goroutine only).
func (l *Log) syncTail() error {
	start := time.Now()
	err := l.w.syncF.Sync()
	l.fsyncs.Add(1)
	l.fsyncNs.Add(uint64(time.Since(start)))
	return err
}

// roll records segments tidwall/wal created during a batch.
func (l *Log) roll(starts []uint64) error {
	w := &l.w
	path := filepath.Join(l.dir, segmentName(starts[len(starts)-1]))
	f, err := l.fs.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open new tail segment: %w", err)
	}
	if err := w.syncF.Close(); err != nil {
		_ = f.Close()
		return fmt.Errorf("close segment %s: %w", filepath.Base(w.tailPath), err)
	}
	w.syncF, w.tailPath = f, path
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	// tidwall/wal keeps the full segments it rolled away from in its read
	// cache; this package never reads through it, so free them.
	if err := l.tw.ClearCache(); err != nil {
		return fmt.Errorf("clear tidwall/wal cache: %w", err)
	}
	return nil
}

// fail makes the log refuse appends from now on and returns the error the
// waiters get.
func (l *Log) fail(cause error) error {
	err := fmt.Errorf("%w: %w", ErrFailed, cause)
	l.failed.CompareAndSwap(nil, &err)
	return *l.failed.Load()
}

func (l *Log) shutdown() {
	w := &l.w
	w.timer.Stop()
	var err error
	if w.dirty && l.failed.Load() == nil {
		if err = w.syncF.Sync(); err == nil {
			l.durable.Store(w.written)
		} else {
			err = fmt.Errorf("wal: close: fsync %s: %w", filepath.Base(w.tailPath), err)
		}
	}
	if cerr := w.syncF.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("wal: close: %w", cerr)
	}
	if serr := l.fs.SyncDir(l.dir); err == nil && serr != nil {
		err = fmt.Errorf("wal: close: sync dir: %w", serr)
	}
	if cerr := l.tw.Close(); err == nil && cerr != nil && !errors.Is(cerr, tidwall.ErrCorrupt) {
		err = fmt.Errorf("wal: close: %w", cerr)
	}
	l.closeReaders()
	if cerr := l.lock.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("wal: close: unlock: %w", cerr)
	}
	w.closeErr = err
}
