package configs

import (
	"cmp"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Uplink forwards one local queue to an upstream MQTT broker: the edge gateway's store and forward.
// A message leaves the queue only once the upstream confirmed it (PUBACK for QoS 1, PUBCOMP for QoS 2).
type Uplink struct {
	Name string `yaml:"name"` // unique; the uplink=<name> label of the sluice_uplink_* metrics
	// URL of the upstream broker: mqtt:// or tcp:// (plain), mqtts://, tls:// or ssl:// (TLS), ws:// or
	// wss:// (WebSocket), with a host and a port.
	URL             string    `yaml:"url"`
	ProtocolVersion int       `yaml:"protocol_version"` // 5 (default) | 4 (MQTT 3.1.1)
	ClientID        string    `yaml:"client_id"`        // "" → sluice-<gateway>-<name>
	Username        string    `yaml:"username"`
	Password        string    `yaml:"password"`
	PasswordFile    string    `yaml:"password_file"` // read at start, a trailing newline dropped; not with password
	TLS             UplinkTLS `yaml:"tls"`
	// Queue is the local queue the uplink drains (declared under queues.declare or named by a bridge
	// rule). Filters instead bridge the matching publishes into a queue of the uplink's own,
	// "uplink.<name>" (declare it under queues.declare to set its limits). Exactly one of the two.
	Queue   string      `yaml:"queue"`
	Filters []string    `yaml:"filters"`
	Gateway string      `yaml:"gateway"` // this site's name, {gateway} in topic templates; "" → the host name
	Topic   UplinkTopic `yaml:"topic"`
	QoS     int         `yaml:"qos"` // 1 (default) | 2
	// MaxInFlight bounds the publishes awaiting their PUBACK/PUBCOMP (0 → 256); it is also the bound of
	// the duplicates a crash or a lost connection can cause.
	MaxInFlight int             `yaml:"max_in_flight"`
	Batch       int             `yaml:"batch"`      // messages taken from the queue at once; 0 → 256
	Rate        float64         `yaml:"rate"`       // messages/s at most; 0 = unlimited
	Burst       int             `yaml:"burst"`      // above rate; 0 → rate/10
	KeepAlive   time.Duration   `yaml:"keep_alive"` // 0 → 30s
	Timeout     time.Duration   `yaml:"timeout"`    // connect (dial, TLS, CONNACK) and each write; 0 → 10s
	Reconnect   UplinkBackoff   `yaml:"reconnect"`
	Lease       time.Duration   `yaml:"lease"` // lease on the messages being forwarded, renewed while they wait; 0 → 30s
	Downlink    *UplinkDownlink `yaml:"downlink"`
}

// UplinkTLS is the client side of TLS towards the upstream.
type UplinkTLS struct {
	CAFile             string `yaml:"ca_file"`   // PEM CA bundle; "" → the system's roots
	CertFile           string `yaml:"cert_file"` // client certificate for mutual TLS (with key_file)
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`          // "" → the URL's host
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"` // tests only: accepts any certificate
}

// UplinkTopic rewrites topics: strip_prefix is removed from the front, then template builds the new
// topic from {topic} (what is left) and {gateway}.
type UplinkTopic struct {
	StripPrefix string `yaml:"strip_prefix"`
	Template    string `yaml:"template"` // "" → "{topic}"
}

// UplinkBackoff is the wait between connection attempts: initial, doubled after each failure up to
// max, ± jitter (a fraction).
type UplinkBackoff struct {
	Initial time.Duration `yaml:"initial"` // 0 → 500ms
	Max     time.Duration `yaml:"max"`     // 0 → 1m
	Jitter  float64       `yaml:"jitter"`  // 0 → 0.2
}

// UplinkDownlink subscribes on the uplink's connection to upstream topics and republishes what arrives
// to the local broker (through a client connection to local_url).
type UplinkDownlink struct {
	Filters  []string    `yaml:"filters"`
	QoS      *int        `yaml:"qos"` // 0 | 1 | 2 (subscription QoS); unset → 1
	Topic    UplinkTopic `yaml:"topic"`
	LocalURL string      `yaml:"local_url"` // "" → the first tcp listener of mqtt.listeners
	// Credentials of the local client, when the local listener does not allow anonymous clients.
	LocalUsername string `yaml:"local_username"`
	LocalPassword string `yaml:"local_password"`
}

// SubQoS returns the downlink's subscription QoS: qos, or 1 when unset.
func (d UplinkDownlink) SubQoS() int {
	if d.QoS == nil {
		return 1
	}
	return *d.QoS
}

// QueueName returns the queue the uplink drains: Queue, or "uplink.<name>" when it has Filters.
func (u Uplink) QueueName() string {
	if u.Queue != "" {
		return u.Queue
	}
	return "uplink." + u.Name
}

// UplinkRules returns the bridge rules the uplinks with filters need (filter → the uplink's own
// queue), to be added to bridge.rules.
func (c *Config) UplinkRules() []BridgeRule {
	var out []BridgeRule
	for _, u := range c.Uplinks {
		if u.Queue != "" {
			continue
		}
		for _, f := range u.Filters {
			out = append(out, BridgeRule{Filter: f, Queue: u.QueueName()})
		}
	}
	return out
}

// ValidateUplinks checks the uplinks section and returns the first problem as an *Error naming the file
// and line: names, URLs, TLS files, queues (a queue must be declared or fed by a bridge rule, and be
// drained by one uplink only), topic templates, limits.
func (c *Config) ValidateUplinks() error {
	queues := map[string]bool{}
	for name := range c.Queues.Declare {
		queues[name] = true
	}
	for _, r := range c.Bridge.Rules {
		queues[r.Queue] = true
	}
	names := map[string]int{}
	drained := map[string]int{}
	for i, u := range c.Uplinks {
		p := fmt.Sprintf("uplinks[%d]", i)
		if err := c.validateUplink(p, i, u, queues); err != nil {
			return err
		}
		if j, dup := names[u.Name]; dup {
			return c.errAt(p+".name", "uplink name %q is used twice (uplinks %d and %d)", u.Name, j+1, i+1)
		}
		names[u.Name] = i
		if j, dup := drained[u.QueueName()]; dup {
			return c.errAt(p+".queue", "uplinks %q and %q both drain queue %q; a queue feeds one uplink (order would not hold)",
				c.Uplinks[j].Name, u.Name, u.QueueName())
		}
		drained[u.QueueName()] = i
	}
	return nil
}

func (c *Config) validateUplink(p string, i int, u Uplink, queues map[string]bool) error {
	if !listenerNameRE.MatchString(u.Name) {
		if u.Name == "" {
			return c.errAt(p, "uplink %d has no name", i+1)
		}
		return c.errAt(p+".name", "uplink name %q must be letters, digits, '.', '_' or '-'", u.Name)
	}
	who := fmt.Sprintf("uplink %q", u.Name)
	pu, err := checkUpstreamURL(u.URL)
	if err != nil {
		return c.errAt(p+".url", "%s: %v", who, err)
	}
	if !oneOf(fmt.Sprint(u.ProtocolVersion), "0", "4", "5") {
		return c.errAt(p+".protocol_version", "%s: protocol_version %d is not 5 or 4 (MQTT 3.1.1)", who, u.ProtocolVersion)
	}
	if u.Password != "" && u.PasswordFile != "" {
		return c.errAt(p+".password_file", "%s: give password or password_file, not both", who)
	}
	if u.PasswordFile != "" {
		if err := checkFile(u.PasswordFile); err != nil {
			return c.errAt(p+".password_file", "%s: password_file %v", who, err)
		}
	}
	secure := oneOf(strings.ToLower(pu.Scheme), "mqtts", "tls", "ssl", "wss")
	if !secure && u.TLS != (UplinkTLS{}) {
		return c.errAt(p+".tls", "%s: tls settings given for the plain %s:// URL (use mqtts:// or wss://)", who, pu.Scheme)
	}
	if (u.TLS.CertFile == "") != (u.TLS.KeyFile == "") {
		return c.errAt(p+".tls", "%s: a client certificate needs both tls.cert_file and tls.key_file", who)
	}
	for _, f := range []struct{ key, path string }{{"ca_file", u.TLS.CAFile}, {"cert_file", u.TLS.CertFile}, {"key_file", u.TLS.KeyFile}} {
		if f.path == "" {
			continue
		}
		if err := checkFile(f.path); err != nil {
			return c.errAt(p+".tls."+f.key, "%s: tls.%s %v", who, f.key, err)
		}
	}
	switch {
	case u.Queue == "" && len(u.Filters) == 0:
		return c.errAt(p, "%s needs a queue to drain, or filters to feed a queue of its own", who)
	case u.Queue != "" && len(u.Filters) > 0:
		return c.errAt(p+".filters", "%s: give queue or filters, not both", who)
	case u.Queue != "":
		if !ValidQueueName(u.Queue) {
			return c.errAt(p+".queue", "%s: %q is not a queue name", who, u.Queue)
		}
		if !queues[u.Queue] {
			return c.errAt(p+".queue", "%s: queue %q is not declared under queues.declare nor fed by a bridge rule", who, u.Queue)
		}
	default:
		for j, f := range u.Filters {
			if err := CheckFilter(f); err != nil {
				return c.errAt(fmt.Sprintf("%s.filters[%d]", p, j), "%s: filter %q: %v", who, f, err)
			}
		}
		if !ValidQueueName(u.QueueName()) {
			return c.errAt(p+".name", "%s: the name is too long for its queue %q", who, u.QueueName())
		}
	}
	if strings.ContainsAny(u.Gateway, "+#") {
		return c.errAt(p+".gateway", "%s: gateway %q contains a wildcard (+ or #)", who, u.Gateway)
	}
	if err := c.checkTopic(p+".topic", who, u.Topic); err != nil {
		return err
	}
	if u.QoS != 0 && u.QoS != 1 && u.QoS != 2 {
		return c.errAt(p+".qos", "%s: qos %d is not 1 or 2 (store and forward needs an acknowledgement)", who, u.QoS)
	}
	for _, n := range []struct {
		key string
		v   int
		max int
	}{{"max_in_flight", u.MaxInFlight, 65535}, {"batch", u.Batch, 10000}, {"burst", u.Burst, 1 << 30}} {
		if n.v < 0 || n.v > n.max {
			return c.errAt(p+"."+n.key, "%s: %s %d is not between 0 and %d", who, n.key, n.v, n.max)
		}
	}
	if u.Rate < 0 {
		return c.errAt(p+".rate", "%s: rate is negative", who)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"keep_alive", u.KeepAlive}, {"timeout", u.Timeout}, {"lease", u.Lease}, {"reconnect.initial", u.Reconnect.Initial}, {"reconnect.max", u.Reconnect.Max}} {
		if d.v < 0 {
			return c.errAt(p+"."+d.key, "%s: %s is negative", who, d.key)
		}
	}
	if u.KeepAlive > 65535*time.Second {
		return c.errAt(p+".keep_alive", "%s: keep_alive is above 65535s", who)
	}
	if u.Lease != 0 && u.Lease < time.Second {
		return c.errAt(p+".lease", "%s: lease %v is shorter than 1s", who, u.Lease)
	}
	if timeout := cmp.Or(u.Timeout, 10*time.Second); u.Lease != 0 && u.Lease < 2*timeout {
		return c.errAt(p+".lease", "%s: lease %v must be at least twice the timeout %v", who, u.Lease, timeout)
	}
	if u.Reconnect.Jitter < 0 || u.Reconnect.Jitter > 1 {
		return c.errAt(p+".reconnect.jitter", "%s: reconnect.jitter %g is not between 0 and 1", who, u.Reconnect.Jitter)
	}
	if d := u.Downlink; d != nil {
		dp := p + ".downlink"
		if len(d.Filters) == 0 {
			return c.errAt(dp, "%s: the downlink has no filters", who)
		}
		for j, f := range d.Filters {
			if err := CheckFilter(f); err != nil {
				return c.errAt(fmt.Sprintf("%s.filters[%d]", dp, j), "%s: downlink filter %q: %v", who, f, err)
			}
		}
		if q := d.SubQoS(); q < 0 || q > 2 {
			return c.errAt(dp+".qos", "%s: downlink qos %d is not 0, 1 or 2", who, q)
		}
		if err := c.checkTopic(dp+".topic", who+" downlink", d.Topic); err != nil {
			return err
		}
		if d.LocalURL != "" {
			if _, err := checkUpstreamURL(d.LocalURL); err != nil {
				return c.errAt(dp+".local_url", "%s: downlink local_url: %v", who, err)
			}
		} else if c.firstTCPListener() == "" {
			return c.errAt(dp+".local_url", "%s: the downlink needs local_url (there is no tcp listener to default to)", who)
		}
	}
	return nil
}

func (c *Config) checkTopic(p, who string, t UplinkTopic) error {
	if strings.ContainsAny(t.Template, "+#") {
		return c.errAt(p+".template", "%s: topic template %q contains a wildcard (+ or #)", who, t.Template)
	}
	if rest := strings.NewReplacer("{topic}", "", "{gateway}", "").Replace(t.Template); strings.ContainsAny(rest, "{}") {
		return c.errAt(p+".template", "%s: topic template %q has a placeholder other than {topic} and {gateway}", who, t.Template)
	}
	if strings.ContainsAny(t.StripPrefix, "+#") {
		return c.errAt(p+".strip_prefix", "%s: strip_prefix %q contains a wildcard (+ or #)", who, t.StripPrefix)
	}
	return nil
}

// firstTCPListener returns the address of the first tcp listener, "" if there is none.
func (c *Config) firstTCPListener() string {
	for _, l := range c.MQTT.Listeners {
		if l.Type == "tcp" {
			return l.Address
		}
	}
	return ""
}

// LocalURLFor returns the URL a downlink publishes to: its local_url, or the first tcp listener (a
// 0.0.0.0 or :: host becomes 127.0.0.1).
func (d UplinkDownlink) LocalURLFor(c *Config) string {
	if d.LocalURL != "" {
		return d.LocalURL
	}
	addr := c.firstTCPListener()
	if host, port, ok := strings.Cut(addr, ":"); ok && (host == "" || host == "0.0.0.0") {
		addr = "127.0.0.1:" + port
	} else if strings.HasPrefix(addr, "[::]:") {
		addr = "127.0.0.1:" + strings.TrimPrefix(addr, "[::]:")
	}
	return "tcp://" + addr
}

// checkUpstreamURL checks a broker URL to connect to.
func checkUpstreamURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, fmt.Errorf("url is empty")
	}
	u, err := url.Parse(s)
	if err != nil || !strings.Contains(s, "://") {
		return nil, fmt.Errorf("%q is not a URL like mqtts://broker.example.com:8883", s)
	}
	if !oneOf(strings.ToLower(u.Scheme), "mqtt", "tcp", "mqtts", "tls", "ssl", "ws", "wss") {
		return nil, fmt.Errorf("%q has scheme %q; want mqtt, tcp, mqtts, tls, ssl, ws or wss", s, u.Scheme)
	}
	if u.Hostname() == "" || u.Port() == "" {
		return nil, fmt.Errorf("%q needs a host and a port", s)
	}
	return u, nil
}
