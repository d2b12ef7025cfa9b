//go:build !unix

package main

// lockDataDir does nothing where flock(2) is missing: one process per data directory is then up to the
// operator (the queues keep their own lock file).
func lockDataDir(string) (release func(), err error) { return func() {}, nil }
