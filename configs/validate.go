package configs

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"
)

var (
	listenerNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	queueNameRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
)

// ValidQueueName reports whether name can name a queue: 1 to 128 letters, digits, '.', '_' and '-',
// starting with a letter or a digit.
func ValidQueueName(name string) bool { return queueNameRE.MatchString(name) }

// Validate checks the configuration and returns the first problem as an *Error naming the file and line
// of the key at fault. It reads the TLS files' metadata (they must exist) but opens no socket.
func (c *Config) Validate() error {
	for _, check := range []func() error{c.validateLog, c.validateListeners, c.validateUsers, c.validateACL,
		c.validateLimits, c.validateHTTP, c.validateQueues, c.validateBridge, c.ValidateUplinks} {
		if err := check(); err != nil {
			return err
		}
	}
	if strings.TrimSpace(c.DataDir) == "" {
		return c.errAt("data_dir", "data_dir is empty; name a directory for the broker's and the queues' data")
	}
	return nil
}

// errAt makes an *Error for the key at path, at the closest position recorded for it or its parents.
func (c *Config) errAt(path, format string, args ...any) *Error {
	e := &Error{Msg: fmt.Sprintf(format, args...)}
	for p := path; p != ""; {
		if pos, ok := c.pos[p]; ok {
			e.File, e.Line = pos.file, pos.line
			break
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return e
}

func oneOf(v string, allowed ...string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	return false
}

func (c *Config) validateLog() error {
	if !oneOf(c.Log.Level, "trace", "debug", "info", "warn", "error") {
		return c.errAt("log.level", "log.level %q is not one of trace, debug, info, warn, error", c.Log.Level)
	}
	if !oneOf(c.Log.Format, "json", "console", "auto") {
		return c.errAt("log.format", "log.format %q is not one of json, console, auto", c.Log.Format)
	}
	return nil
}

// checkAddress checks a host:port to listen on.
func checkAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("%q has an invalid host", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (port != "0" && n == 0) {
		return fmt.Errorf("%q has an invalid port (0 to 65535)", addr)
	}
	return nil
}

func checkFile(path string) error {
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s does not exist", path)
	case err != nil:
		return fmt.Errorf("%s cannot be read: %s", path, pathErrText(err))
	case info.IsDir():
		return fmt.Errorf("%s is a directory", path)
	}
	return nil
}

func (c *Config) validateListeners() error {
	ls := c.MQTT.Listeners
	if len(ls) == 0 {
		return c.errAt("mqtt.listeners", "mqtt.listeners is empty; the broker needs at least one listener")
	}
	names := map[string]int{}
	addrs := map[string]int{}
	for i, l := range ls {
		p := fmt.Sprintf("mqtt.listeners[%d]", i)
		if !listenerNameRE.MatchString(l.Name) {
			if l.Name == "" {
				return c.errAt(p+".name", "listener %d has no name", i+1)
			}
			return c.errAt(p+".name", "listener name %q must be letters, digits, '.', '_' or '-'", l.Name)
		}
		if j, dup := names[l.Name]; dup {
			return c.errAt(p+".name", "listener name %q is used twice (listeners %d and %d)", l.Name, j+1, i+1)
		}
		names[l.Name] = i
		if !oneOf(l.Type, "tcp", "tls", "ws", "wss") {
			return c.errAt(p+".type", "listener %q: type %q is not one of tcp, tls, ws, wss", l.Name, l.Type)
		}
		if l.Address == "" {
			return c.errAt(p+".address", "listener %q has no address (host:port)", l.Name)
		}
		if err := checkAddress(l.Address); err != nil {
			return c.errAt(p+".address", "listener %q: address %v", l.Name, err)
		}
		if !strings.HasSuffix(l.Address, ":0") {
			if j, dup := addrs[l.Address]; dup {
				return c.errAt(p+".address", "listeners %q and %q both listen on %s", ls[j].Name, l.Name, l.Address)
			}
			addrs[l.Address] = i
		}
		if err := c.validateTLS(p, l); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) validateTLS(p string, l Listener) error {
	t := l.TLS
	secure := l.Type == "tls" || l.Type == "wss"
	if !secure {
		if t != (TLS{}) {
			return c.errAt(p+".tls", "listener %q: tls settings given for a %s listener (use type tls or wss)", l.Name, l.Type)
		}
		return nil
	}
	if t.CertFile == "" || t.KeyFile == "" {
		return c.errAt(p+".tls", "listener %q: a %s listener needs tls.cert_file and tls.key_file", l.Name, l.Type)
	}
	for _, f := range []struct{ key, path string }{
		{"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"client_ca_file", t.ClientCAFile},
	} {
		if f.path == "" {
			continue
		}
		if err := checkFile(f.path); err != nil {
			return c.errAt(p+".tls."+f.key, "listener %q: tls.%s %v", l.Name, f.key, err)
		}
	}
	if t.ClientCAFile == "" && t.RequireClientCert {
		return c.errAt(p+".tls.require_client_cert", "listener %q: tls.require_client_cert needs tls.client_ca_file", l.Name)
	}
	if t.ClientCAFile == "" && t.CertIdentity {
		return c.errAt(p+".tls.cert_identity", "listener %q: tls.cert_identity needs tls.client_ca_file", l.Name)
	}
	return nil
}

func (c *Config) validateUsers() error {
	seen := map[string]int{}
	for i, u := range c.MQTT.Users {
		p := fmt.Sprintf("mqtt.users[%d]", i)
		if u.Username == "" {
			return c.errAt(p+".username", "user %d has no username", i+1)
		}
		if !utf8.ValidString(u.Username) || strings.ContainsRune(u.Username, 0) {
			return c.errAt(p+".username", "user %d: the username is not valid UTF-8 text", i+1)
		}
		if j, dup := seen[u.Username]; dup {
			return c.errAt(p+".username", "user %q is listed twice (users %d and %d)", u.Username, j+1, i+1)
		}
		seen[u.Username] = i
		if u.PasswordHash == "" {
			return c.errAt(p+".password_hash", "user %q has no password_hash (make one with `sluice passwd`)", u.Username)
		}
		if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil || !strings.HasPrefix(u.PasswordHash, "$2") {
			return c.errAt(p+".password_hash", "user %q: password_hash is not a bcrypt hash (make one with `sluice passwd`)", u.Username)
		}
	}
	return nil
}

func (c *Config) validateACL() error {
	for i, r := range c.MQTT.ACL {
		p := fmt.Sprintf("mqtt.acl[%d]", i)
		if len(r.Publish) == 0 && len(r.Subscribe) == 0 {
			return c.errAt(p, "acl rule %d grants nothing (give it publish or subscribe filters)", i+1)
		}
		for _, side := range []struct {
			key     string
			filters []string
		}{{"publish", r.Publish}, {"subscribe", r.Subscribe}} {
			for j, f := range side.filters {
				if err := CheckFilter(f); err != nil {
					return c.errAt(fmt.Sprintf("%s.%s[%d]", p, side.key, j), "acl rule %d: %s filter %q: %v", i+1, side.key, f, err)
				}
			}
		}
	}
	return nil
}

func (c *Config) validateLimits() error {
	l := c.MQTT.Limits
	p := "mqtt.limits."
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"max_session_expiry", l.MaxSessionExpiry}, {"max_message_expiry", l.MaxMessageExpiry}, {"connect_timeout", l.ConnectTimeout}} {
		if d.v < 0 {
			return c.errAt(p+d.key, "mqtt.limits.%s is negative", d.key)
		}
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"max_pending_writes", l.MaxPendingWrites}, {"max_topic_length", l.MaxTopicLength}, {"max_topic_levels", l.MaxTopicLevels}, {"publish_burst", l.PublishBurst}} {
		if n.v < 0 {
			return c.errAt(p+n.key, "mqtt.limits.%s is negative", n.key)
		}
	}
	if l.PublishRate < 0 {
		return c.errAt(p+"publish_rate", "mqtt.limits.publish_rate is negative")
	}
	if l.KeepAliveMin != 0 && l.KeepAliveMax != 0 && l.KeepAliveMin > l.KeepAliveMax {
		return c.errAt(p+"keep_alive_min", "mqtt.limits.keep_alive_min (%d) is above keep_alive_max (%d)", l.KeepAliveMin, l.KeepAliveMax)
	}
	if l.MaxPacketSize != 0 && l.MaxPacketSize < 64 {
		return c.errAt(p+"max_packet_size", "mqtt.limits.max_packet_size %d is too small (at least 64 bytes)", l.MaxPacketSize)
	}
	s := c.MQTT.SlowSubscribers
	if !oneOf(s.Policy, "", "drop", "disconnect", "backpressure") {
		return c.errAt("mqtt.slow_subscribers.policy", "mqtt.slow_subscribers.policy %q is not one of drop, disconnect, backpressure", s.Policy)
	}
	if s.DisconnectAfter < 0 {
		return c.errAt("mqtt.slow_subscribers.disconnect_after", "mqtt.slow_subscribers.disconnect_after is negative")
	}
	if c.MQTT.SysInterval < 0 {
		return c.errAt("mqtt.sys_interval", "mqtt.sys_interval is negative")
	}
	return nil
}

func (c *Config) validateHTTP() error {
	if c.HTTP.Address != "" {
		if err := checkAddress(c.HTTP.Address); err != nil {
			return c.errAt("http.address", "http.address %v", err)
		}
		for i, l := range c.MQTT.Listeners {
			if l.Address == c.HTTP.Address && !strings.HasSuffix(l.Address, ":0") {
				return c.errAt("http.address", "http.address %s is also the address of listener %q (listener %d)", l.Address, l.Name, i+1)
			}
		}
	}
	seen := map[string]int{}
	for i, k := range c.HTTP.APIKeys {
		p := fmt.Sprintf("http.api_keys[%d]", i)
		if k.Name == "" {
			return c.errAt(p+".name", "api key %d has no name", i+1)
		}
		if j, dup := seen[k.Name]; dup {
			return c.errAt(p+".name", "api key name %q is used twice (keys %d and %d)", k.Name, j+1, i+1)
		}
		seen[k.Name] = i
		switch {
		case (k.Key == "") == (k.KeyHash == ""):
			return c.errAt(p, "api key %q needs exactly one of key and key_hash", k.Name)
		case k.KeyHash != "":
			h, ok := strings.CutPrefix(k.KeyHash, "sha256:")
			if b, err := hex.DecodeString(h); !ok || err != nil || len(b) != 32 {
				return c.errAt(p+".key_hash", "api key %q: key_hash must be \"sha256:\" and 64 hex digits", k.Name)
			}
		case len(k.Key) < 16:
			return c.errAt(p+".key", "api key %q: key is shorter than 16 characters", k.Name)
		}
		if len(k.Queues) == 0 {
			return c.errAt(p+".queues", "api key %q grants no queue rights (set queues: {name: [consume, produce, admin]})", k.Name)
		}
		for _, q := range names(k.Queues) {
			qp := p + ".queues." + q
			if q != "*" && !ValidQueueName(q) {
				return c.errAt(qp, "api key %q: %q is not a queue name", k.Name, q)
			}
			if len(k.Queues[q]) == 0 {
				return c.errAt(qp, "api key %q: no rights given for queue %q", k.Name, q)
			}
			for j, r := range k.Queues[q] {
				if !oneOf(r, "consume", "produce", "admin") {
					return c.errAt(fmt.Sprintf("%s[%d]", qp, j), "api key %q: right %q is not one of consume, produce, admin", k.Name, r)
				}
			}
		}
	}
	return nil
}

func (c *Config) validateQueueSettings(p string, s QueueSettings) error {
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"visibility_timeout", s.VisibilityTimeout}, {"max_age", s.MaxAge}, {"backoff.initial", s.Backoff.Initial}, {"backoff.max", s.Backoff.Max}} {
		if d.v < 0 {
			return c.errAt(p+"."+d.key, "%s.%s is negative", p, d.key)
		}
	}
	for _, n := range []struct {
		key string
		v   int64
	}{{"max_attempts", int64(s.MaxAttempts)}, {"max_messages", s.MaxMessages}, {"max_bytes", s.MaxBytes}, {"max_message_size", int64(s.MaxMessageSize)}} {
		if n.v < 0 {
			return c.errAt(p+"."+n.key, "%s.%s is negative", p, n.key)
		}
	}
	if s.Backoff.Multiplier != 0 && s.Backoff.Multiplier < 1 {
		return c.errAt(p+".backoff.multiplier", "%s.backoff.multiplier %g is below 1", p, s.Backoff.Multiplier)
	}
	if s.Backoff.Jitter < 0 || s.Backoff.Jitter > 1 {
		return c.errAt(p+".backoff.jitter", "%s.backoff.jitter %g is not between 0 and 1", p, s.Backoff.Jitter)
	}
	if s.Backoff.Max != 0 && s.Backoff.Initial > s.Backoff.Max {
		return c.errAt(p+".backoff.initial", "%s.backoff.initial is above backoff.max", p)
	}
	if !oneOf(s.Overflow, "", "reject", "drop_oldest") {
		return c.errAt(p+".overflow", "%s.overflow %q is not one of reject, drop_oldest", p, s.Overflow)
	}
	if !oneOf(s.Sync, "", "always", "interval", "none") {
		return c.errAt(p+".sync", "%s.sync %q is not one of always, interval, none", p, s.Sync)
	}
	if !oneOf(s.OnExpire, "", "dead_letter", "drop") {
		return c.errAt(p+".on_expire", "%s.on_expire %q is not one of dead_letter, drop", p, s.OnExpire)
	}
	return nil
}

func (c *Config) validateQueues() error {
	if err := c.validateQueueSettings("queues.defaults", c.Queues.Defaults); err != nil {
		return err
	}
	for _, name := range names(c.Queues.Declare) {
		p := "queues.declare." + name
		if !ValidQueueName(name) {
			return c.errAt(p, "queue name %q must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
		}
		if err := c.validateQueueSettings(p, c.Queues.Declare[name]); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) validateBridge() error {
	type key struct{ filter, queue string }
	seen := map[key]int{}
	for i, r := range c.Bridge.Rules {
		p := fmt.Sprintf("bridge.rules[%d]", i)
		if r.Filter == "" {
			return c.errAt(p+".filter", "bridge rule %d has no filter", i+1)
		}
		if strings.HasPrefix(r.Filter, "$share/") {
			return c.errAt(p+".filter", "bridge rule %d: filter %q is a shared subscription; use the topic filter alone (every matching publish is bridged once per rule)", i+1, r.Filter)
		}
		if err := CheckFilter(r.Filter); err != nil {
			return c.errAt(p+".filter", "bridge rule %d: filter %q: %v", i+1, r.Filter, err)
		}
		if r.Queue == "" {
			return c.errAt(p+".queue", "bridge rule %d has no queue", i+1)
		}
		if !ValidQueueName(r.Queue) {
			return c.errAt(p+".queue", "bridge rule %d: %q is not a queue name (1 to 128 letters, digits, '.', '_' or '-')", i+1, r.Queue)
		}
		if r.MinQoS < 0 || r.MinQoS > 2 {
			return c.errAt(p+".min_qos", "bridge rule %d: min_qos %d is not 0, 1 or 2", i+1, r.MinQoS)
		}
		k := key{r.Filter, r.Queue}
		if j, dup := seen[k]; dup {
			return c.errAt(p, "bridge rules %d and %d are the same (%s → %s)", j+1, i+1, r.Filter, r.Queue)
		}
		seen[k] = i
	}
	return nil
}

// CheckFilter checks an MQTT topic filter: non-empty UTF-8 without NUL, at most 65535 bytes, '+' only as
// a whole level and '#' only as the whole last level. It returns a short reason when the filter is
// invalid.
func CheckFilter(f string) error {
	switch {
	case f == "":
		return errors.New("empty")
	case len(f) > 65535:
		return errors.New("longer than 65535 bytes")
	case !utf8.ValidString(f):
		return errors.New("not valid UTF-8")
	case strings.ContainsRune(f, 0):
		return errors.New("contains a NUL character")
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return errors.New("'#' must be the whole last level")
		}
		if strings.Contains(l, "+") && l != "+" {
			return errors.New("'+' must be a whole level")
		}
	}
	return nil
}
