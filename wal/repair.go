package wal

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// segNameLen is the length of a tidwall/wal segment file name: the segment's
// first index, zero-padded to 20 digits.
const segNameLen = 20

func segmentName(index uint64) string { return fmt.Sprintf("%020d", index) }

// parseSegmentName returns the first index of a segment file name, or false.
func parseSegmentName(name string) (uint64, bool) {
	if len(name) < segNameLen {
		return 0, false
	}
	idx, err := strconv.ParseUint(name[:segNameLen], 10, 64)
	if err != nil || idx == 0 {
		return 0, false
	}
	return idx, true
}

// recovered is the state of the directory after recover, handed to tidwall/wal.
type recovered struct {
	segs     []uint64   // first index of every segment, ascending
	ends     [][]uint32 // per segment, the end offset of every entry
	last     uint64     // last good index (segs[0]-1 if the log has no records; 0 if new)
	tailSize int        // bytes in the tail segment
}

// recover cleans up an interrupted tidwall/wal truncation, verifies every
// segment's framing and CRCs, repairs a torn or zero-filled tail (and, with
// Options.Repair, mid-log corruption), and fsyncs the directory after any
// change. It works on the files directly because tidwall/wal cannot open a
// torn tail at all (ErrCorrupt) and reads a zero-filled tail as empty entries.
func (l *Log) recover() (recovered, error) {
	var rec recovered
	names, err := l.cleanupTruncation()
	if err != nil {
		return rec, err
	}
	if len(names) == 0 {
		return rec, nil
	}
	var scratch []uint32 // entry ends of one segment
	for i, name := range names {
		start, _ := parseSegmentName(name)
		last := i == len(names)-1
		if i > 0 && start != rec.last+1 {
			cerr := &CorruptionError{Segment: name, Index: rec.last + 1, Offset: 0,
				Reason: fmt.Sprintf("segment starts at index %d, want %d (records missing)", start, rec.last+1)}
			if !l.opts.Repair {
				return rec, cerr
			}
			if err := l.cutAfter(names[i:], cerr); err != nil {
				return rec, err
			}
			break
		}
		path := filepath.Join(l.dir, name)
		data, err := l.fs.ReadFile(path)
		if err != nil {
			return rec, fmt.Errorf("wal: read segment %s: %w", name, err)
		}
		if int64(len(data)) > math.MaxUint32 {
			return rec, fmt.Errorf("wal: segment %s is %d bytes, over the 4 GiB this package reads", name, len(data))
		}
		scratch = scratch[:0]
		res := scanSegment(data, start, func(_ uint64, _ []byte, end int) error {
			scratch = append(scratch, uint32(end))
			return nil
		})
		rec.segs = append(rec.segs, start)
		rec.ends = append(rec.ends, slices.Clone(scratch)) // exact size: it stays in memory
		rec.last = start + res.count - 1
		rec.tailSize = res.goodEnd
		if res.err == nil {
			continue
		}
		cerr := &CorruptionError{Segment: name, Index: start + res.count, Offset: int64(res.goodEnd), Reason: res.err.Error()}
		torn := last && damageIsTail(data, res, start)
		if !torn && !l.opts.Repair {
			return rec, cerr
		}
		if err := l.cutSegment(path, data, res.goodEnd, torn, cerr); err != nil {
			return rec, err
		}
		if !last {
			if err := l.cutAfter(names[i+1:], cerr); err != nil {
				return rec, err
			}
		}
		break
	}
	return rec, nil
}

// cleanupTruncation finishes or undoes a tidwall/wal truncation that was
// interrupted by a crash, exactly as tidwall/wal's own Open would (a .START
// file replaces every segment before it; an .END file every segment after
// it), removes leftover .TEMP files, and returns the segment names in order.
func (l *Log) cleanupTruncation() ([]string, error) {
	ents, err := l.fs.ReadDir(l.dir)
	if err != nil {
		return nil, fmt.Errorf("wal: list %s: %w", l.dir, err)
	}
	var names []string // segments, .START and .END, sorted as ReadDir sorts
	startAt, endAt := -1, -1
	changed := false
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() {
			continue
		}
		if _, ok := parseSegmentName(name); !ok {
			continue
		}
		switch {
		case len(name) == segNameLen:
		case name[segNameLen:] == ".START":
			startAt = len(names)
		case name[segNameLen:] == ".END":
			if endAt == -1 {
				endAt = len(names)
			}
		default:
			if strings.HasSuffix(name, ".TEMP") {
				if err := l.fs.Remove(filepath.Join(l.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return nil, fmt.Errorf("wal: remove %s: %w", name, err)
				}
				changed = true
			}
			continue
		}
		names = append(names, name)
	}
	if startAt != -1 && endAt != -1 {
		return nil, &CorruptionError{Segment: names[startAt], Offset: -1, Reason: "both a .START and an .END file exist"}
	}
	if startAt != -1 {
		for _, name := range names[:startAt] {
			if err := l.fs.Remove(filepath.Join(l.dir, name)); err != nil {
				return nil, fmt.Errorf("wal: remove %s: %w", name, err)
			}
		}
		names = names[startAt:]
		final := names[0][:segNameLen]
		if err := l.fs.Rename(filepath.Join(l.dir, names[0]), filepath.Join(l.dir, final)); err != nil {
			return nil, fmt.Errorf("wal: rename %s: %w", names[0], err)
		}
		names[0] = final
		changed = true
		l.log.Warn().Str("segment", final).Msg("finished interrupted front truncation")
	}
	if endAt != -1 {
		for _, name := range names[endAt+1:] {
			if err := l.fs.Remove(filepath.Join(l.dir, name)); err != nil {
				return nil, fmt.Errorf("wal: remove %s: %w", name, err)
			}
		}
		names = names[:endAt+1]
		final := names[endAt][:segNameLen]
		if endAt > 0 && names[endAt-1] == final {
			names = append(names[:endAt-1], names[endAt])
		}
		if err := l.fs.Rename(filepath.Join(l.dir, names[len(names)-1]), filepath.Join(l.dir, final)); err != nil {
			return nil, fmt.Errorf("wal: rename %s: %w", names[len(names)-1], err)
		}
		names[len(names)-1] = final
		changed = true
		l.log.Warn().Str("segment", final).Msg("finished interrupted back truncation")
	}
	if changed {
		if err := l.fs.SyncDir(l.dir); err != nil {
			return nil, fmt.Errorf("wal: sync dir: %w", err)
		}
	}
	return names, nil
}

// cutSegment keeps a durable .broken copy of a damaged segment, then cuts the
// segment to its good prefix and fsyncs it.
func (l *Log) cutSegment(path string, data []byte, goodEnd int, torn bool, cerr *CorruptionError) error {
	broken, err := l.brokenName(path)
	if err != nil {
		return err
	}
	if err := l.writeDurable(broken, data); err != nil {
		return fmt.Errorf("wal: keep copy of damaged segment %s: %w", cerr.Segment, err)
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("wal: sync dir: %w", err)
	}
	if err := l.fs.Truncate(path, int64(goodEnd)); err != nil {
		return fmt.Errorf("wal: cut segment %s: %w", cerr.Segment, err)
	}
	if err := l.syncFile(path); err != nil {
		return fmt.Errorf("wal: sync segment %s: %w", cerr.Segment, err)
	}
	msg := "repaired corrupt log by cutting it"
	if torn {
		msg = "repaired torn tail by cutting it"
	}
	l.log.Warn().Str("segment", cerr.Segment).Uint64("first_cut_index", cerr.Index).
		Int64("offset", cerr.Offset).Int("cut_bytes", len(data)-goodEnd).Str("reason", cerr.Reason).
		Str("broken_copy", filepath.Base(broken)).Msg(msg)
	return nil
}

// cutAfter moves whole segments out of the log by renaming them to .broken.
func (l *Log) cutAfter(names []string, cerr *CorruptionError) error {
	for _, name := range names {
		path := filepath.Join(l.dir, name)
		broken, err := l.brokenName(path)
		if err != nil {
			return err
		}
		if err := l.fs.Rename(path, broken); err != nil {
			return fmt.Errorf("wal: move aside segment %s: %w", name, err)
		}
		l.log.Warn().Str("segment", name).Str("broken_copy", filepath.Base(broken)).
			Str("reason", cerr.Error()).Msg("repaired corrupt log by moving a segment after the damage aside")
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("wal: sync dir: %w", err)
	}
	return nil
}

// brokenName returns an unused name for a damaged copy of path.
func (l *Log) brokenName(path string) (string, error) {
	ents, err := l.fs.ReadDir(l.dir)
	if err != nil {
		return "", fmt.Errorf("wal: list %s: %w", l.dir, err)
	}
	used := make(map[string]bool, len(ents))
	for _, e := range ents {
		used[e.Name()] = true
	}
	base := filepath.Base(path)
	name := base + ".broken"
	for n := 1; used[name]; n++ {
		name = base + "." + strconv.Itoa(n) + ".broken"
	}
	return filepath.Join(l.dir, name), nil
}

func (l *Log) writeDurable(path string, data []byte) error {
	f, err := l.fs.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (l *Log) syncFile(path string) error {
	f, err := l.fs.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
