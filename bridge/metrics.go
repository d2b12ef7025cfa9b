package bridge

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemq/sluice/queue"
)

// metrics are the bridge's Prometheus series. Children are resolved at New for the rule queues,
// so the hot path does no label lookups. A nil *metrics (no Registerer) records nothing.
type metrics struct {
	perQueue map[string]*queueMetrics
}

type queueMetrics struct {
	enqueued [3]prometheus.Counter // by QoS
	latency  prometheus.Observer
	dropped  prometheus.Counter
	failures *prometheus.CounterVec // curried with queue; by reason
}

func newMetrics(reg prometheus.Registerer, queues []string) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	enq := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_bridge_enqueued_total",
		Help: "MQTT messages written into queues by the bridge, by queue and QoS.",
	}, []string{"queue", "qos"})
	fail := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_bridge_failures_total",
		Help: "MQTT messages the bridge could not write into a queue, by queue and reason (full, timeout, too_large, not_found, closed, error).",
	}, []string{"queue", "reason"})
	drop := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sluice_bridge_qos0_dropped_total",
		Help: "QoS 0 messages dropped because the queue's bridge buffer was full or the bridge was closed.",
	}, []string{"queue"})
	lat := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sluice_bridge_enqueue_duration_seconds",
		Help:    "Time from handing a message to the queue until it is durable, by queue.",
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16), // 50µs .. ~1.6s
	}, []string{"queue"})
	for _, c := range []prometheus.Collector{enq, fail, drop, lat} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m := &metrics{perQueue: make(map[string]*queueMetrics, len(queues))}
	for _, q := range queues {
		qm := &queueMetrics{
			latency:  lat.WithLabelValues(q),
			dropped:  drop.WithLabelValues(q),
			failures: fail.MustCurryWith(prometheus.Labels{"queue": q}),
		}
		for qos := range qm.enqueued {
			qm.enqueued[qos] = enq.WithLabelValues(q, strconv.Itoa(qos))
		}
		m.perQueue[q] = qm
	}
	return m, nil
}

func (m *metrics) get(q string) *queueMetrics {
	if m == nil {
		return nil
	}
	return m.perQueue[q]
}

func (m *metrics) enqueued(q string, qos byte, d time.Duration) {
	if qm := m.get(q); qm != nil && qos < 3 {
		qm.enqueued[qos].Inc()
		qm.latency.Observe(d.Seconds())
	}
}

// enqueuedAll is enqueued for each of msgs, written together in d.
func (m *metrics) enqueuedAll(q string, msgs []queue.Message, d time.Duration) {
	qm := m.get(q)
	if qm == nil {
		return
	}
	s := d.Seconds()
	for i := range msgs {
		if qos := msgs[i].QoS; qos < 3 {
			qm.enqueued[qos].Inc()
			qm.latency.Observe(s)
		}
	}
}

func (m *metrics) failure(q, reason string) { m.failures(q, reason, 1) }

func (m *metrics) failures(q, reason string, n int) {
	if qm := m.get(q); qm != nil {
		qm.failures.WithLabelValues(reason).Add(float64(n))
	}
}

func (m *metrics) dropped(q string) {
	if qm := m.get(q); qm != nil {
		qm.dropped.Inc()
	}
}
