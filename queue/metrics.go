package queue

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicemq/sluice/wal"
)

// collector exposes every queue's state at scrape time (label queue); registered by Open when
// Options.Registerer is set and unregistered by Close.
type collector struct {
	m   *Manager
	reg prometheus.Registerer

	ready, leased, delayed, dead, bytes, oldest             *prometheus.Desc
	enqueued, acked, nacked, deadLettered, expired, dropped *prometheus.Desc
	commits, committed, fsyncs, fsyncSeconds                *prometheus.Desc // per queue and log
	recoveries                                              *prometheus.Desc
}

func newCollector(m *Manager) *collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("sluice_queue_"+name, help, []string{"queue"}, nil)
	}
	l := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("sluice_queue_"+name, help, []string{"queue", "log"}, nil)
	}
	return &collector{
		m:            m,
		ready:        d("ready", "Messages ready for delivery."),
		leased:       d("leased", "Messages leased to consumers."),
		delayed:      d("delayed", "Messages waiting for a retry backoff or nack delay."),
		dead:         d("dead", "Messages in the dead-letter queue."),
		bytes:        d("bytes", "Record bytes of the messages in the queue."),
		oldest:       d("oldest_age_seconds", "Age of the oldest message in the queue."),
		enqueued:     d("enqueued_total", "Messages enqueued since open."),
		acked:        d("acked_total", "Messages acked since open."),
		nacked:       d("nacked_total", "Deliveries nacked since open."),
		deadLettered: d("dead_lettered_total", "Messages moved to the dead-letter queue since open."),
		expired:      d("expired_total", "Messages that exceeded max age since open."),
		dropped:      d("dropped_total", "Messages dropped (overflow, purge, expiry or attempts without dead-lettering) since open."),
		commits:      l("commits_total", "Group commits (one write and, under sync always, one fsync each) since open; records_total/commits_total is the mean batch."),
		committed:    l("committed_records_total", "Records written by group commits since open."),
		fsyncs:       l("fsyncs_total", "Fsyncs of the log's tail segment since open."),
		recoveries:   d("recoveries_total", "Reopens of the queue after a failed write (disk full, I/O error) since the Manager opened."),
		fsyncSeconds: l("fsync_seconds_total", "Time spent in those fsyncs; divided by fsyncs_total, the mean fsync latency."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.ready, c.leased, c.delayed, c.dead, c.bytes, c.oldest,
		c.enqueued, c.acked, c.nacked, c.deadLettered, c.expired, c.dropped,
		c.commits, c.committed, c.fsyncs, c.fsyncSeconds, c.recoveries} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.m.mu.RLock()
	qs := make([]*queue, 0, len(c.m.queues))
	recoveries := make(map[string]uint64, len(c.m.queues))
	for name, q := range c.m.queues {
		qs = append(qs, q)
		recoveries[name] = c.m.recoveries[name]
	}
	c.m.mu.RUnlock()
	for name, n := range recoveries { // also for a queue that is down, waiting for its next reopen
		ch <- prometheus.MustNewConstMetric(c.recoveries, prometheus.CounterValue, float64(n), name)
	}
	for _, q := range qs {
		if q.enter() != nil {
			continue
		}
		s := q.stats(q.now())
		logs := [...]struct {
			name string
			st   wal.Stats
		}{{"messages", q.src.log.Stats()}, {"acks", q.src.acks.Stats()}}
		q.exit()
		for _, lg := range logs {
			k := func(d *prometheus.Desc, v float64) {
				ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, s.Name, lg.name)
			}
			k(c.commits, float64(lg.st.Commits))
			k(c.committed, float64(lg.st.Records))
			k(c.fsyncs, float64(lg.st.Fsyncs))
			k(c.fsyncSeconds, lg.st.FsyncTime.Seconds())
		}
		g := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, s.Name)
		}
		k := func(d *prometheus.Desc, v uint64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), s.Name)
		}
		g(c.ready, float64(s.Ready))
		g(c.leased, float64(s.Leased))
		g(c.delayed, float64(s.Delayed))
		g(c.dead, float64(s.Dead))
		g(c.bytes, float64(s.Bytes))
		g(c.oldest, s.OldestAge.Seconds())
		k(c.enqueued, s.Enqueued)
		k(c.acked, s.Acked)
		k(c.nacked, s.Nacked)
		k(c.deadLettered, s.DeadLettered)
		k(c.expired, s.Expired)
		k(c.dropped, s.Dropped)
	}
}
