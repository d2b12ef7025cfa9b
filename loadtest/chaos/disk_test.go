package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicemq/sluice/devices"
	"github.com/sluicemq/sluice/queue/client"
)

// TestFullDisk puts the data directory on a 16 MiB tmpfs, half of it taken by a filler file, and
// publishes bridged QoS 1 messages until the disk is full. The broker must keep serving MQTT, give
// failure acks (never success for what it did not store), keep everything it acknowledged readable
// (also after a restart), and take messages again by itself once the filler is deleted.
func TestFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestFullDisk mounts a 16 MiB tmpfs for the data directory and must run as root " +
			"(CI runs as root; locally: sudo -E go test -run TestFullDisk ./loadtest/chaos)")
	}
	mnt := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v: %s", mnt, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, make([]byte, 6<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := writeConfig(t, dir, config{dataDir: filepath.Join(mnt, "data"), bridge: true})
	var checks, figures []string
	defer func() { report(t, strings.Join(checks, ", "), strings.Join(figures, "; ")) }()
	b := startBroker(t, cfg)

	// A non-bridged round trip, to show MQTT keeps serving.
	echo := make(chan string, 16)
	sub := mustDevice(t, b.mqttAddr, devices.ClientOptions{ClientID: "rt-sub", CleanSession: true, OnMessage: func(m devices.Message) {
		select {
		case echo <- string(m.Payload):
		default:
		}
	}})
	if err := sub.Subscribe(context.Background(), "plain/rt", 1); err != nil {
		t.Fatal(err)
	}
	rtPub := mustDevice(t, b.mqttAddr, devices.ClientOptions{ClientID: "rt-pub", CleanSession: true})
	roundTrip := func(what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := rtPub.Publish(ctx, devices.Message{Topic: "plain/rt", QoS: 1, Payload: []byte(what)}); err != nil {
			t.Errorf("%s: non-bridged publish: %v", what, err)
			return
		}
		for {
			select {
			case got := <-echo:
				if got == what {
					return
				}
			case <-ctx.Done():
				t.Errorf("%s: non-bridged round trip: no echo within 10s", what)
				return
			}
		}
	}
	roundTrip("before")

	// Fill the disk.
	const size = 4096
	payload := func(seq int) []byte {
		p := []byte("d1 " + strconv.Itoa(seq) + " ")
		return append(p, bytes.Repeat([]byte{byte('a' + seq%26)}, size-len(p))...)
	}
	pub := mustDevice(t, b.mqttAddr, devices.ClientOptions{ClientID: "d1", CleanSession: true})
	acked := map[int]bool{}
	seq, refusedN, consecutive := 0, 0, 0
	var firstRefusal string
	publish := func() error {
		seq++
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		err := pub.Publish(ctx, devices.Message{Topic: "devices/d1/telemetry", QoS: 1, Payload: payload(seq)})
		if err == nil {
			acked[seq] = true
		}
		return err
	}
	start := time.Now()
	for consecutive < 20 && seq < 20000 && time.Since(start) < 2*time.Minute {
		err := publish()
		switch {
		case err == nil:
			consecutive = 0
		case strings.Contains(err.Error(), "error publishing"): // paho: a PUBACK with reason ≥ 0x80
			refusedN++
			consecutive++
			if firstRefusal == "" {
				firstRefusal = fmt.Sprintf("first at seq %d", seq)
				t.Logf("first failure ack, seq %d: %v", seq, err)
			}
		default:
			t.Fatalf("publish %d: %v (not a failure ack: the broker %s)", seq, err, brokerState(b))
		}
	}
	figures = append(figures, fmt.Sprintf("%d acked (%d MiB) before the disk was full; %d failure acks (%s)",
		len(acked), len(acked)*size>>20, refusedN, firstRefusal))
	if refusedN == 0 {
		t.Fatalf("the disk never filled: %d messages acked, no failure ack", len(acked))
	}
	checks = append(checks, "full disk → failure acks (reason ≥ 0x80)")

	// MQTT keeps serving; the process is healthy.
	roundTrip("while full")
	if err := b.healthy(); err != nil {
		t.Fatal(err)
	}
	checks = append(checks, "MQTT round trip while full")

	// Free space: ingest must resume by itself.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	shutdown := ""
	resumed := poll(20*time.Second, func() bool {
		if publish() == nil {
			return true
		}
		time.Sleep(200 * time.Millisecond)
		return false
	})
	if resumed {
		checks = append(checks, "ingest resumed after freeing space")
	} else {
		figures = append(figures, "ingest did NOT resume within 20s of freeing 6 MiB")
	}

	// Everything acknowledged is stored intact: read it back, after a restart too (the restart
	// also shows that nothing on disk is corrupted: a corrupt log would refuse to open).
	// Leases are durable (they run on after a restart): the first reading takes short ones, the
	// one after the restart long ones (each message is delivered twice: no dead letters).
	readBack := func(phase string, lease time.Duration) {
		t.Helper()
		c := &client.Client{BaseURL: "http://" + b.httpAddr}
		found := map[int]bool{}
		for end := time.Now().Add(time.Minute); time.Now().Before(end); {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			msgs, err := c.Receive(ctx, "telemetry", client.ReceiveOptions{Max: 1000, Wait: 3 * time.Second, Lease: lease})
			cancel()
			if err != nil {
				t.Fatalf("%s: receive: %v", phase, err)
			}
			if len(msgs) == 0 && time.Now().After(end.Add(-30*time.Second)) {
				break // nothing more for 30s
			}
			for _, m := range msgs {
				f := bytes.SplitN(m.Payload, []byte(" "), 3)
				n, err := 0, errors.New("no sequence number")
				if len(f) == 3 {
					n, err = strconv.Atoi(string(f[1]))
				}
				if err != nil {
					t.Errorf("%s: unreadable payload %q", phase, m.Payload[:min(len(m.Payload), 40)])
					continue
				}
				if !bytes.Equal(m.Payload, payload(n)) {
					t.Errorf("%s: message %d is corrupted", phase, n)
				}
				found[n] = true
			}
			if allFound(acked, found) {
				break
			}
		}
		var lost []int
		for s := range acked {
			if !found[s] {
				lost = append(lost, s)
			}
		}
		if len(lost) > 0 {
			t.Errorf("%s: %d of %d acknowledged messages are missing: %v", phase, len(lost), len(acked), firstN(lost, 10))
		}
		figures = append(figures, fmt.Sprintf("%s: %d acked read back intact, %d stored in all", phase, len(acked)-len(lost), len(found)))
	}
	readBack("read back", 2*time.Second)
	if resumed {
		b.stop()
	} else { // the queue stayed failed (reported below): its shutdown is incomplete, exit code 1
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		<-b.done
		shutdown = fmt.Sprintf("graceful shutdown after freeing space ended with %s: %s", b.exitStatus(), lastLine(b.stderr(1)))
	}
	b = startBroker(t, cfg)
	readBack("after restart", time.Minute)
	checks = append(checks, "acked ⇒ readable intact, also after restart")
	if !resumed {
		// Evidence for the report: does a restart make ingest work again?
		pub2 := mustDevice(t, b.mqttAddr, devices.ClientOptions{ClientID: "d2", CleanSession: true})
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		err := pub2.Publish(ctx, devices.Message{Topic: "devices/d2/telemetry", QoS: 1, Payload: []byte("d2 1 x")})
		cancel()
		after := "ingest works after a restart"
		if err != nil {
			after = "ingest fails even after a restart: " + err.Error()
		}
		t.Errorf("ingest did not resume by itself: bridged publishes kept getting failure acks for 20s after 6 MiB were freed (%s) "+
			"(the queue should reopen its failed logs, queue/manager.go (*Manager).reopen); %s; %s", firstRefusal, shutdown, after)
	}
	if err := b.healthy(); err != nil {
		t.Fatal(err)
	}
	b.stop()
}

func allFound(want, got map[int]bool) bool {
	for k := range want {
		if !got[k] {
			return false
		}
	}
	return true
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// brokerState describes whether the broker still runs.
func brokerState(b *broker) string {
	if b.alive() {
		return "still runs"
	}
	return "exited: " + b.exitStatus() + "\n" + b.stderr(20)
}
