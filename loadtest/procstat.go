package loadtest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat; 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// ResourceSample is one reading of a broker process.
type ResourceSample struct {
	T          float64 `json:"t"`           // seconds since the run started
	RSSBytes   int64   `json:"rss_bytes"`   // resident set size
	CPUPercent float64 `json:"cpu_percent"` // of one core, since the previous sample
}

// Resources summarizes a broker process during a run.
type Resources struct {
	PID        int              `json:"pid"`
	StartRSS   int64            `json:"start_rss_bytes"`
	PeakRSS    int64            `json:"peak_rss_bytes"`
	EndRSS     int64            `json:"end_rss_bytes"`
	MeanCPU    float64          `json:"mean_cpu_percent"`
	PeakCPU    float64          `json:"peak_cpu_percent"`
	RSSPerConn float64          `json:"rss_bytes_per_connection,omitempty"` // idle: (peak − start) / connections
	Samples    []ResourceSample `json:"samples"`
}

// readProc returns a process's RSS in bytes and its CPU time (user + system).
func readProc(pid int) (rss int64, cpu time.Duration, err error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read broker process %d: %w", pid, err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			rss = kb << 10
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read broker process %d: %w", pid, err)
	}
	// The command name (field 2) may contain spaces and parentheses: fields start after the last ')'.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 { // state is f[0]; utime and stime are fields 14 and 15, f[11] and f[12]
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return rss, time.Duration(ut+st) * time.Second / clockTicks, nil
}

// CheckPID reports whether pid can be sampled.
func CheckPID(pid int) error {
	_, _, err := readProc(pid)
	return err
}

// sampler reads a process's RSS and CPU every interval until stopped.
type sampler struct {
	pid      int
	start    time.Time
	interval time.Duration

	mu      sync.Mutex
	samples []ResourceSample
	lastCPU time.Duration
	lastAt  time.Time

	cancel context.CancelFunc
	done   chan struct{}
}

func startSampler(pid int, start time.Time, interval time.Duration) *sampler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &sampler{pid: pid, start: start, interval: interval, cancel: cancel, done: make(chan struct{})}
	s.sample()
	go s.loop(ctx)
	return s
}

func (s *sampler) loop(ctx context.Context) {
	defer close(s.done)
	onTicks(ctx, s.interval, s.sample)
}

func (s *sampler) sample() {
	rss, cpu, err := readProc(s.pid)
	if err != nil {
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	pct := 0.0
	if !s.lastAt.IsZero() {
		if dt := now.Sub(s.lastAt); dt > 0 {
			pct = 100 * float64(cpu-s.lastCPU) / float64(dt)
		}
	}
	s.lastCPU, s.lastAt = cpu, now
	s.samples = append(s.samples, ResourceSample{T: now.Sub(s.start).Seconds(), RSSBytes: rss, CPUPercent: pct})
}

// peakRSS is the highest RSS so far.
func (s *sampler) peakRSS() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var p int64
	for _, x := range s.samples {
		p = max(p, x.RSSBytes)
	}
	return p
}

// stop ends sampling (after a last sample) and summarizes.
func (s *sampler) stop() *Resources {
	s.cancel()
	<-s.done
	s.sample()
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &Resources{PID: s.pid, Samples: s.samples}
	if len(s.samples) == 0 {
		return r
	}
	r.StartRSS, r.EndRSS = s.samples[0].RSSBytes, s.samples[len(s.samples)-1].RSSBytes
	var sum float64
	for i, x := range s.samples {
		r.PeakRSS = max(r.PeakRSS, x.RSSBytes)
		r.PeakCPU = max(r.PeakCPU, x.CPUPercent)
		if i > 0 {
			sum += x.CPUPercent
		}
	}
	if len(s.samples) > 1 {
		r.MeanCPU = sum / float64(len(s.samples)-1)
	}
	return r
}
