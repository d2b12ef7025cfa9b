package configs

import "time"

// Config is the whole configuration file. Every key is snake_case; every field has a default, taken from
// the embedded sluice.yaml (see Default). A file read by Load overrides only the keys it sets; a list or
// a mapping of names it sets replaces the default one whole.
type Config struct {
	Log     Log    `yaml:"log"`
	MQTT    MQTT   `yaml:"mqtt"`
	HTTP    HTTP   `yaml:"http"`
	DataDir string `yaml:"data_dir"` // mqtt storage under data_dir/mqtt, queues under data_dir/queues
	Queues  Queues `yaml:"queues"`
	Bridge  Bridge `yaml:"bridge"`
	// Uplinks forward local queues to upstream MQTT brokers (edge gateway); see uplinks.go.
	Uplinks []Uplink `yaml:"uplinks"`

	// pos maps a key's path ("mqtt.listeners[0].address") to where it was set, for Validate's messages.
	pos map[string]position
}

// Log sets up the process's logger.
type Log struct {
	Level  string `yaml:"level"`  // trace | debug | info | warn | error
	Format string `yaml:"format"` // json | console | auto (console when stderr is a terminal)
}

// MQTT is the broker: its listeners, who may connect and what they may do, and its limits.
type MQTT struct {
	Listeners          []Listener      `yaml:"listeners"`
	Users              []User          `yaml:"users"`
	ACL                []ACLRule       `yaml:"acl"`
	Limits             Limits          `yaml:"limits"`
	SlowSubscribers    SlowSubscribers `yaml:"slow_subscribers"`
	EchoUserProperties bool            `yaml:"echo_user_properties"`
	SysInterval        time.Duration   `yaml:"sys_interval"`
	StorageSync        bool            `yaml:"storage_sync"` // fsync every session-storage write
}

// Listener is one socket the broker accepts clients on.
type Listener struct {
	Name           string `yaml:"name"`    // unique
	Type           string `yaml:"type"`    // tcp | tls | ws | wss
	Address        string `yaml:"address"` // host:port
	AllowAnonymous bool   `yaml:"allow_anonymous"`
	TLS            TLS    `yaml:"tls"` // required for tls and wss, refused for tcp and ws
}

// TLS holds a tls or wss listener's certificate and, for mTLS, the client CA.
type TLS struct {
	CertFile          string `yaml:"cert_file"`
	KeyFile           string `yaml:"key_file"`
	ClientCAFile      string `yaml:"client_ca_file"`      // set → client certificates are verified
	RequireClientCert bool   `yaml:"require_client_cert"` // needs client_ca_file
	CertIdentity      bool   `yaml:"cert_identity"`       // needs client_ca_file: the certificate's CommonName is the username
}

// User is a username and its bcrypt password hash (make one with `sluice passwd`).
type User struct {
	Username     string `yaml:"username"`
	PasswordHash string `yaml:"password_hash"`
}

// ACLRule grants publish and subscribe rights on topic filters; once any rule exists, what no rule grants
// is denied. %u and %c in a filter stand for the client's username and client id.
type ACLRule struct {
	Username  string   `yaml:"username"`  // "" or "*" = any client, anonymous included
	ClientID  string   `yaml:"client_id"` // "" or "*" = any
	Publish   []string `yaml:"publish"`
	Subscribe []string `yaml:"subscribe"`
}

// Limits bound what one client and the whole broker may use. A zero field takes the broker's default.
type Limits struct {
	MaxPacketSize    uint32        `yaml:"max_packet_size"`
	MaxConnections   int           `yaml:"max_connections"` // negative = unlimited
	ReceiveMaximum   uint16        `yaml:"receive_maximum"`
	MaxInflight      uint16        `yaml:"max_inflight"`
	MaxPendingWrites int           `yaml:"max_pending_writes"`
	KeepAliveMin     uint16        `yaml:"keep_alive_min"` // seconds
	KeepAliveMax     uint16        `yaml:"keep_alive_max"` // seconds
	MaxSessionExpiry time.Duration `yaml:"max_session_expiry"`
	MaxMessageExpiry time.Duration `yaml:"max_message_expiry"`
	MaxTopicLength   int           `yaml:"max_topic_length"`
	MaxTopicLevels   int           `yaml:"max_topic_levels"`
	PublishRate      float64       `yaml:"publish_rate"` // messages/s per client; 0 = unlimited
	PublishBurst     int           `yaml:"publish_burst"`
	ConnectTimeout   time.Duration `yaml:"connect_timeout"`
}

// SlowSubscribers says what happens when a subscriber's outbound queue is full.
type SlowSubscribers struct {
	Policy          string        `yaml:"policy"` // drop | disconnect | backpressure
	DisconnectAfter time.Duration `yaml:"disconnect_after"`
}

// HTTP is the admin listener: /metrics, /healthz, /readyz and the queue API.
type HTTP struct {
	Address string   `yaml:"address"` // host:port; "" turns the HTTP listener off
	APIKeys []APIKey `yaml:"api_keys"`
}

// APIKey is a bearer token for the queue API with per-queue rights. Once any key exists, every request
// needs one.
type APIKey struct {
	Name    string `yaml:"name"`
	KeyHash string `yaml:"key_hash"` // "sha256:" + 64 hex digits of the key (preferred)
	Key     string `yaml:"key"`      // the key itself, in clear (for tests and throwaway setups)
	// Queues maps a queue name, or "*" for every queue, to rights: consume, produce, admin.
	Queues map[string][]string `yaml:"queues"`
}

// Queues holds the settings every queue starts from and the queues declared by name.
type Queues struct {
	Defaults QueueSettings            `yaml:"defaults"`
	Declare  map[string]QueueSettings `yaml:"declare"` // zero fields take Defaults
}

// QueueSettings are one queue's settings. A zero field takes the default (in Declare: from Defaults).
type QueueSettings struct {
	VisibilityTimeout time.Duration `yaml:"visibility_timeout"`
	MaxAttempts       int           `yaml:"max_attempts"`
	Backoff           Backoff       `yaml:"backoff"`
	MaxMessages       int64         `yaml:"max_messages"` // 0 = unlimited
	MaxBytes          int64         `yaml:"max_bytes"`    // 0 = unlimited
	MaxAge            time.Duration `yaml:"max_age"`      // 0 = unlimited
	Overflow          string        `yaml:"overflow"`     // reject | drop_oldest
	Sync              string        `yaml:"sync"`         // always | interval | none
	DeadLetter        *bool         `yaml:"dead_letter"`  // unset = true
	OnExpire          string        `yaml:"on_expire"`    // dead_letter | drop
	MaxMessageSize    int           `yaml:"max_message_size"`
}

// Backoff is the delay before a nacked or expired message is delivered again:
// initial × multiplier^(attempt−1), capped at max, with ± jitter (a fraction).
type Backoff struct {
	Initial    time.Duration `yaml:"initial"`
	Multiplier float64       `yaml:"multiplier"`
	Max        time.Duration `yaml:"max"`
	Jitter     float64       `yaml:"jitter"`
}

// Bridge routes MQTT publishes into queues.
type Bridge struct {
	Rules []BridgeRule `yaml:"rules"`
}

// BridgeRule sends every publish whose topic matches Filter, at QoS MinQoS or above, to Queue. A queue
// that is not declared is created with the queue defaults.
type BridgeRule struct {
	Filter string `yaml:"filter"`
	Queue  string `yaml:"queue"`
	MinQoS int    `yaml:"min_qos"`
}
