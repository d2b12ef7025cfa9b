package loadtest

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
)

// palette for brokers, then "sent".
var palette = [...]string{"#2563eb", "#dc2626", "#059669", "#d97706"}

// WriteHTML writes the report as one self-contained HTML page: tables, a throughput-over-time
// chart and a latency-percentile chart per scenario, as inline SVG (no scripts, no external files).
func WriteHTML(w io.Writer, rep *Report) error {
	type section struct {
		Name, Describe string
		Table          template.HTML
		Throughput     template.HTML
		Latency        template.HTML
		Problems       []string
	}
	var secs []section
	for _, e := range rep.Scenarios {
		if len(e.Results) == 0 || e.Results[0] == nil {
			continue
		}
		s := section{Name: e.Name, Describe: e.Results[0].Scenario.Describe(), Table: htmlTable(rep, e)}
		s.Throughput = throughputSVG(rep.Brokers, e.Results)
		s.Latency = latencySVG(rep.Brokers, e.Results)
		for i, r := range e.Results {
			if r != nil {
				for _, p := range r.Problems {
					s.Problems = append(s.Problems, rep.Brokers[i]+": "+p)
				}
			}
		}
		secs = append(secs, s)
	}
	ratio := ""
	if len(rep.Brokers) == 2 {
		ratio = rep.Brokers[1] + "/" + rep.Brokers[0]
	}
	return pageTmpl.Execute(w, map[string]any{"R": rep, "Sections": secs, "Brokers": strings.Join(rep.Brokers, " vs "), "Ratio": ratio})
}

var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sluice load test: {{.Brokers}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#111;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 10px;text-align:right;border-bottom:1px solid #eee}
th:first-child,td:first-child{text-align:left}.bad{color:#dc2626;font-weight:bold}.good{color:#059669}
.charts{display:flex;flex-wrap:wrap;gap:1em}.muted{color:#666}svg{background:#fafafa;border:1px solid #eee}
</style></head><body>
<h1>Load test: {{.Brokers}}</h1>
<p class="muted">{{.R.Generated.Format "2006-01-02 15:04 MST"}} · {{.R.Machine.CPUModel}} · {{.R.Machine.CPUs}} CPUs · {{.R.Machine.MemoryMiB}} MiB · {{.R.Machine.OS}}/{{.R.Machine.Arch}} · {{.R.Machine.GoVersion}}</p>
{{if .Ratio}}<p class="muted">The last column is {{.Ratio}}: <span class="good">green</span> where the second broker did better by more than 5%, <span class="bad">red</span> where it did worse. Latency is measured from each message's intended send time.</p>{{end}}
{{range .Sections}}<h2>{{.Name}}</h2><p class="muted">{{.Describe}}</p>
{{.Table}}
{{range .Problems}}<p class="bad">{{.}}</p>{{end}}
<div class="charts">{{.Throughput}}{{.Latency}}</div>
{{end}}</body></html>
`))

func htmlTable(rep *Report, e ScenarioEntry) template.HTML {
	var b strings.Builder
	b.WriteString("<table><tr><th>metric</th><th>unit</th>")
	for _, br := range rep.Brokers {
		fmt.Fprintf(&b, "<th>%s</th>", template.HTMLEscapeString(br))
	}
	if len(rep.Brokers) == 2 {
		fmt.Fprintf(&b, "<th>%s/%s</th>", template.HTMLEscapeString(rep.Brokers[1]), template.HTMLEscapeString(rep.Brokers[0]))
	}
	b.WriteString("</tr>\n")
	for _, m := range Metrics() {
		var cells []string
		any := false
		for _, r := range e.Results {
			v, ok := 0.0, false
			if r != nil {
				v, ok = m.Value(r)
			}
			if !ok {
				cells = append(cells, "<td>-</td>")
				continue
			}
			any = true
			cls := ""
			if (m.Name == "lost" || m.Name == "lost after ack") && v > 0 {
				cls = ` class="bad"`
			}
			cells = append(cells, fmt.Sprintf("<td%s>%s</td>", cls, fmtNum(v)))
		}
		if !any {
			continue
		}
		fmt.Fprintf(&b, "<tr><td>%s</td><td>%s</td>%s", template.HTMLEscapeString(m.Name), template.HTMLEscapeString(m.Unit), strings.Join(cells, ""))
		if len(rep.Brokers) == 2 {
			if x, ok := e.Ratios[m.Name]; ok {
				cls := ""
				if (m.Better == "higher" && x > 1.05) || (m.Better == "lower" && x < 0.95) {
					cls = ` class="good"`
				} else if (m.Better == "higher" && x < 0.95) || (m.Better == "lower" && x > 1.05) {
					cls = ` class="bad"`
				}
				fmt.Fprintf(&b, "<td%s>%.2fx</td>", cls, x)
			} else {
				b.WriteString("<td>-</td>")
			}
		}
		b.WriteString("</tr>\n")
	}
	b.WriteString("</table>")
	return template.HTML(b.String()) //nolint:gosec // every text is escaped above
}

const (
	chartW, chartH         = 520, 300
	padL, padR, padT, padB = 60, 16, 30, 40
)

type series struct {
	label string
	color string
	dash  bool
	xs    []float64
	ys    []float64
}

// niceMax rounds v up to 1, 2 or 5 × 10^k.
func niceMax(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// throughputSVG plots messages per second over time (received per broker, and sent), or
// connected clients for idle and storm.
func throughputSVG(brokers []string, results []*Result) template.HTML {
	var ss []series
	title, unit := "throughput over time", "msg/s"
	for i, r := range results {
		if r == nil || len(r.Timeline) == 0 {
			continue
		}
		if !msgs(r) {
			title, unit = "connected clients over time", "clients"
			s := series{label: brokers[i], color: palette[i%len(palette)]}
			for _, p := range r.Timeline {
				s.xs, s.ys = append(s.xs, p.T), append(s.ys, float64(p.Connected))
			}
			ss = append(ss, s)
			continue
		}
		recv := series{label: brokers[i] + " received", color: palette[i%len(palette)]}
		sent := series{label: brokers[i] + " sent", color: palette[i%len(palette)], dash: true}
		var prev Sample
		for _, p := range r.Timeline {
			dt := p.T - prev.T
			if dt <= 0 {
				continue
			}
			recv.xs, recv.ys = append(recv.xs, p.T), append(recv.ys, float64(p.Received-prev.Received)/dt)
			sent.xs, sent.ys = append(sent.xs, p.T), append(sent.ys, float64(p.Sent-prev.Sent)/dt)
			prev = p
		}
		ss = append(ss, recv, sent)
	}
	return lineChart(title, "seconds", unit, ss)
}

func lineChart(title, xlabel, ylabel string, ss []series) template.HTML {
	var maxX, maxY float64
	for _, s := range ss {
		for i := range s.xs {
			maxX, maxY = math.Max(maxX, s.xs[i]), math.Max(maxY, s.ys[i])
		}
	}
	maxX, maxY = niceMax(maxX), niceMax(maxY*1.05)
	pw, ph := float64(chartW-padL-padR), float64(chartH-padT-padB)
	x := func(v float64) float64 { return padL + v/maxX*pw }
	y := func(v float64) float64 { return padT + ph - v/maxY*ph }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`, chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="13" font-weight="bold">%s</text>`, padL, template.HTMLEscapeString(title))
	for i := 0; i <= 5; i++ {
		v := maxY * float64(i) / 5
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s</text>`,
			padL, chartW-padR, y(v), y(v), padL-4, y(v)+4, fmtNum(v))
		xv := maxX * float64(i) / 5
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`, x(xv), chartH-padB+14, fmtNum(xv))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`, padL+int(pw/2), chartH-6, template.HTMLEscapeString(xlabel))
	fmt.Fprintf(&b, `<text x="12" y="%d" transform="rotate(-90 12 %d)" text-anchor="middle">%s</text>`, padT+int(ph/2), padT+int(ph/2), template.HTMLEscapeString(ylabel))
	for i, s := range ss {
		if len(s.xs) == 0 {
			continue
		}
		var pts []string
		for j := range s.xs {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(s.xs[j]), y(s.ys[j])))
		}
		dash := ""
		if s.dash {
			dash = ` stroke-dasharray="4 3"`
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.8"%s points="%s"/>`, s.color, dash, strings.Join(pts, " "))
		ly := padT + 4 + 14*i
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2"%s/><text x="%d" y="%d">%s</text>`,
			chartW-padR-150, chartW-padR-130, ly, ly, s.color, dash, chartW-padR-126, ly+4, template.HTMLEscapeString(s.label))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // labels are escaped
}

// latencySVG draws grouped bars of latency percentiles per broker on a log scale.
func latencySVG(brokers []string, results []*Result) template.HTML {
	names := []string{"p50", "p90", "p99", "p99.9", "p99.99", "max"}
	title := "latency percentiles (intended send → receive)"
	get := func(r *Result) *Percentiles { return r.Latency }
	if len(results) > 0 && results[0] != nil && !msgs(results[0]) {
		title, get = "connect latency percentiles", func(r *Result) *Percentiles { return r.ConnectLatency }
	}
	vals := make([][]float64, len(results))
	maxV, minV := 0.0, math.Inf(1)
	for i, r := range results {
		if r == nil || get(r) == nil {
			continue
		}
		p := get(r)
		vals[i] = []float64{p.P50, p.P90, p.P99, p.P999, p.P9999, p.Max}
		for _, v := range vals[i] {
			maxV, minV = math.Max(maxV, v), math.Min(minV, math.Max(v, 0.001))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`, chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="13" font-weight="bold">%s</text>`, padL, template.HTMLEscapeString(title))
	if maxV == 0 {
		fmt.Fprintf(&b, `<text x="%d" y="%d">no latency recorded</text></svg>`, padL, chartH/2)
		return template.HTML(b.String()) //nolint:gosec // constant text
	}
	lo := math.Pow(10, math.Floor(math.Log10(minV)))
	hi := math.Pow(10, math.Ceil(math.Log10(maxV*1.01)))
	pw, ph := float64(chartW-padL-padR), float64(chartH-padT-padB)
	y := func(v float64) float64 {
		v = math.Max(v, lo)
		return padT + ph - (math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))*ph
	}
	for d := lo; d <= hi*1.001; d *= 10 {
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%d" y="%.1f" text-anchor="end">%s ms</text>`,
			padL, chartW-padR, y(d), y(d), padL-4, y(d)+4, fmtNum(d))
	}
	group := pw / float64(len(names))
	nb := max(len(results), 1)
	bw := group * 0.8 / float64(nb)
	for j, n := range names {
		gx := padL + group*float64(j) + group*0.1
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`, gx+group*0.4, chartH-padB+14, n)
		for i := range results {
			if vals[i] == nil {
				continue
			}
			v := vals[i][j]
			top := y(v)
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s ms</title></rect>`,
				gx+bw*float64(i), top, bw-1, padT+ph-top, palette[i%len(palette)], template.HTMLEscapeString(brokers[i]), n, fmtNum(v))
		}
	}
	for i, br := range brokers {
		ly := padT + 4 + 14*i
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="10" height="10" fill="%s"/><text x="%d" y="%d">%s</text>`,
			padL+10, ly-5, palette[i%len(palette)], padL+24, ly+4, template.HTMLEscapeString(br))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // labels are escaped
}
