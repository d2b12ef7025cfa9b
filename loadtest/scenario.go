package loadtest

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/sluicemq/sluice/devices"
)

// Kind is a scenario's traffic shape.
type Kind string

// The scenario kinds.
const (
	FanIn   Kind = "fan-in"       // many publishers, few subscribers on a wildcard
	FanOut  Kind = "fan-out"      // few publishers, many subscribers of one topic
	P2P     Kind = "p2p"          // point-to-point pairs: publisher i → subscriber i
	Shared  Kind = "shared"       // publishers → one $share group of subscribers
	Idle    Kind = "idle"         // connections that only keep alive, at scale
	Storm   Kind = "storm"        // a connection storm: everyone connects at once
	Bridge  Kind = "bridge-queue" // devices publish over MQTT; consumers receive and ack over HTTP
	kindAll      = "fan-in, fan-out, p2p, shared, idle, storm, bridge-queue"
)

// Mode is how publishers pace themselves.
type Mode string

// The publishing modes.
const (
	// Open publishes at a constant total Rate whatever the broker does; latency is measured from
	// each message's intended send time, so a stalled broker cannot hide its stall
	// (no coordinated omission).
	Open Mode = "open"
	// Closed publishes as fast as the broker acknowledges (at most Inflight unacknowledged per
	// publisher): the throughput it reaches is the broker's maximum for this shape.
	Closed Mode = "closed"
)

// Scenario is one load test. It is the shape of a scenario file (configs/loadtest/*.yaml); the
// zero value is a valid fan-in test after WithDefaults.
type Scenario struct {
	Name     string           `yaml:"name" json:"name"`
	Kind     Kind             `yaml:"kind" json:"kind"`
	Protocol devices.Protocol `yaml:"protocol" json:"protocol"`
	QoS      devices.QoS      `yaml:"qos" json:"qos"` // of publishes
	// SubscribeQoS is the subscriptions' QoS; default: QoS.
	SubscribeQoS *devices.QoS `yaml:"subscribe_qos" json:"subscribe_qos"`
	Mode         Mode         `yaml:"mode" json:"mode"`

	Publishers  int `yaml:"publishers" json:"publishers,omitempty"`
	Subscribers int `yaml:"subscribers" json:"subscribers,omitempty"`
	Pairs       int `yaml:"pairs" json:"pairs,omitempty"`             // p2p
	Connections int `yaml:"connections" json:"connections,omitempty"` // idle, storm

	Rate        devices.Rate `yaml:"rate" json:"rate,omitempty"` // total messages/s of all publishers (open mode)
	Inflight    int          `yaml:"inflight" json:"inflight"`   // unacknowledged QoS 1/2 publishes per publisher
	PayloadSize int          `yaml:"payload_size" json:"payload_size"`
	ConnectRate devices.Rate `yaml:"connect_rate" json:"connect_rate,omitempty"` // idle, storm (0: at once)

	Duration devices.Duration `yaml:"duration" json:"duration"`
	Warmup   devices.Duration `yaml:"warmup" json:"warmup,omitempty"` // latency of earlier messages is not recorded
	Drain    devices.Duration `yaml:"drain" json:"drain"`             // longest wait for in-flight messages at the end

	Topic    string `yaml:"topic" json:"topic,omitempty"` // bridge-queue: the publish topic, {id} = publisher id
	Username string `yaml:"username" json:"-"`
	Password string `yaml:"password" json:"-"`
	// Insecure skips TLS certificate checks (tls://, wss:// brokers with self-signed certificates).
	Insecure bool `yaml:"insecure_skip_verify" json:"insecure_skip_verify,omitempty"`

	Queue QueueSpec `yaml:"queue" json:"queue,omitempty"`
}

// QueueSpec is the bridge-queue scenario's consumer side: Sluice's HTTP queue API.
type QueueSpec struct {
	API       string           `yaml:"api" json:"api,omitempty"`   // base URL, default http://127.0.0.1:8080
	Name      string           `yaml:"name" json:"name,omitempty"` // default telemetry
	Consumers int              `yaml:"consumers" json:"consumers,omitempty"`
	Batch     int              `yaml:"batch" json:"batch,omitempty"` // messages per receive
	Wait      devices.Duration `yaml:"wait" json:"wait,omitempty"`   // long-poll wait per receive
	Lease     devices.Duration `yaml:"lease" json:"lease,omitempty"`
	APIKey    string           `yaml:"api_key" json:"-"` // sent as a Bearer token
}

// LoadScenario reads a scenario file strictly (unknown key, bad duration or rate: a
// *devices.ConfigError with file and line) and returns it with defaults applied.
func LoadScenario(path string) (Scenario, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Scenario{}, &devices.ConfigError{File: path, Msg: fmt.Sprintf("cannot read scenario file: %v", err)}
	}
	return ParseScenario(path, data)
}

// ParseScenario is LoadScenario on bytes; file names the source in errors.
func ParseScenario(file string, data []byte) (Scenario, error) {
	var s Scenario
	if err := devices.DecodeYAML(file, data, &s); err != nil {
		return Scenario{}, err
	}
	s = s.WithDefaults()
	if err := s.Validate(); err != nil {
		ce := err.(*devices.ConfigError)
		ce.File = file
		ce.Line = devices.KeyLine(data, scenarioField(ce.Msg))
		return Scenario{}, ce
	}
	return s, nil
}

// WithDefaults fills the unset fields: per kind, the counts; 64-byte payloads, QoS as given,
// open mode at 1000 msg/s for 10s, 100 in flight, 5s drain.
func (s Scenario) WithDefaults() Scenario {
	if s.Kind == "" {
		s.Kind = FanIn
	}
	if s.Name == "" {
		s.Name = string(s.Kind)
	}
	if s.Protocol == "" {
		s.Protocol = devices.MQTT5
	}
	if s.Mode == "" {
		s.Mode = Open
	}
	if s.SubscribeQoS == nil {
		q := s.QoS
		s.SubscribeQoS = &q
	}
	switch s.Kind {
	case FanIn:
		s.Publishers, s.Subscribers = orInt(s.Publishers, 100), orInt(s.Subscribers, 1)
	case FanOut:
		s.Publishers, s.Subscribers = orInt(s.Publishers, 1), orInt(s.Subscribers, 100)
	case P2P:
		s.Pairs = orInt(s.Pairs, 50)
	case Shared:
		s.Publishers, s.Subscribers = orInt(s.Publishers, 10), orInt(s.Subscribers, 5)
	case Idle:
		s.Connections = orInt(s.Connections, 1000)
	case Storm:
		s.Connections = orInt(s.Connections, 1000)
	case Bridge:
		s.Publishers = orInt(s.Publishers, 100)
		if s.Topic == "" {
			s.Topic = "devices/{id}/telemetry"
		}
		if s.Queue.API == "" {
			s.Queue.API = "http://127.0.0.1:8080"
		}
		if s.Queue.Name == "" {
			s.Queue.Name = "telemetry"
		}
		s.Queue.Consumers = orInt(s.Queue.Consumers, 4)
		s.Queue.Batch = orInt(s.Queue.Batch, 100)
		if s.Queue.Wait == 0 {
			s.Queue.Wait = devices.Duration(500 * time.Millisecond)
		}
		if s.Queue.Lease == 0 {
			s.Queue.Lease = devices.Duration(30 * time.Second)
		}
	}
	if s.Rate == 0 && s.Mode == Open && s.Kind != Idle && s.Kind != Storm {
		s.Rate = 1000
	}
	s.Inflight = orInt(s.Inflight, 100)
	if s.PayloadSize == 0 {
		s.PayloadSize = 64
	}
	if s.Duration == 0 {
		s.Duration = devices.Duration(10 * time.Second)
	}
	if s.Drain == 0 {
		s.Drain = devices.Duration(5 * time.Second)
	}
	return s
}

func orInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// Validate checks a scenario that went through WithDefaults; errors are *devices.ConfigError.
func (s Scenario) Validate() error {
	bad := func(format string, args ...any) error {
		return &devices.ConfigError{Msg: fmt.Sprintf(format, args...)}
	}
	switch s.Kind {
	case FanIn, FanOut, P2P, Shared, Idle, Storm, Bridge:
	default:
		return bad("kind %q is not a scenario; want one of %s", s.Kind, kindAll)
	}
	switch {
	case s.Mode != Open && s.Mode != Closed:
		return bad("mode %q must be open or closed", s.Mode)
	case s.Protocol != devices.MQTT5 && s.Protocol != devices.MQTT311:
		return bad("protocol %q is not supported; want 3.1.1 or 5", s.Protocol)
	case s.QoS > 2:
		return bad("qos %d must be 0, 1 or 2", s.QoS)
	case s.SubscribeQoS != nil && *s.SubscribeQoS > 2:
		return bad("subscribe_qos %d must be 0, 1 or 2", *s.SubscribeQoS)
	case s.Publishers < 0 || s.Publishers > 1_000_000:
		return bad("publishers %d must be between 1 and 1000000", s.Publishers)
	case s.Subscribers < 0 || s.Subscribers > 1_000_000:
		return bad("subscribers %d must be between 1 and 1000000", s.Subscribers)
	case s.Pairs < 0 || s.Pairs > 1_000_000:
		return bad("pairs %d must be between 1 and 1000000", s.Pairs)
	case s.Connections < 0 || s.Connections > 10_000_000:
		return bad("connections %d must be between 1 and 10000000", s.Connections)
	case s.Mode == Open && s.Rate <= 0 && s.Kind != Idle && s.Kind != Storm:
		return bad("rate must be above 0 in open mode")
	case s.Inflight < 1 || s.Inflight > 65535:
		return bad("inflight %d must be between 1 and 65535", s.Inflight)
	case s.PayloadSize < 0 || s.PayloadSize > 16<<20:
		return bad("payload_size %d must be between 0 and 16MiB", s.PayloadSize)
	case s.Duration < devices.Duration(10*time.Millisecond):
		return bad("duration %v is below 10ms", time.Duration(s.Duration))
	case s.Warmup >= s.Duration:
		return bad("warmup %v must be shorter than the duration %v", time.Duration(s.Warmup), time.Duration(s.Duration))
	case s.Kind == Bridge && (strings.ContainsAny(s.Topic, "+#") || !strings.Contains(s.Topic, "{id}")):
		return bad("topic %q must contain {id} and no wildcards", s.Topic)
	case s.Kind == Bridge && !strings.HasPrefix(s.Queue.API, "http://") && !strings.HasPrefix(s.Queue.API, "https://"):
		return bad("queue.api %q must be an http:// or https:// URL", s.Queue.API)
	case s.Kind == Bridge && (s.Queue.Batch < 1 || s.Queue.Consumers < 1):
		return bad("queue.batch and queue.consumers must be at least 1")
	case s.Kind == Bridge && strings.ContainsAny(s.Queue.Name, "/?#% "):
		return bad("queue.name %q must be a plain name", s.Queue.Name)
	}
	if s.Kind == Bridge && s.Queue.Name == "" {
		return bad("queue.name must be set")
	}
	return nil
}

// scenarioField guesses from a validation message which key it is about (the message starts
// with the key), to find its line.
func scenarioField(msg string) string {
	key, _, _ := strings.Cut(msg, " ")
	return key
}
