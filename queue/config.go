package queue

import (
	"fmt"
	"math"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/wal"
)

// Overflow policies, sync policies and expiry actions accepted in Config.
const (
	OverflowReject     = "reject"
	OverflowDropOldest = "drop_oldest"

	SyncAlways   = "always"
	SyncInterval = "interval"
	SyncNone     = "none"

	ExpireDeadLetter = "dead_letter"
	ExpireDrop       = "drop"
)

// Defaults of Config, applied to zero fields.
const (
	DefaultVisibilityTimeout = 30 * time.Second
	DefaultMaxAttempts       = 5
	DefaultBackoffInitial    = time.Second
	DefaultBackoffMultiplier = 2.0
	DefaultBackoffMax        = 5 * time.Minute
	DefaultBackoffJitter     = 0.2
	DefaultMaxMessageSize    = 1 << 20

	// MaxNameLen is the longest queue name accepted.
	MaxNameLen = 128
	// maxLease bounds leases, nack delays and visibility timeouts so deadlines cannot overflow.
	maxLease = 7 * 24 * time.Hour
	// maxAttempts bounds MaxAttempts (attempt counts are 16 bits in the index).
	maxAttempts = 10000
	// maxReceive bounds how many messages one Receive returns.
	maxReceive = 10000
)

// Config holds per-queue settings; zero fields take the defaults (see the Default* constants).
type Config struct {
	VisibilityTimeout time.Duration // lease when Receive is given 0; default 30s
	MaxAttempts       int           // deliveries before dead-lettering; default 5
	Backoff           Backoff       // delay before a failed delivery becomes ready again
	MaxMessages       int64         // 0 = unlimited
	MaxBytes          int64         // 0 = unlimited; counts encoded record bytes
	MaxAge            time.Duration // 0 = unlimited (TTL, measured from enqueue)
	Overflow          string        // "reject" (default) | "drop_oldest"
	Sync              string        // "always" (default) | "interval" | "none"; read at Open/creation only
	DeadLetter        *bool         // nil → true; false drops messages that exhaust their attempts
	OnExpire          string        // "dead_letter" (default) | "drop"
	MaxMessageSize    int           // max encoded record size; 0 → 1 MiB
}

// Backoff is initial × multiplier^(attempt−1), capped at Max, then spread by ±Jitter (a fraction).
// A negative Jitter means no jitter (zero takes the default 0.2).
type Backoff struct {
	Initial    time.Duration
	Multiplier float64
	Max        time.Duration
	Jitter     float64
}

// Options configure a Manager. The zero value is valid.
type Options struct {
	Defaults   Config            // applied to queues not declared in Queues and to zero fields of declared ones
	Queues     map[string]Config // declared queues, created at Open
	Logger     zerolog.Logger
	Clock      func() time.Time      // nil → time.Now
	Registerer prometheus.Registerer // nil → no metrics

	walFS func(logDir string) wal.FS // tests: fault injection per log; nil → the OS
}

// withDefaults returns c with zero fields taken from d, then from the package defaults.
func (c Config) withDefaults(d Config) Config {
	if c.VisibilityTimeout == 0 {
		c.VisibilityTimeout = d.VisibilityTimeout
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = d.MaxAttempts
	}
	if c.Backoff.Initial == 0 {
		c.Backoff.Initial = d.Backoff.Initial
	}
	if c.Backoff.Multiplier == 0 {
		c.Backoff.Multiplier = d.Backoff.Multiplier
	}
	if c.Backoff.Max == 0 {
		c.Backoff.Max = d.Backoff.Max
	}
	if c.Backoff.Jitter == 0 {
		c.Backoff.Jitter = d.Backoff.Jitter
	}
	if c.MaxMessages == 0 {
		c.MaxMessages = d.MaxMessages
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = d.MaxBytes
	}
	if c.MaxAge == 0 {
		c.MaxAge = d.MaxAge
	}
	if c.Overflow == "" {
		c.Overflow = d.Overflow
	}
	if c.Sync == "" {
		c.Sync = d.Sync
	}
	if c.DeadLetter == nil {
		c.DeadLetter = d.DeadLetter
	}
	if c.OnExpire == "" {
		c.OnExpire = d.OnExpire
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = d.MaxMessageSize
	}
	return c
}

// packageDefaults is the Config every zero field ends up with.
func packageDefaults() Config {
	t := true
	return Config{
		VisibilityTimeout: DefaultVisibilityTimeout,
		MaxAttempts:       DefaultMaxAttempts,
		Backoff: Backoff{
			Initial:    DefaultBackoffInitial,
			Multiplier: DefaultBackoffMultiplier,
			Max:        DefaultBackoffMax,
			Jitter:     DefaultBackoffJitter,
		},
		Overflow:       OverflowReject,
		Sync:           SyncAlways,
		DeadLetter:     &t,
		OnExpire:       ExpireDeadLetter,
		MaxMessageSize: DefaultMaxMessageSize,
	}
}

// validate reports the first bad field as an error wrapping ErrInvalidConfig.
func (c Config) validate() error {
	bad := func(field string, v any, why string) error {
		return fmt.Errorf("%w: %s = %v %s", ErrInvalidConfig, field, v, why)
	}
	switch {
	case c.VisibilityTimeout < 0 || c.VisibilityTimeout > maxLease:
		return bad("visibility_timeout", c.VisibilityTimeout, "must be between 0 and 168h")
	case c.MaxAttempts < 0 || c.MaxAttempts > maxAttempts:
		return bad("max_attempts", c.MaxAttempts, fmt.Sprintf("must be between 0 and %d", maxAttempts))
	case c.Backoff.Initial < 0 || c.Backoff.Initial > maxLease:
		return bad("backoff.initial", c.Backoff.Initial, "must be between 0 and 168h")
	case c.Backoff.Max < 0 || c.Backoff.Max > maxLease:
		return bad("backoff.max", c.Backoff.Max, "must be between 0 and 168h")
	case c.Backoff.Multiplier < 0 || math.IsNaN(c.Backoff.Multiplier) || math.IsInf(c.Backoff.Multiplier, 0):
		return bad("backoff.multiplier", c.Backoff.Multiplier, "must be a positive number")
	case c.Backoff.Jitter > 1 || math.IsNaN(c.Backoff.Jitter):
		return bad("backoff.jitter", c.Backoff.Jitter, "must be at most 1")
	case c.MaxMessages < 0:
		return bad("max_messages", c.MaxMessages, "must not be negative")
	case c.MaxBytes < 0:
		return bad("max_bytes", c.MaxBytes, "must not be negative")
	case c.MaxAge < 0:
		return bad("max_age", c.MaxAge, "must not be negative")
	case c.Overflow != "" && c.Overflow != OverflowReject && c.Overflow != OverflowDropOldest:
		return bad("overflow", fmt.Sprintf("%q", c.Overflow), `must be "reject" or "drop_oldest"`)
	case c.Sync != "" && c.Sync != SyncAlways && c.Sync != SyncInterval && c.Sync != SyncNone:
		return bad("sync", fmt.Sprintf("%q", c.Sync), `must be "always", "interval" or "none"`)
	case c.OnExpire != "" && c.OnExpire != ExpireDeadLetter && c.OnExpire != ExpireDrop:
		return bad("on_expire", fmt.Sprintf("%q", c.OnExpire), `must be "dead_letter" or "drop"`)
	case c.MaxMessageSize < 0 || c.MaxMessageSize > maxRecordSize:
		return bad("max_message_size", c.MaxMessageSize, fmt.Sprintf("must be between 0 and %d", maxRecordSize))
	}
	return nil
}

// backoff returns the delay before attempt+1 after a failed delivery number attempt (≥ 1).
// u is a uniform random number in [0, 1) used for the jitter.
func (b Backoff) backoff(attempt uint32, u float64) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	d := float64(b.Initial) * math.Pow(b.Multiplier, float64(attempt-1))
	if d > float64(b.Max) || math.IsInf(d, 0) || math.IsNaN(d) {
		d = float64(b.Max)
	}
	if b.Jitter > 0 {
		d *= 1 + b.Jitter*(2*u-1)
	}
	if d < 0 {
		d = 0
	}
	return time.Duration(d)
}

// ValidName reports whether name can be used as a queue name: 1 to 128 characters from
// [A-Za-z0-9._-], not starting with a dot (so "." and ".." and hidden files are impossible).
// The error wraps ErrInvalidName and says what is wrong.
func ValidName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %d characters, at most %d allowed", ErrInvalidName, len(name), MaxNameLen)
	case name[0] == '.':
		return fmt.Errorf("%w: %q starts with a dot", ErrInvalidName, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' {
			continue
		}
		return fmt.Errorf("%w: %q contains %q; use letters, digits, '.', '_' and '-'", ErrInvalidName, name, c)
	}
	return nil
}
