package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"
)

// startApp runs the app in-process on the configuration file p and stops it at the end of the test.
func startApp(t *testing.T, p string) *app {
	t.Helper()
	cfg, err := loadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApp(cfg, p, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil && !errors.Is(err, errAlreadyShutDown) {
			t.Errorf("shutdown: %v", err)
		}
	})
	return a
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestAppServes(t *testing.T) {
	a := startApp(t, testConfig(t, t.TempDir(), ""))
	addr := a.MQTTAddr("tcp").String()
	sub, err := dialMQTT(t, addr, "sub", dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	sub.subscribe(t, "a/+", 1)
	pub, err := dialMQTT(t, addr, "pub", dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	pub.publish(t, "a/b", 1, false, "hello")
	sub.expect(t, "a/b", "hello")

	base := "http://" + a.HTTPAddr().String()
	if code, body := httpGet(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	code, body := httpGet(t, base+"/metrics")
	for _, want := range []string{"go_goroutines ", "process_open_fds ", "sluice_mqtt_"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics: %d, no %q", code, want)
		}
	}
	if code, _ := httpGet(t, base+"/nope"); code != 404 {
		t.Errorf("/nope: %d", code)
	}

	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Shutdown(ctx); !errors.Is(err, errAlreadyShutDown) {
		t.Errorf("second Shutdown = %v, want errAlreadyShutDown", err)
	}
	waitFor(t, 5*time.Second, "clients disconnected by shutdown", func() bool { return sub.isLost() && pub.isLost() })
}

func hashOf(t testing.TB, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost) // tests only; the CLI enforces ≥ 10
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// TestAppReload: users and ACL come from the file again; connected clients stay; a bad file keeps the
// running settings.
func TestAppReload(t *testing.T) {
	dir := t.TempDir()
	alice, bob := hashOf(t, "alice-pw"), hashOf(t, "bob-pw")
	write := func(users string) string {
		p := testConfig(t, dir, "  users:\n"+users)
		b, _ := os.ReadFile(p)
		b = []byte(strings.ReplaceAll(string(b), "allow_anonymous: true", "allow_anonymous: false"))
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := write(`    - {username: alice, password_hash: "` + alice + `"}` + "\n")
	a := startApp(t, p)
	addr := a.MQTTAddr("tcp").String()

	ca, err := dialMQTT(t, addr, "alice", dialOpts{user: "alice", pass: "alice-pw"})
	if err != nil {
		t.Fatalf("alice: %v", err)
	}
	ca.subscribe(t, "r/#", 1)
	if _, err := dialMQTT(t, addr, "bob", dialOpts{user: "bob", pass: "bob-pw"}); err == nil {
		t.Fatal("bob got in before he was added")
	}
	if _, err := dialMQTT(t, addr, "anon", dialOpts{}); err == nil {
		t.Fatal("an anonymous client got in")
	}

	write(`    - {username: alice, password_hash: "` + alice + `"}` + "\n" + `    - {username: bob, password_hash: "` + bob + `"}` + "\n")
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	cb, err := dialMQTT(t, addr, "bob", dialOpts{user: "bob", pass: "bob-pw"})
	if err != nil {
		t.Fatalf("bob after reload: %v", err)
	}
	cb.publish(t, "r/1", 1, false, "from bob")
	ca.expect(t, "r/1", "from bob") // alice's connection survived the reload
	if ca.isLost() {
		t.Fatal("alice was disconnected by the reload")
	}

	// A broken file changes nothing.
	if err := os.WriteFile(p, []byte("mqtt:\n  users: [{username: carol}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = a.Reload()
	if err == nil || !strings.Contains(err.Error(), p+`:2: user "carol" has no password_hash`) {
		t.Fatalf("reload of a bad file: %v", err)
	}
	if _, err := dialMQTT(t, addr, "bob2", dialOpts{user: "bob", pass: "bob-pw"}); err != nil {
		t.Fatalf("bob after a failed reload: %v", err)
	}
}

// TestAppPortInUse: a busy port is one sentence naming the listener and the address.
func TestAppPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	addr := busy.Addr().String()
	for _, tt := range []struct{ name, from, to, want string }{
		{"mqtt", `{name: tcp, type: tcp, address: "127.0.0.1:0"`, `{name: tcp, type: tcp, address: "` + addr + `"`, `listener "tcp": listen on ` + addr},
		{"http", `http: {address: "127.0.0.1:0"}`, `http: {address: "` + addr + `"}`, "http listener: listen on " + addr + ": address already in use"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := testConfig(t, dir, "")
			b, _ := os.ReadFile(p)
			if err := os.WriteFile(p, []byte(strings.Replace(string(b), tt.from, tt.to, 1)), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := loadConfig(p)
			if err != nil {
				t.Fatal(err)
			}
			a, err := newApp(cfg, p, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			err = a.Start(context.Background())
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("Start = %v; want one line containing %q", err, tt.want)
			}
			// Everything started before the failure is stopped again: the other listeners are free.
			if err := a.Shutdown(context.Background()); err != nil {
				t.Errorf("Shutdown after a failed Start: %v", err)
			}
		})
	}
}

// TestAppDataDirInUse: a second process (here: a second app) on the same data directory is refused
// with one sentence naming it, and gets it once the first is gone.
func TestAppDataDirInUse(t *testing.T) {
	dir := t.TempDir()
	p := testConfig(t, dir, "")
	first := startApp(t, p)
	cfg, err := loadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	second, err := newApp(cfg, p, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	err = second.Start(context.Background())
	want := "data_dir " + cfg.DataDir + " is in use by another sluice process"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("second Start = %v, want %q", err, want)
	}
	_ = second.Shutdown(context.Background())
	if err := first.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	third, err := newApp(cfg, p, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := third.Start(context.Background()); err != nil {
		t.Fatalf("Start after the first stopped: %v", err)
	}
	if err := third.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}
