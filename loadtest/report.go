package loadtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the results of one or more scenarios against one broker or, when comparing, two.
type Report struct {
	Generated time.Time       `json:"generated"`
	Machine   Machine         `json:"machine"`
	Brokers   []string        `json:"brokers"` // labels, in the order of each scenario's Results
	Scenarios []ScenarioEntry `json:"scenarios"`
}

// ScenarioEntry is one scenario's results, one per broker.
type ScenarioEntry struct {
	Name    string    `json:"name"`
	Results []*Result `json:"results"`
	// Ratios are the second broker's figure divided by the first's, by metric name
	// (see Metrics), when comparing two brokers.
	Ratios map[string]float64 `json:"ratios,omitempty"`
}

// Machine notes where the figures were taken.
type Machine struct {
	Hostname  string `json:"hostname"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	MemoryMiB int64  `json:"memory_mib,omitempty"`
	GoVersion string `json:"go_version"`
}

func thisMachine() Machine {
	m := Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	m.Hostname, _ = os.Hostname()
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		_ = f.Close()
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(data), "MemTotal: %d kB", &kb); err == nil {
			m.MemoryMiB = kb >> 10
		}
	}
	return m
}

// NewReport starts a report for brokers, labelled as given (e.g. "sluice", "mosquitto").
func NewReport(brokers ...string) *Report {
	return &Report{Generated: time.Now().UTC(), Machine: thisMachine(), Brokers: brokers}
}

// Add appends one scenario's results, in the order of the report's brokers; with two, it
// computes the ratios.
func (rep *Report) Add(results ...*Result) {
	e := ScenarioEntry{Results: results}
	if len(results) > 0 && results[0] != nil {
		e.Name = results[0].Scenario.Name
	}
	if len(results) == 2 && results[0] != nil && results[1] != nil {
		e.Ratios = map[string]float64{}
		for _, m := range Metrics() {
			a, okA := m.Value(results[0])
			b, okB := m.Value(results[1])
			if okA && okB && a != 0 {
				e.Ratios[m.Name] = b / a
			}
		}
	}
	rep.Scenarios = append(rep.Scenarios, e)
}

// Lost is the total of messages lost in all results.
func (rep *Report) Lost() uint64 {
	var n uint64
	for _, e := range rep.Scenarios {
		for _, r := range e.Results {
			if r != nil {
				n += r.Lost
			}
		}
	}
	return n
}

// Metric is one row of the report's table.
type Metric struct {
	Name   string
	Unit   string
	Better string // "higher" or "lower" (for reading ratios)
	Value  func(r *Result) (float64, bool)
}

func lat(p func(*Result) *Percentiles, f func(*Percentiles) float64) func(*Result) (float64, bool) {
	return func(r *Result) (float64, bool) {
		x := p(r)
		if x == nil {
			return 0, false
		}
		return f(x), true
	}
}

func msgs(r *Result) bool { return r.Scenario.Kind != Idle && r.Scenario.Kind != Storm }

// Metrics returns the report's rows, in order (a constant table).
func Metrics() []Metric { return metricTable }

var metricTable = []Metric{
	{"connections", "", "", func(r *Result) (float64, bool) { return float64(r.Connections), true }},
	{"sent", "msgs", "", func(r *Result) (float64, bool) { return float64(r.Sent), msgs(r) }},
	{"send rate", "msg/s", "higher", func(r *Result) (float64, bool) { return r.SendRate, msgs(r) }},
	{"receive rate", "msg/s", "higher", func(r *Result) (float64, bool) { return r.ReceiveRate, msgs(r) }},
	{"lost", "msgs", "lower", func(r *Result) (float64, bool) { return float64(r.Lost), msgs(r) }},
	{"lost after ack", "msgs", "lower", func(r *Result) (float64, bool) { return float64(r.LostAcked), msgs(r) && r.Scenario.QoS > 0 }},
	{"duplicates", "msgs", "lower", func(r *Result) (float64, bool) { return float64(r.Duplicates), msgs(r) }},
	{"out of order", "msgs", "lower", func(r *Result) (float64, bool) { return float64(r.OutOfOrder), msgs(r) }},
	{"latency p50", "ms", "lower", lat(func(r *Result) *Percentiles { return r.Latency }, func(p *Percentiles) float64 { return p.P50 })},
	{"latency p90", "ms", "lower", lat(func(r *Result) *Percentiles { return r.Latency }, func(p *Percentiles) float64 { return p.P90 })},
	{"latency p99", "ms", "lower", lat(func(r *Result) *Percentiles { return r.Latency }, func(p *Percentiles) float64 { return p.P99 })},
	{"latency p99.9", "ms", "lower", lat(func(r *Result) *Percentiles { return r.Latency }, func(p *Percentiles) float64 { return p.P999 })},
	{"latency max", "ms", "lower", lat(func(r *Result) *Percentiles { return r.Latency }, func(p *Percentiles) float64 { return p.Max })},
	{"ack p50", "ms", "lower", lat(func(r *Result) *Percentiles { return r.AckLatency }, func(p *Percentiles) float64 { return p.P50 })},
	{"ack p99", "ms", "lower", lat(func(r *Result) *Percentiles { return r.AckLatency }, func(p *Percentiles) float64 { return p.P99 })},
	{"connect p50", "ms", "lower", lat(func(r *Result) *Percentiles { return r.ConnectLatency }, func(p *Percentiles) float64 { return p.P50 })},
	{"connect p99", "ms", "lower", lat(func(r *Result) *Percentiles { return r.ConnectLatency }, func(p *Percentiles) float64 { return p.P99 })},
	{"all connected after", "s", "lower", func(r *Result) (float64, bool) { return r.ConnectAllS, !msgs(r) && r.ConnectAllS > 0 }},
	{"connect failures", "", "lower", func(r *Result) (float64, bool) { return float64(r.ConnectFailed), !msgs(r) }},
	{"broker peak RSS", "MiB", "lower", func(r *Result) (float64, bool) {
		if r.Resources == nil {
			return 0, false
		}
		return float64(r.Resources.PeakRSS) / (1 << 20), true
	}},
	{"broker RSS/connection", "KiB", "lower", func(r *Result) (float64, bool) {
		if r.Resources == nil || r.Resources.RSSPerConn == 0 {
			return 0, false
		}
		return r.Resources.RSSPerConn / 1024, true
	}},
	{"broker mean CPU", "%", "lower", func(r *Result) (float64, bool) {
		if r.Resources == nil {
			return 0, false
		}
		return r.Resources.MeanCPU, true
	}},
}

func fmtNum(v float64) string {
	switch {
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return fmt.Sprintf("%.0f", v)
	case v >= 100_000:
		return fmt.Sprintf("%.0f", v)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// Describe is a one-line summary of a scenario's shape.
func (s Scenario) Describe() string {
	var b strings.Builder
	switch s.Kind {
	case Idle, Storm:
		fmt.Fprintf(&b, "%d connections", s.Connections)
		if s.ConnectRate > 0 {
			fmt.Fprintf(&b, " at %s/s", fmtNum(float64(s.ConnectRate)))
		} else {
			b.WriteString(" at once")
		}
		fmt.Fprintf(&b, ", held %v, MQTT %s", time.Duration(s.Duration), s.Protocol)
		return b.String()
	case P2P:
		fmt.Fprintf(&b, "%d pairs", s.Pairs)
	case Bridge:
		fmt.Fprintf(&b, "%d publishers → queue %s (%d consumers)", s.Publishers, s.Queue.Name, s.Queue.Consumers)
	case Shared:
		fmt.Fprintf(&b, "%d publishers → $share group of %d", s.Publishers, s.Subscribers)
	default:
		fmt.Fprintf(&b, "%d publishers → %d subscribers", s.Publishers, s.Subscribers)
	}
	if s.Mode == Closed {
		fmt.Fprintf(&b, ", closed loop (%d in flight)", s.Inflight)
	} else {
		fmt.Fprintf(&b, ", %s msg/s", fmtNum(float64(s.Rate)))
	}
	fmt.Fprintf(&b, ", QoS %d", s.QoS)
	if s.SubscribeQoS != nil && *s.SubscribeQoS != s.QoS && s.Kind != Bridge {
		fmt.Fprintf(&b, " (subscribed at %d)", *s.SubscribeQoS)
	}
	fmt.Fprintf(&b, ", %d B, %v, MQTT %s", s.PayloadSize, time.Duration(s.Duration), s.Protocol)
	return b.String()
}

// WriteTable writes the report as aligned text tables, one per scenario.
func WriteTable(w io.Writer, rep *Report) error {
	bw := bufio.NewWriter(w)
	for _, e := range rep.Scenarios {
		if len(e.Results) == 0 || e.Results[0] == nil {
			continue
		}
		fmt.Fprintf(bw, "\n== %s: %s\n", e.Name, e.Results[0].Scenario.Describe())
		tw := tabwriter.NewWriter(bw, 0, 0, 2, ' ', tabwriter.AlignRight)
		hdr := "metric\tunit\t"
		for _, b := range rep.Brokers {
			hdr += b + "\t"
		}
		if len(rep.Brokers) == 2 {
			hdr += rep.Brokers[1] + "/" + rep.Brokers[0] + "\t"
		}
		fmt.Fprintln(tw, hdr)
		for _, m := range Metrics() {
			row := m.Name + "\t" + m.Unit + "\t"
			any := false
			for _, r := range e.Results {
				if r == nil {
					row += "-\t"
					continue
				}
				if v, ok := m.Value(r); ok {
					row += fmtNum(v) + "\t"
					any = true
				} else {
					row += "-\t"
				}
			}
			if !any {
				continue
			}
			if len(rep.Brokers) == 2 {
				if x, ok := e.Ratios[m.Name]; ok {
					row += fmt.Sprintf("%.2fx", x) + "\t"
				} else {
					row += "-\t"
				}
			}
			fmt.Fprintln(tw, row)
		}
		_ = tw.Flush()
		for i, r := range e.Results {
			if r == nil {
				continue
			}
			for _, p := range r.Problems {
				fmt.Fprintf(bw, "  %s: %s\n", rep.Brokers[i], p)
			}
		}
	}
	fmt.Fprintf(bw, "\nmachine: %s, %d CPUs, %d MiB, %s/%s, %s\n", orStr(rep.Machine.CPUModel, "unknown CPU"), rep.Machine.CPUs,
		rep.Machine.MemoryMiB, rep.Machine.OS, rep.Machine.Arch, rep.Machine.GoVersion)
	return bw.Flush()
}

func orStr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// WriteJSON writes the report as indented JSON.
func WriteJSON(w io.Writer, rep *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}
