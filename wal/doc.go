// Package wal is Sluice's crash-safe write-ahead log: CRC-framed, non-empty
// records with consecutive indexes, stored in segment files by
// github.com/tidwall/wal, with what that library lacks added around it.
//
// # What it adds to tidwall/wal
//
//   - Every record is framed and checksummed with its index (see On-disk format). Empty
//     records cannot exist, so a zero-filled tail (which tidwall/wal alone
//     reads as thousands of empty entries) is detected.
//   - Open verifies every segment before tidwall/wal sees it. A torn or
//     zero-filled tail (damage after which no valid entry follows in the last
//     segment) is cut to the last good record, after a durable .broken copy
//     of the segment is kept; the cut is logged. tidwall/wal would refuse to
//     open a torn tail at all. Damage followed by valid data, or in any
//     segment but the last, is mid-log corruption: Open returns a
//     *CorruptionError naming the segment, index and offset, unless
//     Options.Repair asks to cut there too (later segments are renamed to
//     .broken). A cut mid-log makes the indexes after the cut be given again.
//   - Group commit: one writer goroutine takes every queued Append (up to
//     Options.MaxBatch records), writes them with one WriteBatch and one
//     fsync (tidwall/wal runs with NoSync; this package fsyncs the tail
//     segment through its own descriptor), then wakes every waiter.
//   - A durable watermark: LastIndex, Read and Scan see only records that
//     are durable under the sync policy.
//   - The directory is fsynced after segment files are created (on a roll),
//     renamed or removed (truncation, repair).
//   - Reads are serialized: concurrent tidwall/wal reads of old segments race
//     on its segment cache and can panic (upstream issue #34). A panic of
//     tidwall/wal on a segment damaged after Open becomes a *CorruptionError.
//     Scan, for recovery, reads and checks segment files directly.
//   - TruncateFront is segment-aligned: it removes whole segment files below
//     the index itself, so it copies nothing and never blocks appends
//     (tidwall/wal's own TruncateFront rewrites up to a segment under its
//     lock). tidwall/wal still lists the removed segments in memory until the
//     log is reopened; reads below FirstIndex never reach it.
//
// # Concurrency contract
//
// All methods of *Log are safe for concurrent use. Append blocks until its
// records are durable under the sync policy (SyncAlways: fsynced), or ctx
// ends (the records may then still be written). Indexes of one Append are
// consecutive. If a write or an fsync fails, every waiter of that batch gets
// an error wrapping ErrFailed and the cause, and the log refuses later
// Appends until it is reopened: nothing that is not durable is acknowledged.
// Reads keep working up to the watermark. Close waits for queued appends,
// fsyncs, and stops the writer goroutine.
//
// # On-disk format
//
// A log is a directory of segment files named by the index of their first
// record, zero-padded to 20 digits (tidwall/wal's layout). A segment is a
// sequence of entries; an entry is
//
//	uvarint(len(frame)) | frame
//	frame = version (1 byte, 1)
//	        crc32c(payload ‖ index) (4 bytes, little endian)
//	        index (8 bytes, little endian)
//	        payload (≥ 1 byte)
//
// The index in the frame makes a record misplaced by a damaged length fail
// its read instead of being returned for another index, and lets Open tell
// damage followed by good records (mid-log) from a damaged tail.
//
// A LOCK file in the directory is held with flock(2) while the log is open
// (a second Open returns ErrLocked). Segments roll at about Options.SegmentSize bytes. The tail segment is held
// in memory by tidwall/wal, so segments are small (4 MiB by default).
// Damaged data is kept as <segment>.broken (or <segment>.N.broken); those
// files are never read again and may be deleted by an operator.
//
// # Fault injection
//
// Options.FS is the seam for the file operations this package does itself
// (see FS for exactly which). tidwall/wal's own writes bypass it; FS.BeforeWrite
// runs before each batch so a test can fail a write.
//
// # Example
//
//	l, err := wal.Open("data/telemetry", wal.Options{})
//	if err != nil {
//		return err
//	}
//	defer l.Close()
//	first, last, err := l.Append(ctx, []byte("a"), []byte("b"))
//	if err != nil {
//		return err // not durable; after ErrFailed, reopen the log
//	}
//	rec, err := l.Read(first)
//	...
//	err = l.Scan(l.FirstIndex(), func(i uint64, rec []byte) error { ...; return nil })
//	err = l.TruncateFront(last) // drops whole segments below last
package wal
