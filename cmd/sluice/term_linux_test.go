//go:build linux

package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sys/unix"
)

// openPTY returns a new pseudo-terminal's master and slave ends.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

func echoOn(t *testing.T, f *os.File) bool {
	t.Helper()
	tio, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	return tio.Lflag&unix.ECHO != 0
}

// TestPasswdTerminal: on a terminal, passwd asks twice with echo off, and turns echo back on.
func TestPasswdTerminal(t *testing.T) {
	master, slave := openPTY(t)
	if !isTerminal(slave) {
		t.Fatal("the pty slave is not seen as a terminal")
	}
	if !echoOn(t, slave) {
		t.Fatal("a new pty has echo off")
	}
	type result struct {
		code        int
		out, errOut string
	}
	done := make(chan result, 1)
	go func() {
		var out, errb strings.Builder
		code := passwd(nil, slave, &out, &errb)
		done <- result{code, out.String(), errb.String()}
	}()
	waitFor(t, 10*time.Second, "echo off", func() bool { return !echoOn(t, slave) })
	if _, err := master.WriteString("pty-secret\npty-secret\n"); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("passwd did not return")
	}
	if r.code != 0 || bcrypt.CompareHashAndPassword([]byte(strings.TrimSpace(r.out)), []byte("pty-secret")) != nil {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.out, r.errOut)
	}
	if r.errOut != "Password: \nAgain: \n" {
		t.Errorf("prompts %q", r.errOut)
	}
	if !echoOn(t, slave) {
		t.Error("echo was not turned back on")
	}
	// Nothing typed was echoed back to the terminal.
	var echoed []byte
	buf := make([]byte, 256)
	for {
		fds := []unix.PollFd{{Fd: int32(master.Fd()), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 200); err != nil || n == 0 {
			break
		}
		n, err := unix.Read(int(master.Fd()), buf)
		if n <= 0 || err != nil {
			break
		}
		echoed = append(echoed, buf[:n]...)
	}
	if strings.Contains(string(echoed), "pty-secret") {
		t.Errorf("the password was echoed: %q", echoed)
	}
}
