package queue_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/sluicemq/sluice/queue"
)

// The model: what the queue must hold, message by message, driven by the same manual clock.
type mState int

const (
	mReady mState = iota
	mLeased
	mDelayed
	mDead
	mGone
)

type mMsg struct {
	id      string
	payload string
	state   mState
	attempt int
	until   time.Time // lease deadline or delay end
	receipt string    // current receipt when leased
}

type model struct {
	cfg   queue.Config
	msgs  map[string]*mMsg
	fresh []string // never-delivered messages in delivery order (first deliveries are FIFO)
	dead  []string
}

func (md *model) backoff(attempt int) time.Duration {
	b := md.cfg.Backoff
	d := float64(b.Initial)
	for i := 1; i < attempt; i++ {
		d *= b.Multiplier
	}
	return min(time.Duration(d), b.Max)
}

// advance applies lease ends and delays due at now. Lease ends count the backoff from the deadline.
func (md *model) advance(now time.Time) {
	for changed := true; changed; {
		changed = false
		for _, m := range md.msgs {
			switch {
			case m.state == mLeased && !m.until.After(now):
				md.fail(m, m.until, -1)
				changed = true
			case m.state == mDelayed && !m.until.After(now):
				m.state = mReady
				changed = true
			}
		}
	}
}

func (md *model) fail(m *mMsg, at time.Time, delay time.Duration) {
	m.receipt = ""
	if m.attempt >= md.cfg.MaxAttempts {
		m.state = mDead
		md.dead = append(md.dead, m.id)
		return
	}
	if delay <= 0 {
		delay = md.backoff(m.attempt)
	}
	m.state, m.until = mDelayed, at.Add(delay)
}

func (md *model) count(s mState) int64 {
	n := int64(0)
	for _, m := range md.msgs {
		if m.state == s {
			n++
		}
	}
	return n
}

func (md *model) freshReady() []string {
	var out []string
	for _, id := range md.fresh {
		if m := md.msgs[id]; m.state == mReady && m.attempt == 0 {
			out = append(out, id)
		}
	}
	return out
}

func TestModel(t *testing.T) {
	seeds := 30
	if testing.Short() {
		seeds = 8
	}
	for seed := 0; seed < seeds; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runModel(t, uint64(seed), 250)
		})
	}
}

func runModel(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 42))
	sync := queue.SyncNone
	if seed%5 == 0 {
		sync = queue.SyncAlways
	}
	cfg := queue.Config{
		VisibilityTimeout: 10 * time.Second,
		MaxAttempts:       1 + rng.IntN(4),
		Backoff:           queue.Backoff{Initial: time.Second, Multiplier: 2, Max: 10 * time.Second, Jitter: -1},
		Sync:              sync,
	}
	e := newEnv(t, cfg)
	md := &model{cfg: cfg, msgs: map[string]*mMsg{}}
	var issued []string // every receipt handed out, most recent last
	ctx := context.Background()
	payloadN := 0
	check := func(step int, op string) {
		t.Helper()
		now := e.clock.Now()
		md.advance(now)
		s := e.stats()
		want := queue.Stats{Ready: md.count(mReady), Leased: md.count(mLeased), Delayed: md.count(mDelayed), Dead: md.count(mDead)}
		if s.Ready != want.Ready || s.Leased != want.Leased || s.Delayed != want.Delayed || s.Dead != want.Dead {
			t.Fatalf("step %d after %s: stats ready/leased/delayed/dead = %d/%d/%d/%d, model %d/%d/%d/%d",
				step, op, s.Ready, s.Leased, s.Delayed, s.Dead, want.Ready, want.Leased, want.Delayed, want.Dead)
		}
	}
	for step := 0; step < steps; step++ {
		now := e.clock.Now()
		md.advance(now)
		op := ""
		switch r := rng.IntN(100); {
		case r < 25:
			op = "enqueue"
			n := 1 + rng.IntN(5)
			var ps []string
			for i := 0; i < n; i++ {
				payloadN++
				ps = append(ps, fmt.Sprint("p", payloadN))
			}
			ids := e.enqueue(ps...)
			for i, id := range ids {
				md.msgs[id] = &mMsg{id: id, payload: ps[i]}
				md.fresh = append(md.fresh, id)
			}
		case r < 50:
			op = "receive"
			max := 1 + rng.IntN(6)
			lease := time.Duration(rng.IntN(3)) * 5 * time.Second // 0 → visibility timeout
			ds := e.receive(max, lease)
			ready := md.count(mReady)
			if int64(len(ds)) != min(int64(max), ready) {
				t.Fatalf("step %d: receive(%d) got %d, model has %d ready", step, max, len(ds), ready)
			}
			fresh := md.freshReady()
			nFresh := 0
			for _, d := range ds {
				m := md.msgs[d.ID]
				if m == nil || m.state != mReady || string(d.Payload) != m.payload || d.Attempt != m.attempt+1 {
					t.Fatalf("step %d: delivered %s (attempt %d, %q), model %+v", step, d.ID, d.Attempt, d.Payload, m)
				}
				if m.attempt == 0 {
					if d.ID != fresh[nFresh] {
						t.Fatalf("step %d: first delivery %s out of order, want %s", step, d.ID, fresh[nFresh])
					}
					nFresh++
				}
				if lease == 0 {
					lease = cfg.VisibilityTimeout
				}
				m.state, m.attempt, m.until, m.receipt = mLeased, m.attempt+1, now.Add(lease), d.Receipt
				issued = append(issued, d.Receipt)
			}
		case r < 75 && len(issued) > 0:
			var rs []string
			for n := 1 + rng.IntN(4); n > 0; n-- {
				k := len(issued) - 1 - rng.IntN(min(len(issued), 8)) // mostly recent ones
				rs = append(rs, issued[k])
			}
			if rng.IntN(10) == 0 {
				rs = append(rs, "garbage")
			}
			var res []error
			var err error
			var apply func(m *mMsg)
			switch rng.IntN(3) {
			case 0:
				op = "ack"
				res, err = e.m.Ack(qn, rs)
				apply = func(m *mMsg) { m.state, m.receipt = mGone, "" }
			case 1:
				op = "nack"
				delay := time.Duration(rng.IntN(3)) * 3 * time.Second
				res, err = e.m.Nack(qn, rs, delay)
				apply = func(m *mMsg) { md.fail(m, now, delay) }
			default:
				op = "extend"
				lease := time.Duration(1+rng.IntN(20)) * time.Second
				res, err = e.m.Extend(qn, rs, lease)
				apply = func(m *mMsg) { m.until = now.Add(lease) }
			}
			if err != nil {
				t.Fatalf("step %d: %s: %v", step, op, err)
			}
			for i, rc := range rs {
				var m *mMsg
				for _, mm := range md.msgs {
					if mm.receipt == rc && mm.state == mLeased {
						m = mm
					}
				}
				switch {
				case rc == "garbage":
					if !errors.Is(res[i], queue.ErrInvalidReceipt) {
						t.Fatalf("step %d: %s garbage: %v", step, op, res[i])
					}
				case m == nil:
					if !errors.Is(res[i], queue.ErrStaleReceipt) {
						t.Fatalf("step %d: %s stale receipt: %v", step, op, res[i])
					}
				default:
					if res[i] != nil {
						t.Fatalf("step %d: %s valid receipt of %s: %v", step, op, m.id, res[i])
					}
					apply(m)
				}
			}
		case r < 88:
			op = "advance"
			e.clock.Advance(time.Duration(rng.IntN(8000)) * time.Millisecond)
		case r < 91:
			op = "redrive"
			dl, err := e.m.PeekDead(qn, 1000)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range dl {
				got = append(got, d.ID)
			}
			if !slices.Equal(sorted(got), sorted(md.dead)) {
				t.Fatalf("step %d: dead letters %v, model %v", step, got, md.dead)
			}
			var ids []string
			if rng.IntN(2) == 0 && len(got) > 0 {
				ids = []string{got[rng.IntN(len(got))], "unknown-id"}
			}
			n, err := e.m.Redrive(ctx, qn, ids)
			if err != nil {
				t.Fatalf("step %d: redrive: %v", step, err)
			}
			var moved []string
			for _, id := range got { // redriven in dead-letter order
				if ids == nil || slices.Contains(ids, id) {
					moved = append(moved, id)
				}
			}
			if n != len(moved) {
				t.Fatalf("step %d: redrive moved %d, want %d", step, n, len(moved))
			}
			for _, id := range moved {
				m := md.msgs[id]
				m.state, m.attempt = mReady, 0
				md.fresh = slices.DeleteFunc(md.fresh, func(s string) bool { return s == id })
				md.fresh = append(md.fresh, id)
				md.dead = slices.DeleteFunc(md.dead, func(s string) bool { return s == id })
			}
		case r < 93:
			op = "purge"
			n, err := e.m.Purge(ctx, qn)
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			for _, m := range md.msgs {
				if m.state == mReady || m.state == mLeased || m.state == mDelayed {
					m.state, m.receipt = mGone, ""
					want++
				}
			}
			if n != want {
				t.Fatalf("step %d: purge removed %d, model %d", step, n, want)
			}
		case r < 97:
			op = "reopen"
			e.reopen()
			for _, m := range md.msgs {
				m.receipt = "" // receipts do not survive a restart; leases do
			}
		default:
			op = "stats"
		}
		check(step, op)
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
