package bridge_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/bridge"
	"github.com/sluicemq/sluice/mqtt"
)

const (
	ulEnvDir  = "SLUICE_UPLINK_EDGE_DIR"
	ulEnvURL  = "SLUICE_UPLINK_EDGE_URL"
	ulEnvRate = "SLUICE_UPLINK_EDGE_RATE"
	ulWindow  = 32 // the edge process's MaxInFlight
)

// TestUplinkEdgeProcess is the edge gateway of TestUplinkSIGKILL, run in a child process: it drains
// the queue in $SLUICE_UPLINK_EDGE_DIR to $SLUICE_UPLINK_EDGE_URL, prints "drained" once the queue is
// empty, and stops cleanly on SIGTERM (or after a minute).
func TestUplinkEdgeProcess(t *testing.T) {
	dir := os.Getenv(ulEnvDir)
	if dir == "" {
		t.Skip("helper process of TestUplinkSIGKILL")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	edge := ulOpenEdge(t, dir, ulEdgeConfig())
	defer edge.Close()
	o := ulOptions("cloud", os.Getenv(ulEnvURL))
	o.MaxInFlight, o.Batch, o.Lease, o.Timeout = ulWindow, 64, 3*time.Second, time.Second // leases outlive CPU stalls of a busy CI
	o.Rate, _ = strconv.ParseFloat(os.Getenv(ulEnvRate), 64)
	if os.Getenv("SLUICE_UPLINK_DEBUG") != "" {
		o.Logger = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr})
	}
	u, err := bridge.NewUplink(edge, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Start(); err != nil {
		t.Fatal(err)
	}
	defer ulClose(t, u)
	fmt.Println("started")
	said := false
	for ctx.Err() == nil {
		if !said && u.Status().Forwarded > 0 && ulBacklog(t, edge) == 0 {
			fmt.Println("drained")
			said = true
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ulChild starts the test binary as the edge process and returns it with a channel of its stdout lines.
func ulChild(t *testing.T, dir, url string, rate float64) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestUplinkEdgeProcess$", "-test.count=1", "-test.v=false")
	cmd.Env = append(os.Environ(), ulEnvDir+"="+dir, ulEnvURL+"="+url, ulEnvRate+"="+strconv.FormatFloat(rate, 'f', -1, 64))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- strings.TrimSpace(sc.Text()):
			default:
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, lines
}

func ulExpectLine(t *testing.T, lines <-chan string, want string, limit time.Duration) {
	t.Helper()
	timeout := time.After(limit)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("edge process ended before printing %q", want)
			}
			if l == want {
				return
			}
		case <-timeout:
			t.Fatalf("edge process did not print %q within %v", want, limit)
		}
	}
}

// TestUplinkSIGKILL kills the edge process with SIGKILL in the middle of a drain and restarts it:
// nothing is lost, each topic's order holds (apart from duplicates), and the duplicates are at most
// the in-flight window.
func TestUplinkSIGKILL(t *testing.T) {
	cloud := ulStartCloud(t, mqtt.Options{})
	dir := t.TempDir()
	topics := []string{"d/0", "d/1", "d/2", "d/3"}
	const perTopic = 1000
	edge := ulOpenEdge(t, dir, ulEdgeConfig())
	ulEnqueue(t, edge, topics, 0, perTopic)
	if err := edge.Close(); err != nil {
		t.Fatal(err)
	}

	first, lines := ulChild(t, dir, cloud.url(), 2000) // slow enough to be killed mid-drain
	ulExpectLine(t, lines, "started", 30*time.Second)
	ulWait(t, 30*time.Second, "a part of the backlog upstream", func() bool { return cloud.received() >= 1000 })
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	if n := cloud.received(); n >= perTopic*int64(len(topics)) {
		t.Fatalf("the edge forwarded everything (%d) before it was killed; the test proves nothing", n)
	}

	second, lines := ulChild(t, dir, cloud.url(), 0)
	ulExpectLine(t, lines, "drained", 60*time.Second)
	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Fatalf("edge process: %v", err)
	}

	want := map[string]int{}
	for _, tp := range topics {
		want[tp] = perTopic
	}
	dups := ulCheck(t, ulPayloads(cloud.messages()), want)
	if dups > ulWindow {
		t.Errorf("%d duplicates after one SIGKILL, more than the in-flight window %d", dups, ulWindow)
	}
	t.Logf("duplicates after SIGKILL: %d (window %d)", dups, ulWindow)
	edge = ulOpenEdge(t, dir, ulEdgeConfig())
	defer edge.Close()
	if b := ulBacklog(t, edge); b != 0 {
		t.Errorf("edge backlog %d after the drain", b)
	}
}
