package mqtt

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Sentinel errors. Validation failures wrap ErrInvalidOptions.
var (
	ErrInvalidOptions = errors.New("mqtt: invalid options")
	ErrClosed         = errors.New("mqtt: server closed")
	ErrStarted        = errors.New("mqtt: server already started")
)

// Listener types.
const (
	TypeTCP = "tcp"
	TypeTLS = "tls"
	TypeWS  = "ws"
	TypeWSS = "wss"
)

// Slow-subscriber policies.
const (
	PolicyDrop         = "drop"
	PolicyDisconnect   = "disconnect"
	PolicyBackpressure = "backpressure"
)

// Options configures a Server. The zero value is valid but has no listeners.
type Options struct {
	Listeners          []Listener
	Users              []User    // bcrypt hashes
	ACL                []ACLRule // empty = everything allowed to authenticated clients; once non-empty: deny by default
	Limits             Limits    // zero fields → safe defaults (documented on each field)
	Slow               SlowSubscribers
	StorageDir         string // "" → no persistence (sessions, subscriptions, retained, in-flight lost on restart)
	EchoUserProperties bool   // acks echo the publish's user properties only if true (mochi echoes by default)
	SysInterval        time.Duration
	Logger             zerolog.Logger
	Registerer         prometheus.Registerer // nil → no metrics

	// StorageSync makes every storage write wait for fsync. Off (the default), a write reaches the
	// OS page cache before the broker goes on: it survives kill -9 of the broker but not a power
	// loss of the machine. On, it survives power loss and costs one fsync per stored change
	// (see BenchmarkQoS1FanIn/storage=bolt-sync).
	StorageSync bool
}

// Listener is one network endpoint.
type Listener struct {
	Name           string // unique, e.g. "tcp", "ws"; used by Addr
	Type           string // "tcp" | "tls" | "ws" | "wss"
	Address        string // host:port; port 0 allowed (tests)
	AllowAnonymous bool
	TLS            TLS // required for tls and wss
}

// TLS holds the files for a tls or wss listener.
type TLS struct {
	CertFile, KeyFile string
	ClientCAFile      string // non-empty → verify client certificates (mTLS)
	RequireClientCert bool   // with ClientCAFile: reject clients without a valid cert
	CertIdentity      bool   // a verified client certificate's CommonName authenticates as that username (no password needed)
}

// User is a username with a bcrypt hash of its password.
type User struct{ Username, PasswordHash string }

// ACLRule grants rights; a client may publish/subscribe to a topic when some rule matching it grants it.
type ACLRule struct {
	Username  string   // "" or "*" = any client (anonymous included)
	ClientID  string   // "" or "*" = any
	Publish   []string // topic filters; %u and %c are replaced by the client's username and client id
	Subscribe []string
}

// Limits bound what one client or the whole broker may use. Zero fields take the defaults noted.
type Limits struct {
	MaxPacketSize    uint32        // 0 → 1 MiB
	MaxConnections   int           // 0 → 10000 (negative = unlimited)
	ReceiveMaximum   uint16        // 0 → 256 (inbound QoS 1/2 in flight per client, told in CONNACK)
	MaxInflight      uint16        // 0 → 256 (outbound QoS 1/2 in flight per client)
	MaxPendingWrites int           // 0 → 256 (outbound packet queue per client; mochi's 8192 costs 64 KiB/client)
	KeepAliveMin     uint16        // seconds; 0 → 5
	KeepAliveMax     uint16        // seconds; 0 → 600; MQTT 5 clients asking for more (or 0) are told this in CONNACK
	MaxSessionExpiry time.Duration // 0 → 24h
	MaxMessageExpiry time.Duration // 0 → 24h
	MaxTopicLength   int           // 0 → 1024 bytes
	MaxTopicLevels   int           // 0 → 32
	PublishRate      float64       // per-client messages/s; 0 → unlimited
	PublishBurst     int           // 0 → max(1, 2×rate)
	ConnectTimeout   time.Duration // time from accept to a complete CONNECT (and TLS handshake); 0 → 10s
}

// SlowSubscribers is the policy for a subscriber whose outbound queue is full.
type SlowSubscribers struct {
	Policy          string        // "backpressure" (default: slow the publishers, lose nothing) | "drop" (QoS 0 first, counted) | "disconnect"
	DisconnectAfter time.Duration // a subscriber whose queue stays full this long is disconnected; 0 → 30s
}

// withDefaults returns a copy of o with defaults applied, or an error naming the first bad field.
func (o Options) withDefaults() (Options, error) {
	l := &o.Limits
	if l.MaxPacketSize == 0 {
		l.MaxPacketSize = 1 << 20
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = 10000
	}
	if l.ReceiveMaximum == 0 {
		l.ReceiveMaximum = 256
	}
	if l.MaxInflight == 0 {
		l.MaxInflight = 256
	}
	if l.MaxPendingWrites == 0 {
		l.MaxPendingWrites = 256
	}
	if l.KeepAliveMin == 0 {
		l.KeepAliveMin = 5
	}
	if l.KeepAliveMax == 0 {
		l.KeepAliveMax = 600
	}
	if l.MaxSessionExpiry == 0 {
		l.MaxSessionExpiry = 24 * time.Hour
	}
	if l.MaxMessageExpiry == 0 {
		l.MaxMessageExpiry = 24 * time.Hour
	}
	if l.MaxTopicLength == 0 {
		l.MaxTopicLength = 1024
	}
	if l.MaxTopicLevels == 0 {
		l.MaxTopicLevels = 32
	}
	if l.PublishRate > 0 && l.PublishBurst == 0 {
		l.PublishBurst = max(1, int(2*l.PublishRate))
	}
	if l.ConnectTimeout == 0 {
		l.ConnectTimeout = 10 * time.Second
	}
	if o.Slow.Policy == "" {
		o.Slow.Policy = PolicyBackpressure
	}
	if o.Slow.DisconnectAfter == 0 {
		o.Slow.DisconnectAfter = 30 * time.Second
	}
	if o.SysInterval == 0 {
		o.SysInterval = 10 * time.Second
	}

	bad := func(format string, args ...any) (Options, error) {
		return o, fmt.Errorf("%w: %s", ErrInvalidOptions, fmt.Sprintf(format, args...))
	}
	switch {
	case l.MaxPacketSize < 64:
		return bad("max packet size %d is below 64 bytes", l.MaxPacketSize)
	case l.MaxPendingWrites < 0:
		return bad("max pending writes %d is negative", l.MaxPendingWrites)
	case l.KeepAliveMin > l.KeepAliveMax:
		return bad("keep-alive minimum %ds is above the maximum %ds", l.KeepAliveMin, l.KeepAliveMax)
	case l.MaxSessionExpiry < 0 || l.MaxSessionExpiry > time.Duration(1<<32-1)*time.Second:
		return bad("max session expiry %s is out of range", l.MaxSessionExpiry)
	case l.MaxMessageExpiry < 0:
		return bad("max message expiry %s is negative", l.MaxMessageExpiry)
	case l.MaxTopicLength < 0 || l.MaxTopicLength > 65535:
		return bad("max topic length %d is out of range 1..65535", l.MaxTopicLength)
	case l.MaxTopicLevels < 0:
		return bad("max topic levels %d is negative", l.MaxTopicLevels)
	case l.PublishRate < 0:
		return bad("publish rate %g is negative", l.PublishRate)
	case l.PublishBurst < 0:
		return bad("publish burst %d is negative", l.PublishBurst)
	case l.ConnectTimeout < 0:
		return bad("connect timeout %s is negative", l.ConnectTimeout)
	case o.Slow.DisconnectAfter < 0:
		return bad("slow subscriber disconnect_after %s is negative", o.Slow.DisconnectAfter)
	case o.SysInterval < time.Second:
		return bad("$SYS interval %s is below 1s", o.SysInterval)
	}
	switch o.Slow.Policy {
	case PolicyDrop, PolicyDisconnect, PolicyBackpressure:
	default:
		return bad("slow subscriber policy %q is not drop, disconnect or backpressure", o.Slow.Policy)
	}

	names := map[string]bool{}
	for i, ln := range o.Listeners {
		if ln.Name == "" {
			return bad("listener %d has no name", i)
		}
		if names[ln.Name] {
			return bad("listener name %q is used twice", ln.Name)
		}
		names[ln.Name] = true
		switch ln.Type {
		case TypeTCP, TypeWS:
		case TypeTLS, TypeWSS:
			if ln.TLS.CertFile == "" || ln.TLS.KeyFile == "" {
				return bad("listener %q of type %s needs a cert file and a key file", ln.Name, ln.Type)
			}
		default:
			return bad("listener %q has type %q, want tcp, tls, ws or wss", ln.Name, ln.Type)
		}
		if ln.Address == "" {
			return bad("listener %q has no address", ln.Name)
		}
		if (ln.TLS.RequireClientCert || ln.TLS.CertIdentity) && ln.TLS.ClientCAFile == "" {
			return bad("listener %q verifies client certificates but has no client CA file", ln.Name)
		}
	}
	if err := validateUsers(o.Users); err != nil {
		return o, err
	}
	if err := validateACL(o.ACL); err != nil {
		return o, err
	}
	return o, nil
}
