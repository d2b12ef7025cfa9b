package bridge

import (
	"github.com/prometheus/client_golang/prometheus"
)

// uplinkMetrics are one uplink's series, labelled uplink=<name>. A nil *uplinkMetrics records nothing.
type uplinkMetrics struct {
	reg        prometheus.Registerer
	collectors []prometheus.Collector
	forwarded  prometheus.Counter
	failures   *prometheus.CounterVec
	downlink   *prometheus.CounterVec
}

func newUplinkMetrics(reg prometheus.Registerer, u *Uplink) (*uplinkMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	labels := prometheus.Labels{"uplink": u.opts.Name, "queue": u.opts.Queue}
	m := &uplinkMetrics{
		reg: reg,
		forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "sluice_uplink_forwarded_total",
			Help:        "Messages the upstream broker confirmed (PUBACK or PUBCOMP) and the uplink acked in its queue.",
			ConstLabels: labels,
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_uplink_failures_total",
			Help: "Uplink failures by reason: connect (an attempt failed), connection_lost, refused (the upstream " +
				"answered a publish with a reason code >= 0x80; the message goes back to the queue), expired " +
				"(message expiry passed while queued; dropped), stale_receipt (a lease ran out; delivered again).",
			ConstLabels: labels,
		}, []string{"reason"}),
		downlink: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "sluice_uplink_downlink_total",
			Help:        "Messages received from the upstream by the downlink, by result: published (locally), failed, dropped.",
			ConstLabels: labels,
		}, []string{"result"}),
	}
	state := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "sluice_uplink_state",
		Help:        "Uplink state: 0 stopped, 1 connecting or waiting to reconnect, 2 connected.",
		ConstLabels: labels,
	}, func() float64 { return float64(u.state.Load()) })
	inflight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "sluice_uplink_in_flight",
		Help:        "Publishes sent upstream and not yet confirmed.",
		ConstLabels: labels,
	}, func() float64 { return float64(u.inflight.Load()) })
	backlog := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "sluice_uplink_backlog_messages",
		Help:        "Messages of the uplink's queue not yet forwarded: ready, leased (in flight) and delayed (backing off).",
		ConstLabels: labels,
	}, func() float64 {
		st, err := u.src.Stats(u.opts.Queue)
		if err != nil {
			return 0
		}
		return float64(st.Ready + st.Leased + st.Delayed)
	})
	oldest := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "sluice_uplink_oldest_age_seconds",
		Help:        "Age of the oldest message of the uplink's queue not yet forwarded.",
		ConstLabels: labels,
	}, func() float64 {
		st, err := u.src.Stats(u.opts.Queue)
		if err != nil {
			return 0
		}
		return st.OldestAge.Seconds()
	})
	for _, reason := range []string{"connect", "connection_lost", "refused", "expired", "stale_receipt"} {
		m.failures.WithLabelValues(reason)
	}
	m.collectors = []prometheus.Collector{m.forwarded, m.failures, m.downlink, state, inflight, backlog, oldest}
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors[:i] {
				reg.Unregister(done)
			}
			return nil, err
		}
	}
	return m, nil
}

// unregister removes the series (the uplink is closed; a new one with the same name may register).
func (m *uplinkMetrics) unregister() {
	if m == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}

func (m *uplinkMetrics) forward(n int) {
	if m != nil && n > 0 {
		m.forwarded.Add(float64(n))
	}
}

func (m *uplinkMetrics) fail(reason string, n int) {
	if m != nil && n > 0 {
		m.failures.WithLabelValues(reason).Add(float64(n))
	}
}

func (m *uplinkMetrics) down(result string) {
	if m != nil {
		m.downlink.WithLabelValues(result).Inc()
	}
}
