package loadtest

import (
	"math/bits"
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// bitset is a growable set of sequence numbers.
type bitset []uint64

func (b *bitset) set(i uint64) (was bool) {
	w := i / 64
	for uint64(len(*b)) <= w {
		*b = append(*b, 0)
	}
	m := uint64(1) << (i % 64)
	was = (*b)[w]&m != 0
	(*b)[w] |= m
	return was
}

func (b bitset) has(i uint64) bool {
	w := i / 64
	return w < uint64(len(b)) && b[w]&(1<<(i%64)) != 0
}

func (b bitset) count() uint64 {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return uint64(n)
}

// seen is what one accounting scope received from one publisher.
type seen struct {
	got    bitset
	max    uint64
	unique uint64
	dups   uint64
	ooo    uint64
}

// scope is one loss-accounting scope: a subscriber that must get every message of its publishers
// (fan-in, fan-out, p2p) or a group that must get each message once between its members
// (a shared subscription, queue consumers). It is safe for concurrent use.
type scope struct {
	mu   sync.Mutex
	pubs []int         // publisher indexes this scope expects everything from
	from map[int]*seen // by publisher index
}

func newScope(pubs []int) *scope {
	s := &scope{pubs: pubs, from: make(map[int]*seen, len(pubs))}
	for _, p := range pubs {
		s.from[p] = &seen{}
	}
	return s
}

// record notes message seq of publisher p; it returns false for a publisher this scope does not
// expect (a message from elsewhere).
func (s *scope) record(p int, seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	x := s.from[p]
	if x == nil {
		return false
	}
	if x.got.set(seq) {
		x.dups++
		return true
	}
	x.unique++
	if seq < x.max {
		x.ooo++
	} else {
		x.max = seq
	}
	return true
}

// Counts are message accounting totals.
type Counts struct {
	Expected   uint64 `json:"expected"`     // messages the subscribers/consumers should have got
	Unique     uint64 `json:"unique"`       // distinct messages they got
	Lost       uint64 `json:"lost"`         // expected and never got
	LostAcked  uint64 `json:"lost_acked"`   // of Lost, how many the broker had acknowledged to the publisher
	Duplicates uint64 `json:"duplicates"`   // got more than once
	OutOfOrder uint64 `json:"out_of_order"` // got after a later message of the same publisher
}

func (c *Counts) add(o Counts) {
	c.Expected += o.Expected
	c.Unique += o.Unique
	c.Lost += o.Lost
	c.LostAcked += o.LostAcked
	c.Duplicates += o.Duplicates
	c.OutOfOrder += o.OutOfOrder
}

// tally compares what the scope got with what each publisher wrote.
func (s *scope) tally(pubs []*publisher) Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	var c Counts
	for _, pi := range s.pubs {
		p := pubs[pi]
		x := s.from[pi]
		written, acked := p.result()
		c.Expected += written
		c.Duplicates += x.dups
		c.OutOfOrder += x.ooo
		for seq := uint64(1); seq <= written; seq++ {
			if x.got.has(seq) {
				c.Unique++
				continue
			}
			c.Lost++
			if acked.has(seq) {
				c.LostAcked++
			}
		}
	}
	return c
}

// complete reports whether the scope got every message its publishers wrote.
func (s *scope) complete(pubs []*publisher) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, pi := range s.pubs {
		if s.from[pi].unique < pubs[pi].written.Load() {
			return false
		}
	}
	return true
}

// latencies is an HDR histogram of microseconds, from 1µs to 1h, 3 significant digits.
type latencies struct {
	mu sync.Mutex
	h  *hdr.Histogram
}

func newLatencies() *latencies {
	return &latencies{h: hdr.New(1, int64(time.Hour/time.Microsecond), 3)}
}

func (l *latencies) record(d time.Duration) {
	us := d.Microseconds()
	if us < 1 {
		us = 1
	}
	l.mu.Lock()
	_ = l.h.RecordValue(min(us, l.h.HighestTrackableValue()))
	l.mu.Unlock()
}

func (l *latencies) merge(o *latencies) {
	o.mu.Lock()
	defer o.mu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.h.Merge(o.h)
}

// Percentiles summarizes a latency distribution in milliseconds.
type Percentiles struct {
	Count  int64   `json:"count"`
	Min    float64 `json:"min_ms"`
	Mean   float64 `json:"mean_ms"`
	P50    float64 `json:"p50_ms"`
	P90    float64 `json:"p90_ms"`
	P99    float64 `json:"p99_ms"`
	P999   float64 `json:"p99_9_ms"`
	P9999  float64 `json:"p99_99_ms"`
	Max    float64 `json:"max_ms"`
	StdDev float64 `json:"stddev_ms"`
}

func (l *latencies) summary() *Percentiles {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.h
	if h.TotalCount() == 0 {
		return nil
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return &Percentiles{
		Count: h.TotalCount(), Min: ms(h.Min()), Mean: h.Mean() / 1000,
		P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), P9999: ms(h.ValueAtQuantile(99.99)), Max: ms(h.Max()),
		StdDev: h.StdDev() / 1000,
	}
}
