package mqtt

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.golang/paho"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// takeoverGate holds mochi's inheritClientSession inside existing.ClearInflights() — after the
// old client's in-flight store was copied into the new client, before the new client replaces
// the old one in mochi's client list — until a concurrent publish has been set into the old
// client's store. That is the race that lost acknowledged QoS 1 messages.
type takeoverGate struct {
	mochi.HookBase
	old               atomic.Pointer[mochi.Client]
	dropOnce, setOnce sync.Once
	inClear           chan struct{} // closed when the old client's store is being cleared
	set               chan struct{} // closed when the racing message was set into the old client
	release           chan struct{} // closed to let the clear go on without it (clean start)
}

func (g *takeoverGate) ID() string { return "takeover-gate" }

func (g *takeoverGate) Provides(b byte) bool {
	return b == mochi.OnQosDropped || b == mochi.OnQosPublish
}

func (g *takeoverGate) OnQosDropped(cl *mochi.Client, _ packets.Packet) {
	if cl != g.old.Load() {
		return
	}
	g.dropOnce.Do(func() {
		close(g.inClear)
		select {
		case <-g.set:
		case <-g.release:
		case <-time.After(10 * time.Second):
		}
	})
}

func (g *takeoverGate) OnQosPublish(cl *mochi.Client, pk packets.Packet, _ int64, _ int) {
	if cl == g.old.Load() && string(pk.Payload) == "raced" {
		g.setOnce.Do(func() { close(g.set) })
	}
}

func TestTakeoverRaceKeepsMessages(t *testing.T) {
	tests := []struct {
		name  string
		clean bool     // the resuming connection asks for a clean start: the old session is discarded
		want  []string // what it must receive
	}{
		{name: "resume", want: []string{"parked", "raced"}},
		{name: "clean_start", clean: true, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &takeoverGate{inClear: make(chan struct{}), set: make(chan struct{}), release: make(chan struct{})}
			srv := startServerWith(t, Options{StorageDir: t.TempDir()}, func(s *Server) {
				if err := s.AddHook(g, nil); err != nil {
					t.Fatal(err)
				}
			})
			addr := srv.Addr("tcp").String()
			const id = "to-sub"
			sub := mustV5(t, addr, v5opts{id: id, expiry: 300, clean: true})
			sub.sub(t, "to/x", 1)
			if err := sub.Disconnect(&paho.Disconnect{}); err != nil {
				t.Fatal(err)
			}
			var old *mochi.Client
			waitFor(t, 5*time.Second, "old session offline", func() bool {
				cl, ok := srv.mochi.Clients.Get(id)
				old = cl
				return ok && cl.Closed()
			})
			pub := mustV5(t, addr, v5opts{id: "to-pub"})
			pub.pub(t, "to/x", 1, "parked") // parked in the offline session
			waitFor(t, 5*time.Second, "parked message in the session", func() bool { return old.State.Inflight.Len() == 1 })
			g.old.Store(old)

			acked := make(chan error, 1)
			go func() {
				select {
				case <-g.inClear:
				case <-time.After(10 * time.Second):
					acked <- context.DeadlineExceeded
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				r, err := pub.Publish(ctx, &paho.Publish{Topic: "to/x", QoS: 1, Payload: []byte("raced")})
				if err == nil && r != nil && r.ReasonCode >= 0x80 {
					err = packets.Code{Code: r.ReasonCode}
				}
				if tt.clean {
					// mochi unsubscribed the discarded session before clearing it: the
					// message has no subscriber to race with.
					close(g.release)
				}
				acked <- err
			}()
			back := mustV5(t, addr, v5opts{id: id, expiry: 300, clean: tt.clean})
			if err := <-acked; err != nil {
				t.Fatalf("racing publish not acknowledged: %v", err)
			}
			if !tt.clean {
				select {
				case <-g.set:
				default:
					t.Fatal("the racing publish did not reach the old client: the race was not reproduced")
				}
			}
			got := map[string]int{}
			for range tt.want {
				p := back.next(t, 10*time.Second)
				got[string(p.Payload)]++
			}
			back.none(t, 300*time.Millisecond)
			for _, w := range tt.want {
				if got[w] != 1 {
					t.Errorf("message %q received %d times, want 1 (got %v)", w, got[w], got)
				}
			}
		})
	}
}

// TestTakeoverUnderLoad resumes a persistent QoS 1 session many times (each connection taking
// over the previous one) while publishers flood its topic: every acknowledged message must arrive.
func TestTakeoverUnderLoad(t *testing.T) {
	srv := startServer(t, Options{})
	addr := srv.Addr("tcp").String()
	const id, rounds, publishers = "tl-sub", 30, 2
	first := mustV5(t, addr, v5opts{id: id, expiry: 300, clean: true})
	first.sub(t, "tl/x", 1)
	subs := []*v5{first}
	received := func() map[string]bool {
		got := map[string]bool{}
		for _, c := range subs {
			c.mu.Lock()
			for _, p := range c.msgs {
				got[string(p.Payload)] = true
			}
			c.mu.Unlock()
		}
		return got
	}

	var (
		mu    sync.Mutex
		acked []string
		stop  atomic.Bool
		wg    sync.WaitGroup
	)
	for g := range publishers {
		pub := mustV5(t, addr, v5opts{id: "tl-pub" + string(rune('a'+g))})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load() && i < 100000; i++ {
				msg := string(rune('a'+g)) + "-" + itoa(i)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				r, err := pub.Publish(ctx, &paho.Publish{Topic: "tl/x", QoS: 1, Payload: []byte(msg)})
				cancel()
				if err != nil || r == nil || r.ReasonCode >= 0x80 {
					continue
				}
				mu.Lock()
				acked = append(acked, msg)
				mu.Unlock()
			}
		}()
	}
	for range rounds {
		before := len(received())
		subs = append(subs, resumeV5(t, addr, id))
		waitFor(t, 10*time.Second, "the resumed session receiving", func() bool { return len(received()) > before })
	}
	stop.Store(true)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	var missing []string
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := received()
		missing = missing[:0]
		for _, m := range acked {
			if !got[m] {
				missing = append(missing, m)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d acknowledged messages never arrived (first: %v)", len(missing), len(acked), missing[:min(10, len(missing))])
	}
	t.Logf("%d acknowledged messages over %d takeovers", len(acked), rounds)
}

func itoa(i int) string { return fmt.Sprint(i) }

// resumeV5 resumes a persistent session. It must succeed at once: messages fanned out to the
// session while it resumes used to reach the wire before the CONNACK (see conn.beforeConnack), and
// paho.golang refused the connection ("unexpected packet").
func resumeV5(t *testing.T, addr, id string) *v5 {
	t.Helper()
	c, _, err := dialV5(t, addr, v5opts{id: id, expiry: 300})
	if err != nil {
		t.Fatalf("resume %q: %v", id, err)
	}
	return c
}
