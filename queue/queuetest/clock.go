// Package queuetest holds helpers for tests of code that uses package queue: a manual clock to
// drive leases, backoff and max age deterministically through queue.Options.Clock.
package queuetest

import (
	"sync"
	"time"
)

// Clock is a manual clock, safe for concurrent use. The zero value starts at the Unix epoch;
// NewClock starts at a given time.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock reading start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's time; pass c.Now as queue.Options.Clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.now.IsZero() {
		c.now = time.Unix(0, 0)
	}
	return c.now
}

// Advance moves the clock forward by d (negative d is ignored) and returns the new time.
func (c *Clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.now.IsZero() {
		c.now = time.Unix(0, 0)
	}
	if d > 0 {
		c.now = c.now.Add(d)
	}
	return c.now
}
