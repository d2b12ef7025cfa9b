package queue

// Entry states.
const (
	stAbsent  uint8 = iota // slot of an append still in flight (or a gap); never delivered
	stReady                // visible: can be received
	stLeased               // leased until vis
	stDelayed              // invisible until vis (nack or backoff)
	stDying                // waiting to be written to the dead-letter queue
	stGone                 // acked, dead-lettered, dropped, expired, purged or redriven
)

// entry is the in-memory index of one message: 24 bytes. The log index is implicit (its position),
// the payload stays on disk.
type entry struct {
	enq     int64  // enqueued at, unix ns (from the record header)
	vis     int64  // lease deadline or delay end, unix ns
	size    uint32 // encoded record size
	attempt uint16 // deliveries so far (MaxAttempts ≤ 10000)
	state   uint8
}

const (
	chunkBits = 12
	chunkSize = 1 << chunkBits
	chunkMask = chunkSize - 1
)

// deque maps log indexes [start, end) to entries, in chunks of 4096 so that growing never copies
// entries and reclaimed chunks are freed.
type deque struct {
	chunks    []*[chunkSize]entry
	baseChunk uint64 // chunk number of chunks[0]
	start     uint64 // first valid index
	end       uint64 // one past the last valid index
}

func newDeque(start uint64) deque {
	return deque{baseChunk: start >> chunkBits, start: start, end: start}
}

func (d *deque) len() uint64 { return d.end - d.start }

func (d *deque) has(i uint64) bool { return i >= d.start && i < d.end }

// at returns the entry of index i, which must be in [start, end).
func (d *deque) at(i uint64) *entry {
	return &d.chunks[(i>>chunkBits)-d.baseChunk][i&chunkMask]
}

// extend makes [start, end) cover index i; new slots are zero (stAbsent).
func (d *deque) extend(i uint64) {
	if i < d.end {
		return
	}
	need := (i >> chunkBits) - d.baseChunk + 1
	for uint64(len(d.chunks)) < need {
		d.chunks = append(d.chunks, new([chunkSize]entry))
	}
	d.end = i + 1
}

// dropFront forgets indexes below i and frees whole chunks below it.
func (d *deque) dropFront(i uint64) {
	if i <= d.start {
		return
	}
	if i > d.end {
		i = d.end
	}
	d.start = i
	drop := (i >> chunkBits) - d.baseChunk
	if drop == 0 {
		return
	}
	for k := uint64(0); k < drop; k++ {
		d.chunks[k] = nil
	}
	d.chunks = d.chunks[drop:]
	d.baseChunk += drop
	if cap(d.chunks) > 64 && len(d.chunks) < cap(d.chunks)/4 { // let the backing array shrink
		d.chunks = append([]*[chunkSize]entry(nil), d.chunks...)
	}
}

// timer is a pending visibility change: a lease deadline or a delay end.
type timer struct {
	vis     int64
	index   uint64
	attempt uint32
}

// timerHeap is a min-heap on vis. Entries can be stale (extended, acked...): the consumer
// checks the entry before acting.
type timerHeap []timer

func (h *timerHeap) push(t timer) {
	*h = append(*h, t)
	s := *h
	i := len(s) - 1
	for i > 0 {
		p := (i - 1) / 2
		if s[p].vis <= s[i].vis {
			break
		}
		s[p], s[i] = s[i], s[p]
		i = p
	}
}

func (h *timerHeap) pop() timer {
	s := *h
	t := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && s[r].vis < s[l].vis {
			m = r
		}
		if s[i].vis <= s[m].vis {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return t
}
