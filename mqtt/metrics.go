package mqtt

import (
	"fmt"
	"strconv"
	"sync/atomic"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/prometheus/client_golang/prometheus"
)

// Drop reasons (label "reason" of sluice_mqtt_dropped_messages_total).
const (
	dropSlowQoS0     = "slow_subscriber_qos0"     // QoS 0 message to a subscriber whose queue was full
	dropDeferred     = "slow_subscriber_deferred" // QoS 1/2 message to a full queue, kept for redelivery on reconnect (not lost)
	dropInflightFull = "inflight_full"            // QoS 1/2 message to a subscriber with MaxInflight unacked messages
	dropQoSExpired   = "qos_dropped"              // in-flight QoS 1/2 message dropped by mochi (expiry, clean session end)
	dropNotRouted    = "acl_denied_publish"       // publish denied by ACL, not routed
)

// metrics are the broker's Prometheus collectors. A nil *metrics (no Registerer) ignores every
// call. Per-message counters are pre-resolved per QoS so the hot path does no label lookups.
type metrics struct {
	msgsIn, bytesIn, msgsOut, bytesOut [3]prometheus.Counter
	dropped                            *prometheus.CounterVec
	droppedByReason                    map[string]prometheus.Counter
	authFailures                       *prometheus.CounterVec
	connectTimeouts                    prometheus.Counter
	rejected                           prometheus.Counter
	tlsFailures                        prometheus.Counter
	rateLimited                        prometheus.Counter
	slowDisconnects                    prometheus.Counter
	accepted                           prometheus.Counter
	open                               atomic.Int64
}

func newMetrics(reg prometheus.Registerer, ms *mochi.Server, srv *Server) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	const ns, sub = "sluice", "mqtt"
	m := &metrics{}
	counterVec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, labels)
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, f)
	}
	msgsIn := counterVec("messages_received_total", "PUBLISH packets received from clients, by QoS.", "qos")
	bytesIn := counterVec("payload_bytes_received_total", "Payload bytes of PUBLISH packets received, by QoS.", "qos")
	msgsOut := counterVec("messages_sent_total", "PUBLISH packets written to clients, by QoS.", "qos")
	bytesOut := counterVec("payload_bytes_sent_total", "Payload bytes of PUBLISH packets written, by QoS.", "qos")
	for q := range 3 {
		l := strconv.Itoa(q)
		m.msgsIn[q], m.bytesIn[q] = msgsIn.WithLabelValues(l), bytesIn.WithLabelValues(l)
		m.msgsOut[q], m.bytesOut[q] = msgsOut.WithLabelValues(l), bytesOut.WithLabelValues(l)
	}
	m.dropped = counterVec("dropped_messages_total", "Messages not delivered to a subscriber or not routed, by reason.", "reason")
	m.droppedByReason = map[string]prometheus.Counter{}
	for _, r := range []string{dropSlowQoS0, dropDeferred, dropInflightFull, dropQoSExpired, dropNotRouted} {
		m.droppedByReason[r] = m.dropped.WithLabelValues(r)
	}
	m.authFailures = counterVec("auth_failures_total", "Connections refused by authentication, by reason.", "reason")
	m.connectTimeouts = counter("connect_timeouts_total", "Connections closed for not completing TLS handshake and CONNECT in time.")
	m.rejected = counter("connections_rejected_total", "Connections closed at accept because max connections was reached.")
	m.tlsFailures = counter("tls_handshake_failures_total", "TLS handshakes that failed.")
	m.rateLimited = counter("publish_rate_limited_total", "PUBLISH packets delayed by the per-client publish rate.")
	m.slowDisconnects = counter("slow_subscriber_disconnects_total", "Subscribers disconnected because their queue stayed full.")
	m.accepted = counter("connections_accepted_total", "Connections accepted.")
	info := ms.Info
	cs := []prometheus.Collector{msgsIn, bytesIn, msgsOut, bytesOut, m.dropped, m.authFailures,
		m.connectTimeouts, m.rejected, m.tlsFailures, m.rateLimited, m.slowDisconnects, m.accepted,
		gauge("connections", "Open network connections (including ones not yet past CONNECT).", func() float64 { return float64(srv.conns.Load()) }),
		gauge("clients_connected", "Connected MQTT clients.", func() float64 { return float64(atomic.LoadInt64(&info.ClientsConnected)) }),
		gauge("sessions", "Sessions known to the broker, connected or not.", func() float64 { return float64(ms.Clients.Len()) }),
		gauge("subscriptions", "Subscriptions.", func() float64 { return float64(atomic.LoadInt64(&info.Subscriptions)) }),
		gauge("retained_messages", "Retained messages.", func() float64 { return float64(ms.Topics.Retained.Len()) }),
		&mochiDrops{desc: prometheus.NewDesc(ns+"_"+sub+"_inflight_full_dropped_total",
			"QoS 1/2 messages mochi dropped because the subscriber had MaxInflight unacked messages.", nil, nil), info: info},
		gauge("inflight_messages", "QoS 1/2 messages in flight.", func() float64 { return float64(atomic.LoadInt64(&info.Inflight)) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("mqtt: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) in(qos byte, n int) {
	if m != nil && qos < 3 {
		m.msgsIn[qos].Inc()
		m.bytesIn[qos].Add(float64(n))
	}
}

func (m *metrics) out(qos byte, n int) {
	if m != nil && qos < 3 {
		m.msgsOut[qos].Inc()
		m.bytesOut[qos].Add(float64(n))
	}
}

func (m *metrics) drop(reason string) {
	if m != nil {
		m.droppedByReason[reason].Inc()
	}
}

func (m *metrics) authFailure(reason string) {
	if m != nil {
		m.authFailures.WithLabelValues(reason).Inc()
	}
}

func (m *metrics) connectTimeout() {
	if m != nil {
		m.connectTimeouts.Inc()
	}
}

func (m *metrics) connRejected() {
	if m != nil {
		m.rejected.Inc()
	}
}

func (m *metrics) connAccepted() {
	if m != nil {
		m.accepted.Inc()
	}
}

func (m *metrics) connClosed() {}

func (m *metrics) tlsFailure() {
	if m != nil {
		m.tlsFailures.Inc()
	}
}

func (m *metrics) rateLimit() {
	if m != nil {
		m.rateLimited.Inc()
	}
}

func (m *metrics) slowDisconnect() {
	if m != nil {
		m.slowDisconnects.Inc()
	}
}

// mochiDrops exports mochi's own count of messages dropped at the in-flight limit (mochi counts
// them in Info.InflightDropped and calls no hook).
type mochiDrops struct {
	desc *prometheus.Desc
	info *system.Info
}

func (m *mochiDrops) Describe(ch chan<- *prometheus.Desc) { ch <- m.desc }
func (m *mochiDrops) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(atomic.LoadInt64(&m.info.InflightDropped)))
}
