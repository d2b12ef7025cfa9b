package wal

import (
	"errors"
	"fmt"
)

var (
	// ErrClosed is returned by every operation on a closed Log, and by a second Close.
	ErrClosed = errors.New("wal: closed")
	// ErrNotFound is returned by Read for an index outside [FirstIndex, LastIndex].
	ErrNotFound = errors.New("wal: not found")
	// ErrEmptyRecord is returned by Append for an empty record or an empty call:
	// empty records cannot exist, which is how a zero-filled tail is told apart.
	ErrEmptyRecord = errors.New("wal: empty record")
	// ErrFailed wraps the cause of a failed write or fsync. The Log refuses every
	// later Append with it until it is reopened: nothing that is not durable is
	// ever acknowledged.
	ErrFailed = errors.New("wal: failed")
	// ErrLocked is returned by Open when another open Log, in this process or
	// another, holds the directory.
	ErrLocked = errors.New("wal: directory is locked by another open log")
	// ErrCorrupt is wrapped by every *CorruptionError.
	ErrCorrupt = errors.New("wal: corrupt")
	// ErrTooLarge is returned by Append for more than MaxAppendSize bytes of records.
	ErrTooLarge = errors.New("wal: append too large")
	// ErrInvalidOptions is wrapped by Open for an invalid Options value.
	ErrInvalidOptions = errors.New("wal: invalid options")
)

// CorruptionError reports a damaged record: the segment file (base name), the
// index of the first bad record, its byte offset in the segment (-1 when not
// known, as for a record found damaged by Read) and what is wrong with it.
type CorruptionError struct {
	Segment string
	Index   uint64
	Offset  int64
	Reason  string
}

func (e *CorruptionError) Error() string {
	return fmt.Sprintf("wal: corrupt record %d in segment %s at offset %d: %s", e.Index, e.Segment, e.Offset, e.Reason)
}

// Unwrap returns ErrCorrupt, so errors.Is(err, ErrCorrupt) holds.
func (e *CorruptionError) Unwrap() error { return ErrCorrupt }
