package loadtest

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/sluicemq/sluice/devices"
)

// runConnections runs the idle and storm scenarios: Connections clients connect (at ConnectRate,
// or all at once), stay connected for Duration, then disconnect.
func (r *run) runConnections(ctx context.Context) (*Result, error) {
	sc := r.sc
	res := &Result{Scenario: sc, Broker: r.u.Redacted(), Started: time.Now()}
	connLat := newLatencies()
	var failed atomic.Uint64
	cfg := devices.Config{
		Broker: r.t.Broker, Count: sc.Connections, IDPattern: "lt-" + r.runID + "-c{n}", ConnectRate: sc.ConnectRate,
		Protocol: sc.Protocol, Idle: true, Username: sc.Username, Password: sc.Password,
		KeepAlive: devices.Duration(60 * time.Second), ReceiveMaximum: 16,
		Reconnect: devices.Backoff{Initial: devices.Duration(100 * time.Millisecond), Max: devices.Duration(2 * time.Second)},
	}
	if sc.Insecure {
		cfg.TLS.InsecureSkipVerify = true
	}
	fleet, err := devices.NewFleet(cfg, devices.Options{Logger: r.opts.Logger, OnConnect: func(_ string, took time.Duration, err error) {
		if err != nil {
			failed.Add(1)
			return
		}
		connLat.record(took)
	}})
	if err != nil {
		return nil, err
	}
	r.start = time.Now()
	var samp *sampler
	if r.t.PID > 0 {
		samp = startSampler(r.t.PID, r.start, r.opts.SampleEvery)
	}
	tl := r.startTimeline(func() int64 { return fleet.Stats().Connected })
	tl.setPhase("connect")

	fctx, stop := context.WithCancel(ctx)
	defer stop()
	runErr := make(chan error, 1)
	go func() { runErr <- fleet.Run(fctx) }()

	// Ramp: until everyone is connected, or the ramp clearly failed.
	ramp := 30 * time.Second
	if sc.ConnectRate > 0 {
		ramp += time.Duration(2 * float64(sc.Connections) / float64(sc.ConnectRate) * float64(time.Second))
	}
	rampEnd := time.Now().Add(ramp)
	var fleetErr error
	exited := false
ramp:
	for fleet.Stats().Connected < int64(sc.Connections) {
		select {
		case fleetErr = <-runErr:
			exited = true
			break ramp
		case <-ctx.Done():
			break ramp
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(rampEnd) {
			r.problem("only %d of %d connections were up after %v", fleet.Stats().Connected, sc.Connections, ramp)
			break
		}
	}
	if exited {
		tl.stop()
		if samp != nil {
			samp.stop()
		}
		if fleetErr != nil {
			return nil, fleetErr
		}
	}
	if fleet.Stats().Connected == int64(sc.Connections) {
		res.ConnectAllS = time.Since(r.start).Seconds()
	}
	res.Connections = int(fleet.Stats().Connected)
	var peakAtFull int64
	if samp != nil {
		samp.sample()
		peakAtFull = samp.peakRSS()
	}
	// Hold.
	tl.setPhase("run")
	hold := time.NewTimer(time.Duration(sc.Duration))
	select {
	case <-hold.C:
	case <-ctx.Done():
		r.problem("interrupted")
	case fleetErr = <-runErr:
		exited = true
	}
	hold.Stop()
	res.Elapsed = time.Since(r.start).Seconds()
	stop()
	if !exited {
		fleetErr = <-runErr
	}
	if fleetErr != nil {
		r.problem("%v", fleetErr)
	}
	res.Timeline = tl.stop()
	if samp != nil {
		res.Resources = samp.stop()
		// Per connection only for idle: a storm's connections are not held long enough to say.
		if sc.Kind == Idle && res.Connections > 0 && peakAtFull > res.Resources.StartRSS {
			res.Resources.RSSPerConn = float64(max(peakAtFull, res.Resources.PeakRSS)-res.Resources.StartRSS) / float64(res.Connections)
		}
	}
	st := fleet.Stats()
	res.ConnectLatency = connLat.summary()
	res.ConnectFailed = failed.Load()
	if st.Errors > 0 {
		r.problem("%d connection errors (failed connects or lost connections)", st.Errors)
	}
	res.Problems = r.problems
	return res, nil
}
