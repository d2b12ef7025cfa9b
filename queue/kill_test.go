package queue_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicemq/sluice/queue"
	"github.com/sluicemq/sluice/queue/queuetest"
)

const killWorkerEnv = "SLUICE_QUEUE_KILL_WORKER_DIR"

var killCfg = queue.Config{VisibilityTimeout: 2 * time.Second, MaxAttempts: 3, Backoff: queue.Backoff{Initial: time.Millisecond, Jitter: -1}}

// killWorker runs in the child process: producers and consumers under load, printing "E id" once an
// enqueue is durable and "A id" once an ack is, until the parent kills it (or 60 s pass).
func killWorker() int {
	dir := os.Getenv(killWorkerEnv)
	m, err := queue.Open(dir, queue.Options{Queues: map[string]queue.Config{qn: killCfg}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		return 2
	}
	var outMu sync.Mutex
	emit := func(tag string, ids []string) {
		var b strings.Builder
		for _, id := range ids {
			fmt.Fprintf(&b, "%s %s\n", tag, id)
		}
		outMu.Lock()
		_, _ = os.Stdout.WriteString(b.String()) // one write (< PIPE_BUF): lines arrive whole
		outMu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for p := 0; p < 4; p++ {
		wg.Go(func() {
			for ctx.Err() == nil {
				msgs := make([]queue.Message, 1+rand.IntN(20))
				for i := range msgs {
					msgs[i] = msg(strings.Repeat("x", rand.IntN(300)))
				}
				ids, err := m.Enqueue(ctx, qn, msgs)
				if err == nil {
					emit("E", ids)
				}
			}
		})
	}
	for c := 0; c < 2; c++ {
		wg.Go(func() {
			for ctx.Err() == nil {
				ds, err := m.Receive(ctx, qn, 1+rand.IntN(30), 0)
				if err != nil || len(ds) == 0 {
					continue
				}
				var rs, ids, nacks []string
				for _, d := range ds {
					switch rand.IntN(10) {
					case 0:
						continue // left to expire
					case 1:
						nacks = append(nacks, d.Receipt) // retried; dead-lettered after 3 attempts
						continue
					}
					rs = append(rs, d.Receipt)
					ids = append(ids, d.ID)
				}
				if len(nacks) > 0 {
					if _, err := m.Nack(qn, nacks, 0); err != nil {
						continue
					}
				}
				emit("a", ids) // ack intent: the ack may become durable before "A" is printed
				res, err := m.Ack(qn, rs)
				if err != nil {
					continue
				}
				var acked []string
				for i, r := range res {
					if r == nil {
						acked = append(acked, ids[i])
					}
				}
				emit("A", acked)
			}
		})
	}
	wg.Wait()
	_ = m.Close()
	return 0
}

// TestKill kills a worker process with SIGKILL at random moments, many rounds, and checks after each
// restart that every message whose enqueue was confirmed and whose ack was not is still there, and
// that no message whose ack was confirmed is delivered again.
func TestKill(t *testing.T) {
	dir := t.TempDir()
	rounds := 8
	if testing.Short() {
		rounds = 2
	}
	enq := map[string]bool{}
	acked := map[string]bool{} // ack confirmed
	tried := map[string]bool{} // ack attempted (maybe durable)
	for round := 0; round < rounds; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), killWorkerEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		var killAt <-chan time.Time
		started, killed := false, false
		timeout := time.After(30 * time.Second)
	read:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break read
				}
				tag, id, _ := strings.Cut(l, " ")
				switch tag {
				case "E":
					enq[id] = true
				case "A":
					acked[id] = true
				case "a":
					tried[id] = true
				}
				if !started {
					started = true
					killAt = time.After(time.Duration(50+rand.IntN(1000)) * time.Millisecond)
				}
			case <-killAt:
				_ = cmd.Process.Signal(syscall.SIGKILL)
				killAt = nil
				killed = true
			case <-timeout:
				_ = cmd.Process.Kill()
				t.Fatalf("round %d: worker did not start or die in time; stderr: %s", round, stderr.String())
			}
		}
		if err := cmd.Wait(); !killed {
			// It died on its own: a failure (or a race report under -race).
			t.Fatalf("round %d: worker exited before the kill: %v; stderr: %s", round, err, stderr.String())
		}
		if !started {
			t.Fatalf("round %d: worker printed nothing; stderr: %s", round, stderr.String())
		}

		// Reopen with a clock far ahead so every lease has expired, and drain.
		clock := queuetest.NewClock(time.Now().Add(time.Duration(round+1) * 24 * time.Hour))
		m, err := queue.Open(dir, queue.Options{Clock: clock.Now, Queues: map[string]queue.Config{qn: killCfg}})
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		present := map[string]bool{}
		var rs, received []string
		for empty := 0; empty < 2; {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			ds, err := m.Receive(ctx, qn, 1000, 100*time.Hour)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if len(ds) == 0 {
				empty++
				clock.Advance(time.Hour) // past the worker's leases and backoffs
			}
			for _, d := range ds {
				if acked[d.ID] {
					t.Errorf("round %d: message %s delivered again after its ack was confirmed", round, d.ID)
				}
				present[d.ID] = true
				received = append(received, d.ID)
				rs = append(rs, d.Receipt)
			}
		}
		dead, err := m.PeekDead(qn, 10000)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dead {
			present[d.ID] = true
		}
		missing := 0
		for id := range enq {
			if !acked[id] && !tried[id] && !present[id] {
				missing++
			}
		}
		if missing > 0 {
			var ids []string
			for id := range enq {
				if !acked[id] && !tried[id] && !present[id] {
					ids = append(ids, id)
				}
			}
			_ = m.Close()
			t.Logf("missing: %v", ids)
			t.Fatalf("round %d: %d durably enqueued, unacked messages missing (enqueued %d, acked %d, present %d)",
				round, missing, len(enq), len(acked), len(present))
		}
		// Settle them so the next round starts from the worker's own traffic.
		if res, err := m.Ack(qn, rs); err != nil {
			t.Fatal(err)
		} else {
			for i, r := range res {
				if r != nil {
					t.Fatalf("parent ack %d: %v", i, r)
				}
			}
		}
		for _, d := range received {
			acked[d] = true // settled by the parent; dead letters stay and are checked again each round
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: enqueued %d, acked %d, present after kill %d (dead %d)", round, len(enq), len(acked), len(present), len(dead))
	}
}
