package chaos

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// suite is what TestMain sets up for every scenario: the binary and the summary table.
type suite struct {
	bin  string // the sluice binary, built by TestMain
	full bool   // SLUICE_CHAOS=full

	mu   sync.Mutex
	rows []row
}

// row is one line of the summary table.
type row struct {
	scenario string
	checks   string
	result   string // "pass", "FAIL", "skip: ..."
	figures  string
}

var st = &suite{}

func TestMain(m *testing.M) {
	st.full = os.Getenv("SLUICE_CHAOS") == "full"
	dir, err := os.MkdirTemp("", "sluice-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	st.bin = filepath.Join(dir, "sluice")
	if bin := os.Getenv("SLUICE_CHAOS_BIN"); bin != "" {
		st.bin = bin // a binary built elsewhere (e.g. from a release)
	} else {
		// The broker is built without -race: the suite measures its memory and latency as users run
		// it, and a 10,000-connection storm under the race detector measures the detector.
		build := exec.Command("go", "build", "-o", st.bin, "github.com/sluicemq/sluice/cmd/sluice")
		build.Stderr = os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "chaos: build sluice:", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	raiseFileLimit()
	start := time.Now()
	code := m.Run()
	os.RemoveAll(dir)
	st.printTable(time.Since(start))
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("internal/poll.runtime_pollWait")); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// raiseFileLimit lifts the soft limit on open files to the hard limit: the connection storm needs
// one descriptor per connection in this process, and the broker (a child) inherits the limit.
func raiseFileLimit() {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}

// fileLimit is the soft limit on open files of this process.
func fileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 1024
	}
	return rl.Cur
}

// report adds the scenario's row to the table and logs it. Call it once per scenario, last (a
// deferred call sees whether the test failed).
func report(t *testing.T, checks, figures string) {
	t.Helper()
	res := "pass"
	switch {
	case t.Failed():
		res = "FAIL"
	case t.Skipped():
		res = "skip"
	}
	st.mu.Lock()
	st.rows = append(st.rows, row{scenario: t.Name(), checks: checks, result: res, figures: figures})
	st.mu.Unlock()
	t.Logf("summary: %s | %s | %s | %s", t.Name(), checks, res, figures)
}

// pick returns reduced, or full under SLUICE_CHAOS=full.
func pick[T any](reduced, full T) T {
	if st.full {
		return full
	}
	return reduced
}

func (s *suite) printTable(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.rows) == 0 {
		return
	}
	mode := "reduced"
	if s.full {
		mode = "full"
	}
	host, _ := os.Hostname()
	fmt.Printf("\n## Sluice chaos suite (%s mode, %s, %d CPUs, %s/%s, %s, %v)\n\n", mode, host, runtime.NumCPU(),
		runtime.GOOS, runtime.GOARCH, runtime.Version(), d.Round(time.Second))
	fmt.Println("| scenario | checks | result | figures |")
	fmt.Println("| --- | --- | --- | --- |")
	for _, r := range s.rows {
		fmt.Printf("| %s | %s | %s | %s |\n", r.scenario, esc(r.checks), r.result, esc(r.figures))
	}
	fmt.Println()
}

func esc(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
