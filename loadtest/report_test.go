package loadtest

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

var htmlOut = flag.String("html-out", "", "also write the comparison report of TestReportCompare to this file")

// TestReportCompare runs one scenario against two brokers, then checks the table, JSON and HTML.
func TestReportCompare(t *testing.T) {
	a := startBroker(t, brokerOpts{})
	b := startBroker(t, brokerOpts{faults: &faultHook{dropEvery: 50}})
	rep := NewReport("first", "second")
	for _, sc := range []Scenario{
		{Kind: FanIn, Publishers: 3, Subscribers: 1, Rate: 300, QoS: 0, Duration: dur(600 * time.Millisecond), Drain: dur(200 * time.Millisecond)},
		{Kind: Storm, Connections: 30, Duration: dur(100 * time.Millisecond)},
	} {
		ra := runOK(t, sc, Target{Broker: a.url, PID: os.Getpid()})
		rb := runOK(t, sc, Target{Broker: b.url, PID: os.Getpid()})
		rep.Add(ra, rb)
	}
	if rep.Lost() == 0 {
		t.Fatal("the second broker drops every 50th message: report shows no loss")
	}
	if r := rep.Scenarios[0].Ratios["receive rate"]; r <= 0 {
		t.Errorf("no receive rate ratio: %v", rep.Scenarios[0].Ratios)
	}

	var tbl bytes.Buffer
	if err := WriteTable(&tbl, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"== fan-in:", "second/first", "latency p99", "lost", "== storm:", "connect p50", "machine:"} {
		if !strings.Contains(tbl.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, tbl.String())
		}
	}

	var js bytes.Buffer
	if err := WriteJSON(&js, rep); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Scenarios) != 2 || back.Scenarios[0].Results[1].Lost != rep.Scenarios[0].Results[1].Lost || back.Machine.CPUs == 0 {
		t.Errorf("JSON round trip: %+v", back.Scenarios)
	}

	var h bytes.Buffer
	if err := WriteHTML(&h, rep); err != nil {
		t.Fatal(err)
	}
	page := h.String()
	if n := strings.Count(page, "<svg"); n != 4 {
		t.Errorf("want 4 charts, got %d", n)
	}
	if strings.Contains(page, "<script") || regexp.MustCompile(`(src|href)=`).MatchString(page) {
		t.Error("the HTML page must not load anything")
	}
	for _, want := range []string{"throughput over time", "latency percentiles", "connected clients over time", "<polyline", "<rect", `class="bad"`} {
		if !strings.Contains(page, want) {
			t.Errorf("HTML lacks %q", want)
		}
	}
	if *htmlOut != "" {
		if err := os.WriteFile(*htmlOut, h.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestNiceMax(t *testing.T) {
	for in, want := range map[float64]float64{0: 1, 0.3: 0.5, 1: 1, 1.1: 2, 7: 10, 4321: 5000, 20000: 20000} {
		if got := niceMax(in); math32(got) != math32(want) {
			t.Errorf("niceMax(%v) = %v, want %v", in, got, want)
		}
	}
}

func math32(f float64) float32 { return float32(f) }
