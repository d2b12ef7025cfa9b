package devices

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config describes a fleet. It is the shape of a fleet YAML file (see configs/fleet.yaml); the
// zero value is valid and means one MQTT 5 device publishing JSON telemetry at QoS 0 every second
// to devices/dev-1/telemetry on tcp://127.0.0.1:1883.
type Config struct {
	Broker      string   `yaml:"broker"`       // default tcp://127.0.0.1:1883
	Count       int      `yaml:"count"`        // default 1
	IDPattern   string   `yaml:"id_pattern"`   // {n} is the 1-based index; default dev-{n}
	ConnectRate Rate     `yaml:"connect_rate"` // connections per second during ramp-up; 0 = all at once
	Protocol    Protocol `yaml:"protocol"`     // "5" (default) or "3.1.1"
	QoS         QoS      `yaml:"qos"`

	Interval Duration `yaml:"interval"` // between publishes of one device; default 1s
	Jitter   Duration `yaml:"jitter"`   // each interval is ± a uniform random share of this
	Idle     bool     `yaml:"idle"`     // connect and keep alive only: no telemetry
	Topic    string   `yaml:"topic"`    // {id} is the device id; default devices/{id}/telemetry
	Payload  Payload  `yaml:"payload"`  // telemetry (default), gps, blob:SIZE
	Retain   bool     `yaml:"retain"`

	// StatusTopic, when set, gets a retained "online" after each connect and is the will topic
	// with a retained "offline", so subscribers see devices go away.
	StatusTopic string `yaml:"status_topic"`
	// CommandTopic, when set, is subscribed by each device; every command is answered on
	// ReplyTopic (default: CommandTopic + "/reply").
	CommandTopic string `yaml:"command_topic"`
	ReplyTopic   string `yaml:"reply_topic"`

	PersistentSession bool     `yaml:"persistent_session"` // default: clean sessions
	SessionExpiry     Duration `yaml:"session_expiry"`     // MQTT 5 persistent sessions; default 1h
	KeepAlive         Duration `yaml:"keep_alive"`         // default 30s
	ReceiveMaximum    uint16   `yaml:"receive_maximum"`    // MQTT 5; default 32

	Username string    `yaml:"username"`
	Password string    `yaml:"password"`
	TLS      TLSConfig `yaml:"tls"`

	Reconnect Backoff `yaml:"reconnect"`
	Flaps     Flaps   `yaml:"flaps"`

	Duration Duration `yaml:"duration"` // how long Run runs; 0 = until its context ends
}

// TLSConfig names the files for TLS connections (tls://, mqtts://, wss://).
type TLSConfig struct {
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// Backoff is the reconnect policy: wait Initial × Multiplier^(attempt−1), at most Max, each wait
// changed by a uniform random ±Jitter share.
type Backoff struct {
	Initial    Duration `yaml:"initial"`    // default 500ms
	Max        Duration `yaml:"max"`        // default 30s
	Multiplier float64  `yaml:"multiplier"` // default 2
	Jitter     float64  `yaml:"jitter"`     // 0..1, default 0.2
}

// Flaps simulates network failures: a Fraction of the devices drop their connection (without
// DISCONNECT, so the broker publishes the will) about every Every, stay down for Down, reconnect.
type Flaps struct {
	Every    Duration `yaml:"every"`
	Down     Duration `yaml:"down"`
	Fraction float64  `yaml:"fraction"` // 0..1, default 1 when Every is set
}

// LoadConfig reads a fleet file strictly: an unknown key, a bad duration, rate or value is a
// *ConfigError naming the file and line.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, &ConfigError{File: path, Msg: fmt.Sprintf("cannot read fleet file: %v", err)}
	}
	return ParseConfig(path, data)
}

// ParseConfig is LoadConfig on bytes; file names the source in errors. The result has its
// defaults applied and is validated.
func ParseConfig(file string, data []byte) (Config, error) {
	var c Config
	if err := DecodeYAML(file, data, &c); err != nil {
		return Config{}, err
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		ce := err.(*ConfigError)
		ce.File = file
		ce.Line = KeyLine(data, ce.field)
		return Config{}, ce
	}
	return c, nil
}

// KeyLine finds the line of a dotted key path ("reconnect.max") in a YAML document, or 0, so a
// validation error can name the line.
func KeyLine(data []byte, path string) int {
	if path == "" {
		return 0
	}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return 0
	}
	n := doc.Content[0]
	line := 0
	for _, k := range strings.Split(path, ".") {
		if n.Kind != yaml.MappingNode {
			return line
		}
		found := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == k {
				line, n, found = n.Content[i].Line, n.Content[i+1], true
				break
			}
		}
		if !found {
			return line
		}
	}
	return line
}

// WithDefaults returns c with every unset field given its default.
func (c Config) WithDefaults() Config {
	if c.Broker == "" {
		c.Broker = "tcp://127.0.0.1:1883"
	}
	if c.Count == 0 {
		c.Count = 1
	}
	if c.IDPattern == "" {
		c.IDPattern = "dev-{n}"
	}
	if c.Protocol == "" {
		c.Protocol = MQTT5
	}
	if c.Interval == 0 {
		c.Interval = Duration(time.Second)
	}
	if c.Topic == "" {
		c.Topic = "devices/{id}/telemetry"
	}
	if c.Payload.Kind == "" {
		c.Payload.Kind = PayloadTelemetry
	}
	if c.Payload.Kind == PayloadBlob && c.Payload.Size == 0 {
		c.Payload.Size = 64
	}
	if c.CommandTopic != "" && c.ReplyTopic == "" {
		c.ReplyTopic = c.CommandTopic + "/reply"
	}
	if c.SessionExpiry == 0 {
		c.SessionExpiry = Duration(time.Hour)
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = Duration(30 * time.Second)
	}
	if c.ReceiveMaximum == 0 {
		c.ReceiveMaximum = 32
	}
	if c.Reconnect.Initial == 0 {
		c.Reconnect.Initial = Duration(500 * time.Millisecond)
	}
	if c.Reconnect.Max == 0 {
		c.Reconnect.Max = Duration(30 * time.Second)
	}
	if c.Reconnect.Multiplier == 0 {
		c.Reconnect.Multiplier = 2
	}
	if c.Reconnect.Jitter == 0 {
		c.Reconnect.Jitter = 0.2
	}
	if c.Flaps.Every > 0 && c.Flaps.Fraction == 0 {
		c.Flaps.Fraction = 1
	}
	if c.Flaps.Every > 0 && c.Flaps.Down == 0 {
		c.Flaps.Down = Duration(time.Second)
	}
	return c
}

func fieldErr(field, format string, args ...any) *ConfigError {
	return &ConfigError{field: field, Msg: fmt.Sprintf(format, args...)}
}

// Validate checks a config that went through WithDefaults; the error is a *ConfigError.
func (c Config) Validate() error {
	if _, err := ParseBroker(c.Broker); err != nil {
		return fieldErr("broker", "%s", err.(*ConfigError).Msg)
	}
	switch {
	case c.Count < 1 || c.Count > 10_000_000:
		return fieldErr("count", "count %d must be between 1 and 10000000", c.Count)
	case !strings.Contains(c.IDPattern, "{n}"):
		return fieldErr("id_pattern", "id_pattern %q must contain {n} so device ids differ", c.IDPattern)
	case c.QoS > 2:
		return fieldErr("qos", "qos %d must be 0, 1 or 2", c.QoS)
	case c.Protocol != MQTT5 && c.Protocol != MQTT311:
		return fieldErr("protocol", "protocol %q is not supported; want 3.1.1 or 5", c.Protocol)
	case c.Interval < Duration(time.Millisecond):
		return fieldErr("interval", "interval %v is below 1ms", time.Duration(c.Interval))
	case c.Jitter > c.Interval:
		return fieldErr("jitter", "jitter %v is larger than the interval %v", time.Duration(c.Jitter), time.Duration(c.Interval))
	case badTopic(c.Topic):
		return fieldErr("topic", "topic %q must be non-empty and have no wildcards", c.Topic)
	case c.StatusTopic != "" && badTopic(c.StatusTopic):
		return fieldErr("status_topic", "status_topic %q must have no wildcards", c.StatusTopic)
	case c.ReplyTopic != "" && badTopic(c.ReplyTopic):
		return fieldErr("reply_topic", "reply_topic %q must have no wildcards", c.ReplyTopic)
	case c.Payload.Kind == PayloadBlob && c.Payload.Size < 0:
		return fieldErr("payload", "payload size must not be negative")
	case c.Reconnect.Max < c.Reconnect.Initial:
		return fieldErr("reconnect.max", "reconnect.max %v is below reconnect.initial %v", time.Duration(c.Reconnect.Max), time.Duration(c.Reconnect.Initial))
	case c.Reconnect.Multiplier < 1:
		return fieldErr("reconnect.multiplier", "reconnect.multiplier %v must be at least 1", c.Reconnect.Multiplier)
	case c.Reconnect.Jitter < 0 || c.Reconnect.Jitter > 1:
		return fieldErr("reconnect.jitter", "reconnect.jitter %v must be between 0 and 1", c.Reconnect.Jitter)
	case c.Flaps.Fraction < 0 || c.Flaps.Fraction > 1:
		return fieldErr("flaps.fraction", "flaps.fraction %v must be between 0 and 1", c.Flaps.Fraction)
	case (c.TLS.CertFile == "") != (c.TLS.KeyFile == ""):
		return fieldErr("tls", "tls needs both cert_file and key_file, or neither")
	case c.KeepAlive < Duration(time.Second) || c.KeepAlive > Duration(65535*time.Second):
		return fieldErr("keep_alive", "keep_alive %v must be between 1s and 18h", time.Duration(c.KeepAlive))
	}
	return nil
}

func badTopic(t string) bool { return t == "" || strings.ContainsAny(t, "+#") }

// DeviceID is the id of the device with 1-based index n.
func (c Config) DeviceID(n int) string {
	return strings.ReplaceAll(c.IDPattern, "{n}", strconv.Itoa(n))
}

// tlsConfig builds the TLS client config, or nil when nothing is configured.
func (t TLSConfig) tlsConfig() (*tls.Config, error) {
	if t == (TLSConfig{}) {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // opt-in for test brokers
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fieldErr("tls.ca_file", "cannot read tls.ca_file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fieldErr("tls.ca_file", "tls.ca_file %s holds no PEM certificate", t.CAFile)
		}
		c.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fieldErr("tls.cert_file", "cannot load the client certificate: %v", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}
