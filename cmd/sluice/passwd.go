package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/crypto/bcrypt"
)

const passwdUsage = `Usage: sluice passwd [--cost N] [USERNAME]

Reads a password on stdin and prints its bcrypt hash, for password_hash in mqtt.users. On a terminal
it asks twice without echo; otherwise it reads the first line of stdin. With USERNAME it prints a whole
mqtt.users entry in YAML instead of the bare hash.

  printf '%s\n' 's3cret' | sluice passwd alice >> users.yaml`

// minPasswdCost is the lowest bcrypt cost accepted; bcrypt.DefaultCost (10) takes ~50 ms per check on
// a small machine. The broker caches verified passwords, so reconnect storms do not pay it each time.
const minPasswdCost = bcrypt.DefaultCost

func cmdPasswd(_ context.Context, args []string, stdout, stderr io.Writer) int {
	return passwd(args, os.Stdin, stdout, stderr)
}

func passwd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlagSet("passwd", passwdUsage)
	cost := fs.Int("cost", minPasswdCost, "bcrypt cost, "+strconv.Itoa(minPasswdCost)+" to 31 (each step doubles the time)")
	if code, ok := parseFlags(fs, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 1 {
		return usageFail(fs, stderr, "unexpected argument %q.", fs.Arg(1))
	}
	if *cost < minPasswdCost || *cost > bcrypt.MaxCost {
		return usageFail(fs, stderr, "--cost %d is not between %d and %d.", *cost, minPasswdCost, bcrypt.MaxCost)
	}
	pw, err := readPassword(stdin, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "sluice passwd: %v.\n", err)
		return 2
	}
	hash, err := bcrypt.GenerateFromPassword(pw, *cost)
	if errors.Is(err, bcrypt.ErrPasswordTooLong) {
		fmt.Fprintln(stderr, "sluice passwd: the password is longer than 72 bytes, which bcrypt cannot hash.")
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "sluice passwd: %v.\n", err)
		return 1
	}
	if fs.NArg() == 1 {
		fmt.Fprintf(stdout, "- username: %s\n  password_hash: %q\n", strconv.Quote(fs.Arg(0)), hash)
		return 0
	}
	fmt.Fprintf(stdout, "%s\n", hash)
	return 0
}

// readPassword reads the password: from a terminal twice, without echo, prompting on stderr; from
// anything else, the first line (without its line ending).
func readPassword(stdin io.Reader, stderr io.Writer) ([]byte, error) {
	if f, ok := stdin.(*os.File); ok && isTerminal(f) {
		fmt.Fprint(stderr, "Password: ")
		pw, err := readSecretLine(f)
		fmt.Fprintln(stderr)
		if err != nil {
			return nil, err
		}
		fmt.Fprint(stderr, "Again: ")
		again, err := readSecretLine(f)
		fmt.Fprintln(stderr)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(pw, again) {
			return nil, errors.New("the passwords differ")
		}
		if len(pw) == 0 {
			return nil, errors.New("the password is empty")
		}
		return pw, nil
	}
	line, err := bufio.NewReaderSize(stdin, 4096).ReadSlice('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, errors.New("the first line of stdin is longer than 4096 bytes")
		}
		return nil, fmt.Errorf("read stdin: %w", err)
	}
	line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
	if len(line) == 0 {
		return nil, errors.New("the password on stdin is empty")
	}
	return line, nil
}
