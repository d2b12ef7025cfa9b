// Package wal is Sluice's crash-safe write-ahead log: checksummed, non-empty
// records with consecutive indexes, stored in segment files by
// github.com/tidwall/wal, with what that library lacks added around it.
//
// # What it adds to tidwall/wal
//
//   - Every record is framed with a version and a CRC32C over its payload
//     and index (see On-disk format). Empty records cannot exist, so a
//     zero-filled tail, which tidwall/wal alone reads as thousands of empty
//     entries, is detected.
//   - Open verifies every segment before tidwall/wal sees it (about 3 million
//     256-byte records a second here). A torn or zero-filled tail (damage in
//     the last segment after which no valid record follows) is cut to the
//     last good record, after a durable .broken copy of the segment is kept,
//     and the cut is logged; tidwall/wal alone refuses to open a torn tail.
//     Damage followed by valid records, or in any segment but the last, or a
//     missing segment, is mid-log corruption: Open returns a
//     *CorruptionError naming the segment, index and offset, unless
//     Options.Repair asks to cut there too (the later segments are renamed
//     to .broken). After such a cut the indexes past it are given again.
//   - Group commit: one writer goroutine takes the queued Appends (up to
//     Options.MaxBatch records), writes them with one WriteBatch and one
//     fsync (tidwall/wal runs with NoSync; this package fsyncs the tail
//     segment through its own descriptor), then wakes every waiter. Before a
//     batch smaller than the previous one it briefly yields, so that the
//     just-woken waiters of the previous batch can join it.
//   - tidwall/wal keeps its tail segment in memory in a slice it grows by
//     append, a quarter at a time: about 5 bytes allocated and 4 copied,
//     into freshly faulted pages, per byte written. Before each batch the
//     writer gives that slice room itself, doubling it up to a segment, and
//     hands the buffer on from segment to segment (see tail.go; it reaches
//     into two unexported fields and turns itself off for a layout it does
//     not recognise).
//   - A durable watermark: LastIndex, Read and Scan see only records that
//     are durable under the sync policy.
//   - The directory is fsynced after segment files are created (on a roll),
//     renamed or removed (truncation, repair).
//   - Reads do not go through tidwall/wal, whose concurrent reads of old
//     segments race on its segment cache and can panic (upstream issue #34),
//     and which loads a whole segment to read one record. The log keeps a
//     table of entry offsets (4 bytes a record, built while Open verifies
//     the segments and extended by the writer); Read is one pread, checked
//     (damage that appears after Open is a *CorruptionError), and reads run
//     concurrently. Scan, for recovery, reads and checks whole segment files
//     in order.
//   - TruncateFront is segment-aligned: it removes whole segment files below
//     the index itself, so it copies nothing and never blocks appends
//     (tidwall/wal's own TruncateFront rewrites up to a segment under its
//     lock). tidwall/wal is reopened after every 1024 removed segments to
//     forget them.
//
// # Concurrency contract
//
// All methods of *Log are safe for concurrent use. Append blocks until its
// records are durable under the sync policy (SyncAlways: fsynced), or ctx
// ends (the records may then still be written). The indexes of one Append
// are consecutive. If a write or an fsync fails, every waiter of that batch
// gets an error wrapping ErrFailed and the cause, and the log refuses later
// Appends until it is reopened: nothing that is not durable is acknowledged.
// Reads keep working up to the watermark. Close waits for the queued
// Appends, fsyncs, and stops the writer goroutine; every method then returns
// ErrClosed.
//
// # On-disk format
//
// A log is a directory of segment files named by the index of their first
// record, zero-padded to 20 digits (tidwall/wal's layout). A segment is a
// sequence of entries:
//
//	entry = uvarint(len(frame)) | frame
//	frame = version (1 byte, 1)
//	        crc32c(payload ‖ index) (4 bytes, little endian)
//	        index (8 bytes, little endian)
//	        payload (≥ 1 byte)
//
// The index in the frame makes a record misplaced by a damaged length fail
// its read instead of being returned for another index, and lets Open tell
// damage followed by good records (mid-log) from a damaged tail.
//
// Segments roll at about Options.SegmentSize bytes. tidwall/wal holds the
// tail segment in memory, so segments are small (4 MiB by default); memory
// per log is about that plus 4 bytes per record. A LOCK
// file is held with flock(2) while the log is open: a second Open returns
// ErrLocked. Damaged data is kept as <segment>.broken (or <segment>.N.broken);
// those files are never read again and may be deleted by an operator.
//
// # Fault injection
//
// Options.FS is the seam for the file operations this package does itself;
// FS says exactly which. tidwall/wal's own writes bypass it, so FS.BeforeWrite
// runs before each batch write to let a test fail it. Package waltest has a
// fault-injecting FS and helpers that tear, zero-fill and bit-flip segments.
//
// # Example
//
//	l, err := wal.Open("data/telemetry", wal.Options{})
//	if err != nil {
//		return err // a *wal.CorruptionError: look at it, or reopen with Repair
//	}
//	defer l.Close()
//	first, last, err := l.Append(ctx, []byte("a"), []byte("b"))
//	if err != nil {
//		return err // not durable; after ErrFailed, reopen the log
//	}
//	rec, err := l.Read(first)
//	...
//	err = l.Scan(l.FirstIndex(), func(i uint64, rec []byte) error { ...; return nil })
//	err = l.TruncateFront(last) // removes the segments wholly below last
package wal
