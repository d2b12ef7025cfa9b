package loadtest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/devices"
)

// Target is the broker a scenario runs against.
type Target struct {
	Broker string // URL: tcp://, mqtt://, tls://, mqtts://, ws://, wss://
	PID    int    // the broker's process, to sample RSS and CPU from /proc (0: none)
	// Queue is the bridge-queue scenario's consumer; nil means an HTTPQueue on the scenario's
	// queue.api and queue.name.
	Queue QueueConsumer
}

// Options are a run's collaborators; the zero value is valid.
type Options struct {
	Logger *zerolog.Logger // nil: no logs
	// Progress, if set, is called from one goroutine about every SampleEvery.
	Progress func(Progress)
	// SampleEvery is the timeline and resource sampling period; default duration/100 within
	// [50ms, 1s].
	SampleEvery time.Duration
}

// Progress is a running scenario's state.
type Progress struct {
	Phase     string // connect, run, drain
	Elapsed   time.Duration
	Total     time.Duration
	Sent      uint64
	Received  uint64
	Errors    uint64
	Connected int64
}

// Sample is one point of a run's timeline (cumulative counts).
type Sample struct {
	T         float64 `json:"t"` // seconds since the publishing (or connecting) started
	Sent      uint64  `json:"sent"`
	Received  uint64  `json:"received"`
	Errors    uint64  `json:"errors"`
	Connected int64   `json:"connected"`
}

// Result is what one scenario did against one broker.
type Result struct {
	Scenario Scenario  `json:"scenario"`
	Broker   string    `json:"broker"`
	Started  time.Time `json:"started"`
	Elapsed  float64   `json:"elapsed_s"` // the publishing (or holding) phase

	Connections   int    `json:"connections"`
	Sent          uint64 `json:"sent"`
	Acked         uint64 `json:"acked"`
	PublishErrors uint64 `json:"publish_errors"`
	Received      uint64 `json:"received"` // stamped messages of this run, duplicates included
	Foreign       uint64 `json:"foreign"`  // messages of other runs or publishers (queues)
	Counts

	SendRate    float64 `json:"send_rate"`    // messages/s written during the publishing phase
	ReceiveRate float64 `json:"receive_rate"` // distinct messages/s delivered, until the last arrived

	Latency        *Percentiles `json:"latency,omitempty"`     // intended send → receive
	AckLatency     *Percentiles `json:"ack_latency,omitempty"` // intended send → PUBACK/PUBCOMP
	ConnectLatency *Percentiles `json:"connect_latency,omitempty"`
	ConnectFailed  uint64       `json:"connect_failed,omitempty"`
	ConnectAllS    float64      `json:"connect_all_s,omitempty"` // idle, storm: until all were connected

	Timeline  []Sample   `json:"timeline"`
	Resources *Resources `json:"resources,omitempty"`
	Problems  []string   `json:"problems,omitempty"`
}

// OK reports whether the run lost nothing and had no problems.
func (r *Result) OK() bool { return r.Lost == 0 && len(r.Problems) == 0 }

type run struct {
	sc    Scenario
	t     Target
	opts  Options
	log   zerolog.Logger
	u     *url.URL
	tls   *tls.Config
	runID string

	pubs   []*publisher
	subs   []*devices.Client
	scopes []*scope
	lats   []*latencies

	start     time.Time
	warmupEnd atomic.Int64 // unix nanoseconds; read by message handlers

	sent, received, acked, pubErrs, foreign atomic.Uint64
	connected                               atomic.Int64
	lastRecv                                atomic.Int64

	mu       sync.Mutex
	problems []string
}

func (r *run) problem(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.problems) < 20 {
		r.problems = append(r.problems, fmt.Sprintf(format, args...))
	}
}

// Run runs one scenario against one broker and returns its result. A broker that cannot be
// reached or refuses the credentials gives a *devices.ConnectError before any load starts, and
// every connection made so far is closed. Lost messages are not an error: see Result.Lost.
func Run(ctx context.Context, sc Scenario, t Target, opts Options) (*Result, error) {
	sc = sc.WithDefaults()
	if err := sc.Validate(); err != nil {
		return nil, err
	}
	u, err := devices.ParseBroker(t.Broker)
	if err != nil {
		return nil, err
	}
	if t.PID > 0 {
		if err := CheckPID(t.PID); err != nil {
			return nil, err
		}
	}
	var id [4]byte
	_, _ = rand.Read(id[:])
	r := &run{sc: sc, t: t, opts: opts, u: u, runID: hex.EncodeToString(id[:]), log: zerolog.Nop()}
	if opts.Logger != nil {
		r.log = opts.Logger.With().Str("component", "loadtest").Str("scenario", sc.Name).Logger()
	}
	if sc.Insecure {
		r.tls = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // asked for by the scenario
	}
	if r.opts.SampleEvery <= 0 {
		r.opts.SampleEvery = min(max(time.Duration(sc.Duration)/100, 50*time.Millisecond), time.Second)
	}
	if sc.Kind == Idle || sc.Kind == Storm {
		return r.runConnections(ctx)
	}
	return r.runMessages(ctx)
}

func (r *run) clientOptions(id string) devices.ClientOptions {
	return devices.ClientOptions{
		Broker: r.u, Protocol: r.sc.Protocol, ClientID: id, Username: r.sc.Username, Password: r.sc.Password,
		TLS: r.tls, CleanSession: true, KeepAlive: 60 * time.Second, MaxInflight: r.sc.Inflight,
	}
}

// parallel runs f(0..n-1) with at most 32 at a time and returns the first error.
func parallel(ctx context.Context, n int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	sem := make(chan struct{}, 32)
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(ctx, i); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

// pubIndex maps a stamp id back to this run's publisher.
func (r *run) pubIndex(id string) (int, bool) {
	rest, ok := strings.CutPrefix(id, r.runID+"-")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(rest)
	if err != nil || i < 0 || i >= len(r.pubs) {
		return 0, false
	}
	return i, true
}

func (r *run) handle(sc *scope, lat *latencies, payload []byte, now time.Time) {
	st, err := devices.DecodeStamp(payload)
	if err != nil {
		r.foreign.Add(1)
		return
	}
	i, ok := r.pubIndex(st.ID)
	if !ok || !sc.record(i, st.Seq) {
		r.foreign.Add(1)
		return
	}
	r.received.Add(1)
	r.lastRecv.Store(now.UnixNano())
	if st.Sent.UnixNano() >= r.warmupEnd.Load() {
		lat.record(now.Sub(st.Sent))
	}
}

// topology decides publisher topics, subscriber filters and accounting scopes.
func (r *run) topology() (pubTopics []string, subFilters []string, subScopes []*scope, group *scope) {
	sc := r.sc
	prefix := "sluice-loadtest/" + r.runID
	all := func(n int) []int {
		x := make([]int, n)
		for i := range x {
			x[i] = i
		}
		return x
	}
	switch sc.Kind {
	case FanIn:
		for i := range sc.Publishers {
			pubTopics = append(pubTopics, fmt.Sprintf("%s/in/%d", prefix, i))
		}
		for range sc.Subscribers {
			subFilters = append(subFilters, prefix+"/in/+")
			subScopes = append(subScopes, newScope(all(sc.Publishers)))
		}
	case FanOut:
		for range sc.Publishers {
			pubTopics = append(pubTopics, prefix+"/out")
		}
		for range sc.Subscribers {
			subFilters = append(subFilters, prefix+"/out")
			subScopes = append(subScopes, newScope(all(sc.Publishers)))
		}
	case P2P:
		for i := range sc.Pairs {
			t := fmt.Sprintf("%s/p2p/%d", prefix, i)
			pubTopics = append(pubTopics, t)
			subFilters = append(subFilters, t)
			subScopes = append(subScopes, newScope([]int{i}))
		}
	case Shared:
		group = newScope(all(sc.Publishers))
		for i := range sc.Publishers {
			pubTopics = append(pubTopics, fmt.Sprintf("%s/shared/%d", prefix, i))
		}
		for range sc.Subscribers {
			subFilters = append(subFilters, "$share/lt"+r.runID+"/"+prefix+"/shared/+")
			subScopes = append(subScopes, group)
		}
	case Bridge:
		group = newScope(all(sc.Publishers))
		for i := range sc.Publishers {
			pubTopics = append(pubTopics, strings.ReplaceAll(sc.Topic, "{id}", fmt.Sprintf("%s-%d", r.runID, i)))
		}
	}
	return pubTopics, subFilters, subScopes, group
}

func (r *run) runMessages(ctx context.Context) (*Result, error) {
	sc := r.sc
	pubTopics, subFilters, subScopes, group := r.topology()
	r.start = time.Now() // provisional, for progress during connect
	res := &Result{Scenario: sc, Broker: r.u.Redacted(), Started: time.Now()}

	// The publishers' identities first: message handlers map stamps to them.
	r.pubs = make([]*publisher, len(pubTopics))
	for i, t := range pubTopics {
		r.pubs[i] = &publisher{r: r, idx: i, id: fmt.Sprintf("%s-%d", r.runID, i), topic: t, ackLat: newLatencies()}
	}
	r.warmupEnd.Store(math.MaxInt64) // nothing is recorded before publishing starts

	// Subscribers first, so nothing published is missed.
	r.subs = make([]*devices.Client, len(subFilters))
	r.lats = make([]*latencies, len(subFilters))
	defer r.closeAll()
	err := parallel(ctx, len(subFilters), func(ctx context.Context, i int) error {
		lat := newLatencies()
		r.lats[i] = lat
		scp := subScopes[i]
		o := r.clientOptions(fmt.Sprintf("lt-%s-sub-%d", r.runID, i))
		o.ReceiveMaximum = 4096
		o.OnMessage = func(m devices.Message) { r.handle(scp, lat, m.Payload, time.Now()) }
		c, err := devices.Dial(ctx, o)
		if err != nil {
			return err
		}
		r.subs[i] = c
		r.connected.Add(1)
		return c.Subscribe(ctx, subFilters[i], byte(*sc.SubscribeQoS))
	})
	if err != nil {
		return nil, err
	}
	err = parallel(ctx, len(r.pubs), func(ctx context.Context, i int) error {
		c, err := devices.Dial(ctx, r.clientOptions(fmt.Sprintf("lt-%s-pub-%d", r.runID, i)))
		if err != nil {
			return err
		}
		r.pubs[i].c = c
		r.connected.Add(1)
		return nil
	})
	if err != nil {
		return nil, err
	}
	res.Connections = int(r.connected.Load())

	// Queue consumers (bridge-queue).
	consumeCtx, stopConsumers := context.WithCancel(context.Background())
	var consumers sync.WaitGroup
	defer func() { stopConsumers(); consumers.Wait() }()
	if sc.Kind == Bridge {
		q := r.t.Queue
		if q == nil {
			q = NewHTTPQueue(sc.Queue.API, sc.Queue.Name, sc.Queue.APIKey, nil)
		}
		// Fail fast when the API, the queue or the key is not there.
		if c, ok := q.(interface{ Check(context.Context) error }); ok {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := c.Check(pctx)
			cancel()
			if err != nil {
				return nil, fmt.Errorf("queue %q at %s: %w", sc.Queue.Name, sc.Queue.API, err)
			}
		}
		for range sc.Queue.Consumers {
			lat := newLatencies()
			r.lats = append(r.lats, lat)
			consumers.Add(1)
			go func() { defer consumers.Done(); r.consume(consumeCtx, q, group, lat) }()
		}
	}

	// Publishing.
	dur := time.Duration(sc.Duration)
	r.start = time.Now().Add(20 * time.Millisecond)
	r.warmupEnd.Store(r.start.Add(time.Duration(sc.Warmup)).UnixNano())
	end := r.start.Add(dur)
	var samp *sampler
	if r.t.PID > 0 {
		samp = startSampler(r.t.PID, r.start, r.opts.SampleEvery)
	}
	tl := r.startTimeline(func() int64 { return r.connected.Load() })
	var pw sync.WaitGroup
	for i, p := range r.pubs {
		pw.Add(1)
		go func() {
			defer pw.Done()
			if sc.Mode == Closed {
				p.closedLoop(ctx, end)
				return
			}
			interval := time.Duration(float64(time.Second) * float64(len(r.pubs)) / float64(sc.Rate))
			offset := time.Duration(int64(interval) * int64(i) / int64(len(r.pubs)))
			p.openLoop(ctx, r.start.Add(offset), end, interval)
		}()
	}
	pw.Wait()
	pubEnd := time.Now()
	res.Elapsed = pubEnd.Sub(r.start).Seconds()

	// Drain: wait until everything written arrived and was acknowledged, or the drain time passed.
	tl.setPhase("drain")
	scopes := subScopes
	if group != nil {
		scopes = []*scope{group}
	}
	drainEnd := time.Now().Add(time.Duration(sc.Drain))
	for time.Now().Before(drainEnd) && ctx.Err() == nil {
		done := true
		for _, p := range r.pubs {
			if p.resolved.Load() < p.written.Load() {
				done = false
				break
			}
		}
		for _, s := range scopes {
			if !s.complete(r.pubs) {
				done = false
				break
			}
		}
		if done {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopConsumers()
	consumers.Wait()
	r.closeAll() // completes every outstanding ack callback
	res.Timeline = tl.stop()
	if samp != nil {
		res.Resources = samp.stop()
	}

	// Accounting.
	seenScope := map[*scope]bool{}
	for _, s := range scopes {
		if !seenScope[s] {
			seenScope[s] = true
			res.Counts.add(s.tally(r.pubs))
		}
	}
	res.Sent, res.Acked, res.PublishErrors = r.sent.Load(), r.acked.Load(), r.pubErrs.Load()
	res.Received, res.Foreign = r.received.Load(), r.foreign.Load()
	if res.Elapsed > 0 {
		res.SendRate = float64(res.Sent) / res.Elapsed
	}
	if last := r.lastRecv.Load(); last > 0 {
		if d := time.Unix(0, last).Sub(r.start).Seconds(); d > 0 {
			res.ReceiveRate = float64(res.Unique) / d
		}
	}
	all := newLatencies()
	for _, l := range r.lats {
		if l != nil {
			all.merge(l)
		}
	}
	res.Latency = all.summary()
	if sc.QoS > 0 {
		acks := newLatencies()
		for _, p := range r.pubs {
			acks.merge(p.ackLat)
		}
		res.AckLatency = acks.summary()
	}
	if res.PublishErrors > 0 {
		r.problem("%d publishes failed or were not acknowledged", res.PublishErrors)
	}
	if ctx.Err() != nil {
		r.problem("interrupted")
	}
	res.Problems = r.problems
	return res, nil
}

func (r *run) closeAll() {
	var wg sync.WaitGroup
	for _, c := range r.subs {
		if c != nil {
			wg.Add(1)
			go func() { defer wg.Done(); _ = c.Close() }()
		}
	}
	for _, p := range r.pubs {
		if p != nil && p.c != nil {
			wg.Add(1)
			go func() { defer wg.Done(); _ = p.c.Close() }()
		}
	}
	wg.Wait()
}

// consume receives, records and acks until ctx ends.
func (r *run) consume(ctx context.Context, q QueueConsumer, group *scope, lat *latencies) {
	sc := r.sc
	for ctx.Err() == nil {
		msgs, err := q.Receive(ctx, sc.Queue.Batch, time.Duration(sc.Queue.Wait), time.Duration(sc.Queue.Lease))
		if err != nil {
			if ctx.Err() == nil {
				r.problem("queue receive: %v", err)
				time.Sleep(50 * time.Millisecond)
			}
			continue
		}
		now := time.Now()
		receipts := make([]string, 0, len(msgs))
		for _, m := range msgs {
			r.handle(group, lat, m.Payload, now)
			receipts = append(receipts, m.Receipt)
		}
		if len(receipts) > 0 {
			actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := q.Ack(actx, receipts); err != nil {
				r.problem("queue ack: %v", err)
			}
			cancel()
		}
	}
}

// publisher is one publishing connection; its loop runs on one goroutine, its ack callbacks on
// the client's acknowledgement goroutine.
type publisher struct {
	r     *run
	idx   int
	id    string
	topic string
	c     *devices.Client

	written  atomic.Uint64
	resolved atomic.Uint64 // publishes whose ack callback ran
	seq      uint64

	mu     sync.Mutex
	acked  bitset
	ackLat *latencies
}

func (p *publisher) result() (uint64, bitset) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.written.Load(), p.acked
}

// send publishes the next message stamped with its intended send time.
func (p *publisher) send(ctx context.Context, intended time.Time) error {
	sc := p.r.sc
	p.seq++
	seq := p.seq
	payload := devices.AppendBlob(make([]byte, 0, max(sc.PayloadSize, 32)), p.id, seq, intended, sc.PayloadSize)
	qos := byte(sc.QoS)
	err := p.c.PublishAsync(ctx, devices.Message{Topic: p.topic, Payload: payload, QoS: qos}, func(err error) {
		defer p.resolved.Add(1)
		if err != nil {
			p.r.pubErrs.Add(1)
			return
		}
		if qos > 0 {
			now := time.Now()
			p.mu.Lock()
			p.acked.set(seq)
			p.mu.Unlock()
			p.ackLat.record(now.Sub(intended))
			p.r.acked.Add(1)
		}
	})
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
			p.r.problem("publisher %d: %v", p.idx, err)
		}
		p.seq-- // not written: the subscribers must not expect it
		return err
	}
	p.written.Store(seq)
	p.r.sent.Add(1)
	return nil
}

// openLoop sends one message per interval from first until end, each stamped with its slot's
// time; when it falls behind it sends the missed slots at once, so their latency shows the stall.
func (p *publisher) openLoop(ctx context.Context, first, end time.Time, interval time.Duration) {
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for next := first; next.Before(end); next = next.Add(interval) {
		if d := time.Until(next); d > 0 {
			t.Reset(d)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		if ctx.Err() != nil || p.send(ctx, next) != nil {
			return
		}
	}
}

// closedLoop sends as fast as the acknowledgement window allows until end.
func (p *publisher) closedLoop(ctx context.Context, end time.Time) {
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(end) {
			return
		}
		if p.send(ctx, now) != nil {
			return
		}
	}
}
