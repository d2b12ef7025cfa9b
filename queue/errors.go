package queue

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package either is one of these or wraps one
// (check with errors.Is), except errors of the underlying filesystem, which are wrapped with context.
var (
	ErrClosed         = errors.New("queue: closed")
	ErrNotFound       = errors.New("queue: no such queue")
	ErrFull           = errors.New("queue: queue is full")
	ErrTooLarge       = errors.New("queue: message too large")
	ErrInvalidName    = errors.New("queue: invalid queue name")
	ErrInvalidLease   = errors.New("queue: invalid lease duration")
	ErrInvalidDelay   = errors.New("queue: invalid nack delay")
	ErrInvalidConfig  = errors.New("queue: invalid queue config")
	ErrStaleReceipt   = errors.New("queue: stale receipt")
	ErrInvalidReceipt = errors.New("queue: invalid receipt")
	ErrLocked         = errors.New("queue: data directory is locked by another process")
	ErrNotWritable    = errors.New("queue: data directory is not writable")
	ErrCorrupt        = errors.New("queue: corrupt queue state")
)

// CorruptError reports a checkpoint, ack-log or message record that failed validation.
// It wraps ErrCorrupt, and the underlying cause when there is one (a *wal.CorruptionError for example).
type CorruptError struct {
	Path   string // file or directory that holds the bad data
	Index  uint64 // log index of the bad record, 0 when not applicable
	Reason string
	Err    error // underlying cause, may be nil
}

func (e *CorruptError) Error() string {
	s := fmt.Sprintf("queue: corrupt %s", e.Path)
	if e.Index != 0 {
		s += fmt.Sprintf(" at index %d", e.Index)
	}
	s += ": " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

func (e *CorruptError) Unwrap() error { return e.Err }

// decodeError is returned by the binary decoders; callers wrap it in a CorruptError with coordinates.
type decodeError string

func (e decodeError) Error() string { return string(e) }

const (
	errShort   = decodeError("truncated")
	errVersion = decodeError("unknown version")
	errLength  = decodeError("length out of range")
	errCRC     = decodeError("checksum mismatch")
	errTrail   = decodeError("trailing bytes")
	errKind    = decodeError("unknown event kind")
)
