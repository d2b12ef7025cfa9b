package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/sluicemq/sluice/configs"
)

func TestHelp(t *testing.T) {
	tests := [][]string{
		{"help"}, {"--help"}, {"-h"}, {"help", "serve"}, {"serve", "--help"}, {"serve", "-h"},
		{"passwd", "--help"}, {"version", "--help"}, {"help", "passwd"},
	}
	for _, c := range commands() {
		tests = append(tests, []string{c.name, "--help"})
	}
	for _, args := range tests {
		t.Run(strings.Join(args, "_"), func(t *testing.T) {
			code, out, errOut := runCLI(t, args...)
			if code != 0 || !strings.HasPrefix(out, "Usage: sluice") || errOut != "" {
				t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
			}
		})
	}
}

// TestUsageErrors: a wrong command or flag gets one sentence and the usage on stderr, and exit code 2.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args  []string
		first string
	}{
		{nil, "sluice: no command given."},
		{[]string{"serv"}, `sluice: unknown command "serv".`},
		{[]string{"--config", "x"}, "sluice: flag --config comes before a command; flags go after it."},
		{[]string{"serve", "--bogus"}, "sluice serve: flag provided but not defined: -bogus."},
		{[]string{"serve", "extra.yaml"}, `sluice serve: unexpected argument "extra.yaml" (the configuration file goes after --config).`},
		{[]string{"serve", "--log-level", "loud"}, `sluice serve: log level "loud" is not one of trace, debug, info, warn, error.`},
		{[]string{"version", "now"}, `sluice version: unexpected argument "now".`},
		{[]string{"passwd", "--cost", "4"}, "sluice passwd: --cost 4 is not between 10 and 31."},
		{[]string{"passwd", "a", "b"}, `sluice passwd: unexpected argument "b".`},
		{[]string{"help", "nope"}, `sluice: unknown command "nope".`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, "_"), func(t *testing.T) {
			code, out, errOut := runCLI(t, tt.args...)
			first, rest, _ := strings.Cut(errOut, "\n")
			if code != 2 || out != "" || first != tt.first {
				t.Errorf("exit %d, stdout %q, first stderr line %q; want 2, \"\", %q", code, out, first, tt.first)
			}
			logLevel := len(tt.args) > 1 && tt.args[1] == "--log-level" // a value error, not a usage error
			if !logLevel && !strings.Contains(rest, "Usage: sluice") {
				t.Errorf("stderr has no usage: %q", errOut)
			}
		})
	}
}

func TestConfigCommand(t *testing.T) {
	code, out, _ := runCLI(t, "config")
	if code != 0 || out != string(configs.Embedded()) {
		t.Fatalf("exit %d, output is not the embedded sluice.yaml", code)
	}
	// What it prints is a valid configuration file that means the default.
	p := filepath.Join(t.TempDir(), "s.yaml")
	if err := os.WriteFile(p, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runCLI(t, "serve", "--config", p, "--check"); code != 0 {
		t.Errorf("--check of the printed default: exit %d, %q %q", code, out, errOut)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI(t, "version")
	if code != 0 || !strings.HasPrefix(out, "sluice dev (go1.") {
		t.Errorf("exit %d, %q", code, out)
	}
}

func TestPasswd(t *testing.T) {
	run := func(stdin string, args ...string) (int, string, string) {
		var out, errb strings.Builder
		code := passwd(args, strings.NewReader(stdin), &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, _ := run("s3cret pass\r\nignored\n")
	hash := strings.TrimSuffix(out, "\n")
	if code != 0 || bcrypt.CompareHashAndPassword([]byte(hash), []byte("s3cret pass")) != nil {
		t.Fatalf("exit %d, %q: not a hash of the first line", code, out)
	}
	if cost, err := bcrypt.Cost([]byte(hash)); err != nil || cost < 10 {
		t.Errorf("cost %d, %v; want ≥ 10", cost, err)
	}
	if code, out, _ := run("pw", "--cost", "11"); code != 0 || !strings.HasPrefix(out, "$2a$11$") {
		t.Errorf("--cost 11: exit %d, %q", code, out)
	}

	// With a username it prints a users entry that the configuration accepts as it is.
	code, out, _ = run("pw\n", "al ice")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "c.yaml")
	entry := strings.ReplaceAll("\n"+out, "\n", "\n    ")
	if err := os.WriteFile(p, []byte("mqtt:\n  users:"+entry), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Load(p)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		t.Fatalf("entry %q: %v", out, err)
	}
	if u := cfg.MQTT.Users; len(u) != 1 || u[0].Username != "al ice" || bcrypt.CompareHashAndPassword([]byte(u[0].PasswordHash), []byte("pw")) != nil {
		t.Errorf("users = %+v", u)
	}

	for _, tt := range []struct{ name, stdin, want string }{
		{"empty", "", "sluice passwd: the password on stdin is empty.\n"},
		{"empty line", "\nx\n", "sluice passwd: the password on stdin is empty.\n"},
		{"too long", strings.Repeat("x", 73), "sluice passwd: the password is longer than 72 bytes, which bcrypt cannot hash.\n"},
		{"huge line", strings.Repeat("x", 5000), "sluice passwd: the first line of stdin is longer than 4096 bytes.\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := run(tt.stdin)
			if code != 2 || out != "" || errOut != tt.want {
				t.Errorf("exit %d, stdout %q, stderr %q; want 2, \"\", %q", code, out, errOut, tt.want)
			}
		})
	}
}

func TestServeCheck(t *testing.T) {
	dir := t.TempDir()
	p := testConfig(t, dir, "")
	code, out, errOut := runCLI(t, "serve", "--config", p, "--check")
	if code != 0 || out != p+": ok\n" || errOut != "" {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Errorf("--check created the data directory (%v)", err)
	}
	code, out, _ = runCLI(t, "serve", "--check")
	if code != 0 || out != configs.EmbeddedName+": ok\n" {
		t.Errorf("embedded: exit %d, stdout %q", code, out)
	}
	bad := writeText(t, dir, "bad.yaml", "mqtt:\n  limits:\n    connect_timeout: soon\n")
	code, out, errOut = runCLI(t, "serve", "--config", bad, "--check")
	want := "sluice serve: " + bad + `:3: key "connect_timeout" in section mqtt.limits: "soon" is not a duration (write a number with a unit: 500ms, 10s, 5m, 1h)` + "\n"
	if code != 2 || out != "" || errOut != want {
		t.Errorf("exit %d, stdout %q, stderr %q; want 2, \"\", %q", code, out, errOut, want)
	}
}
