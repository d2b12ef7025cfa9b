package main

// End-to-end tests: the real sluice binary (built once by TestMain) as a child process.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// runBin runs the binary to completion with stdin and returns its exit code, stdout and stderr.
func runBin(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	case err != nil:
		t.Fatal(err)
	}
	return 0, out.String(), errb.String()
}

// TestE2EConfigErrors: a bad configuration is exit code 2 and one line on stderr naming file and line,
// never a stack trace.
func TestE2EConfigErrors(t *testing.T) {
	dir := t.TempDir()
	junk := writeText(t, dir, "junk.pem", "not a certificate\n")
	missing := filepath.Join(dir, "missing.pem")
	tests := []struct {
		name, config, want string // want: stderr after "sluice serve: FILE"
	}{
		{"unknown key", "mqtt:\n  limits:\n    max_conections: 5\n", `:3: unknown key "max_conections" in section mqtt.limits (did you mean "max_connections"?)`},
		{"bad duration", "mqtt:\n  sys_interval: 10 seconds\n", `:2: key "sys_interval" in section mqtt: "10 seconds" is not a duration (write a number with a unit: 500ms, 10s, 5m, 1h)`},
		{"bad listener type", "mqtt:\n  listeners:\n    - {name: x, type: quic, address: \"127.0.0.1:0\"}\n", `:3: listener "x": type "quic" is not one of tcp, tls, ws, wss`},
		{"missing tls file", "mqtt:\n  listeners:\n    - name: s\n      type: tls\n      address: \"127.0.0.1:0\"\n      tls: {cert_file: " + missing + ", key_file: " + junk + "}\n", `:6: listener "s": tls.cert_file ` + missing + ` does not exist`},
		{"invalid yaml", "mqtt: [\n", `:1: invalid YAML: did not find expected node content`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeText(t, dir, "bad.yaml", tt.config)
			for _, args := range [][]string{{"serve", "--config", p}, {"serve", "--config", p, "--check"}} {
				code, out, errOut := runBin(t, "", args...)
				if want := "sluice serve: " + p + tt.want + "\n"; code != 2 || out != "" || errOut != want {
					t.Errorf("%v: exit %d, stdout %q, stderr %q; want 2, \"\", %q", args, code, out, errOut, want)
				}
			}
		})
	}

	// Errors the loader cannot place on a line: still one sentence and exit 2.
	badPEM := writeText(t, dir, "badpem.yaml", "mqtt:\n  listeners:\n    - name: s\n      type: tls\n      address: \"127.0.0.1:0\"\n      tls: {cert_file: "+junk+", key_file: "+junk+"}\n")
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"unreadable file", []string{"serve", "--config", filepath.Join(dir, "nope.yaml")}, "sluice serve: " + filepath.Join(dir, "nope.yaml") + ": cannot read the file: no such file or directory\n"},
		{"certificate that is not PEM", []string{"serve", "--config", badPEM}, `listener "s"`},
		{"bad flag", []string{"serve", "--port", "1"}, "sluice serve: flag provided but not defined: -port.\n"},
		{"unknown command", []string{"start"}, "sluice: unknown command \"start\".\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := runBin(t, "", tt.args...)
			first, _, _ := strings.Cut(errOut, "\n")
			if code != 2 || !strings.Contains(first+"\n", tt.want) || strings.Contains(errOut, "goroutine ") || strings.Contains(errOut, "panic") {
				t.Errorf("exit %d, stderr %q; want 2 and a first line containing %q", code, errOut, tt.want)
			}
		})
	}
}

// TestE2EPortInUse: a busy MQTT port is exit code 2 and one sentence naming the address.
func TestE2EPortInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	p := testConfig(t, dir, "")
	b, _ := os.ReadFile(p)
	writeText(t, dir, "sluice.yaml", strings.Replace(string(b), `address: "127.0.0.1:0", allow`, `address: "`+busy.Addr().String()+`", allow`, 1))
	code, _, errOut := runBin(t, "", "serve", "--config", p)
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	last := lines[len(lines)-1]
	want := `sluice serve: mqtt: listener "tcp": listen on ` + busy.Addr().String() + ": address already in use"
	if code != 2 || last != want {
		t.Errorf("exit %d, last stderr line %q; want 2 and %q", code, last, want)
	}
}

func TestE2EVersionPasswdCheck(t *testing.T) {
	if code, out, _ := runBin(t, "", "version"); code != 0 || !strings.HasPrefix(out, "sluice ") {
		t.Errorf("version: exit %d, %q", code, out)
	}
	code, out, _ := runBin(t, "hunter2\n", "passwd")
	if code != 0 || bcrypt.CompareHashAndPassword([]byte(strings.TrimSpace(out)), []byte("hunter2")) != nil {
		t.Errorf("passwd: exit %d, %q", code, out)
	}
	p := testConfig(t, t.TempDir(), "")
	if code, out, errOut := runBin(t, "", "serve", "--config", p, "--check"); code != 0 || out != p+": ok\n" {
		t.Errorf("--check: exit %d, %q, %q", code, out, errOut)
	}
}

// TestE2EGracefulShutdown: SIGTERM with a client connected: the client is disconnected, the process
// exits 0 within the bound. SIGINT does the same.
func TestE2EGracefulShutdown(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			p := testConfig(t, t.TempDir(), "")
			pr := startProc(t, "serve", "--config", p)
			addr, httpAddr := pr.started()
			if code, body := httpGet(t, "http://"+httpAddr+"/readyz"); code != 200 {
				t.Fatalf("/readyz: %d %q", code, body)
			}
			c, err := dialMQTT(t, addr, "stay", dialOpts{})
			if err != nil {
				t.Fatal(err)
			}
			c.subscribe(t, "x", 1)
			start := time.Now()
			pr.signal(sig)
			if code := pr.wait(shutdownTimeout + 5*time.Second); code != 0 {
				t.Fatalf("exit code %d after %v, want 0", code, sig)
			}
			t.Logf("%v: exited 0 after %v", sig, time.Since(start))
			waitFor(t, 5*time.Second, "client disconnected", c.isLost)
			c.mu.Lock()
			d := c.disc
			c.mu.Unlock()
			if d != nil && d.ReasonCode != 0x8B {
				t.Errorf("DISCONNECT reason 0x%02x, want 0x8B (server shutting down)", d.ReasonCode)
			}
			if _, ok := pr.findLog("stopped", 0); !ok {
				t.Error("no \"stopped\" log line")
			}
		})
	}
}

// TestE2EReload: SIGHUP applies a user added to the file; a connected client stays connected.
func TestE2EReload(t *testing.T) {
	dir := t.TempDir()
	alice, bob := hashOf(t, "alice-pw"), hashOf(t, "bob-pw")
	write := func(users string) string {
		p := testConfig(t, dir, "  users:\n"+users)
		b, _ := os.ReadFile(p)
		return writeText(t, dir, "sluice.yaml", strings.ReplaceAll(string(b), "allow_anonymous: true", "allow_anonymous: false"))
	}
	aliceLine := `    - {username: alice, password_hash: "` + alice + `"}` + "\n"
	p := write(aliceLine)
	pr := startProc(t, "serve", "--config", p)
	addr, _ := pr.started()
	ca, err := dialMQTT(t, addr, "alice", dialOpts{user: "alice", pass: "alice-pw"})
	if err != nil {
		t.Fatal(err)
	}
	ca.subscribe(t, "r/#", 1)
	if _, err := dialMQTT(t, addr, "bob", dialOpts{user: "bob", pass: "bob-pw"}); err == nil {
		t.Fatal("bob got in before he was added")
	}

	write(aliceLine + `    - {username: bob, password_hash: "` + bob + `"}` + "\n")
	pr.signal(syscall.SIGHUP)
	pr.waitLog("reloaded", 0, 10*time.Second)
	cb, err := dialMQTT(t, addr, "bob", dialOpts{user: "bob", pass: "bob-pw"})
	if err != nil {
		t.Fatalf("bob after SIGHUP: %v", err)
	}
	cb.publish(t, "r/1", 1, false, "hi alice")
	ca.expect(t, "r/1", "hi alice")

	// A broken file on SIGHUP is logged and changes nothing; the broker keeps running.
	writeText(t, dir, "sluice.yaml", "mqtt:\n  users: {}\n")
	pr.signal(syscall.SIGHUP)
	m := pr.waitLog("reload failed; keeping the running users and acl", 0, 10*time.Second)
	if e, _ := m["error"].(string); !strings.HasPrefix(e, p+":2: ") {
		t.Errorf("reload error %q does not name %s:2", e, p)
	}
	if _, err := dialMQTT(t, addr, "bob2", dialOpts{user: "bob", pass: "bob-pw"}); err != nil {
		t.Fatalf("bob after a failed reload: %v", err)
	}
	if ca.isLost() || cb.isLost() {
		t.Fatal("a reload disconnected a client")
	}
	pr.signal(syscall.SIGTERM)
	if code := pr.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
}

// TestE2EKill9: a persistent MQTT 5 session's queued QoS 1 messages survive kill -9 of the broker.
func TestE2EKill9(t *testing.T) {
	const n = 200
	dir := t.TempDir()
	p := testConfig(t, dir, "")
	pr := startProc(t, "serve", "--config", p)
	addr, _ := pr.started()

	sub, err := dialMQTT(t, addr, "k9-sub", dialOpts{persistent: true})
	if err != nil {
		t.Fatal(err)
	}
	sub.subscribe(t, "k9/#", 1)
	sub.close() // DISCONNECT; the session (expiry 1 h) stays

	pub, err := dialMQTT(t, addr, "k9-pub", dialOpts{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		pub.publish(t, fmt.Sprintf("k9/%d", i%7), 1, false, fmt.Sprintf("m%03d", i)) // returns once PUBACKed
	}
	pr.signal(syscall.SIGKILL)
	if code := pr.wait(10 * time.Second); code != -int(syscall.SIGKILL) {
		t.Fatalf("exit code %d, want killed by SIGKILL", code)
	}
	pub.close()

	pr2 := startProc(t, "serve", "--config", p)
	addr2, _ := pr2.started()
	sub2, err := dialMQTT(t, addr2, "k9-sub", dialOpts{persistent: true})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	deadline := time.After(30 * time.Second)
	for len(got) < n {
		select {
		case m := <-sub2.msgs:
			got[string(m.Payload)]++
		case <-deadline:
			t.Fatalf("received %d of %d messages after kill -9 and restart", len(got), n)
		}
	}
	for i := range n {
		if got[fmt.Sprintf("m%03d", i)] == 0 {
			t.Errorf("message m%03d lost", i)
		}
	}
	pr2.signal(syscall.SIGTERM)
	if code := pr2.wait(15 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
}

// TestE2EMosquittoClients: interop with mosquitto_pub and mosquitto_sub (MQTT 3.1.1 and 5): a QoS 1
// round trip and a retained message.
func TestE2EMosquittoClients(t *testing.T) {
	subPath, err1 := exec.LookPath("mosquitto_sub")
	pubPath, err2 := exec.LookPath("mosquitto_pub")
	if err1 != nil || err2 != nil {
		if os.Getenv("SLUICE_REQUIRE_MOSQUITTO") != "" {
			t.Fatal("mosquitto_sub and mosquitto_pub are required (apt-get install mosquitto-clients)")
		}
		t.Skip("mosquitto_sub/mosquitto_pub not installed (apt-get install mosquitto-clients; .ci/run does)")
	}
	pr := startProc(t, "serve", "--config", testConfig(t, t.TempDir(), ""))
	addr, _ := pr.started()
	host, port, _ := net.SplitHostPort(addr)
	for _, v := range []string{"mqttv311", "mqttv5"} {
		t.Run(v, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			pub := func(args ...string) {
				t.Helper()
				out, err := exec.CommandContext(ctx, pubPath, append([]string{"-h", host, "-p", port, "-V", v, "-q", "1"}, args...)...).CombinedOutput()
				if err != nil {
					t.Fatalf("mosquitto_pub %v: %v\n%s", args, err, out)
				}
			}
			// Retained: published first, then received by a later subscriber.
			pub("-t", "interop/"+v+"/retained", "-r", "-m", "kept")
			out, err := exec.CommandContext(ctx, subPath, "-h", host, "-p", port, "-V", v, "-q", "1",
				"-t", "interop/"+v+"/retained", "-C", "1", "-v", "-W", "10").CombinedOutput()
			if err != nil || string(out) != "interop/"+v+"/retained kept\n" {
				t.Fatalf("retained: %v, %q", err, out)
			}

			// QoS 1 through a persistent session: subscribe and leave (-E), publish, come back for it.
			// (A live subscriber's output is block-buffered on a pipe, so "subscribed" cannot be seen.)
			subArgs := []string{"-h", host, "-p", port, "-V", v, "-q", "1", "-c", "-i", "interop-" + v, "-t", "interop/" + v + "/q1"}
			if v == "mqttv5" {
				subArgs = append(subArgs, "-x", "3600")
			}
			if out, err := exec.CommandContext(ctx, subPath, append(subArgs, "-E")...).CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_sub -E: %v\n%s", err, out)
			}
			pub("-t", "interop/"+v+"/q1", "-m", "hello from mosquitto_pub")
			out, err = exec.CommandContext(ctx, subPath, append(subArgs, "-C", "1", "-v", "-W", "10")...).CombinedOutput()
			if err != nil || string(out) != "interop/"+v+"/q1 hello from mosquitto_pub\n" {
				t.Fatalf("QoS 1: %v, %q", err, out)
			}
		})
	}
}
