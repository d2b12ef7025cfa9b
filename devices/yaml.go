package devices

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// DecodeYAML decodes one YAML document into v strictly: an unknown key, a duplicate key, a value
// of the wrong type or a bad Duration/Rate/... value is a *ConfigError naming file and line.
// The load tester uses it for scenario files.
func DecodeYAML(file string, data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(v)
	if errors.Is(err, io.EOF) {
		return &ConfigError{File: file, Msg: "file is empty"}
	}
	if err != nil {
		return yamlError(file, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return &ConfigError{File: file, Line: extra.Line, Msg: "a second YAML document is not allowed"}
	}
	return nil
}

var (
	reLine    = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	reUnknown = regexp.MustCompile(`^field (\S+) not found in type`)
	reCannot  = regexp.MustCompile("^cannot unmarshal !!(\\w+) `(.*)` into (\\S+)$")
)

func yamlError(file string, err error) error {
	var ce *ConfigError
	if errors.As(err, &ce) {
		c := *ce
		c.File = file
		return &c
	}
	msg := err.Error()
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0]
	}
	m := reLine.FindStringSubmatch(msg)
	if m == nil {
		return &ConfigError{File: file, Msg: strings.TrimPrefix(msg, "yaml: ")}
	}
	line, _ := strconv.Atoi(m[1])
	text := m[2]
	if u := reUnknown.FindStringSubmatch(text); u != nil {
		text = fmt.Sprintf("unknown key %q", u[1])
	} else if c := reCannot.FindStringSubmatch(text); c != nil {
		text = fmt.Sprintf("value %q is not %s", c[2], typeWord(c[3]))
	}
	return &ConfigError{File: file, Line: line, Msg: text}
}

func typeWord(goType string) string {
	switch {
	case strings.Contains(goType, "int"):
		return "an integer"
	case strings.Contains(goType, "float"):
		return "a number"
	case goType == "bool":
		return "true or false"
	case goType == "string":
		return "a string"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map") || strings.Contains(goType, "."):
		return "a mapping"
	}
	return "a " + goType
}

func nodeErr(n *yaml.Node, format string, args ...any) error {
	return &ConfigError{Line: n.Line, Msg: fmt.Sprintf(format, args...)}
}

// ParseDuration is time.ParseDuration that also accepts "0" and refuses negative durations.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, &ConfigError{Msg: fmt.Sprintf("duration %q is not valid; write e.g. 500ms, 10s or 2m", s)}
	}
	return d, nil
}

// ParseRate parses a rate as events per second: "100" or "100/s", "6000/m" or "6000/min", "5/h".
// It refuses negative and non-finite rates.
func ParseRate(s string) (float64, error) {
	s = strings.TrimSpace(s)
	num, unit, _ := strings.Cut(s, "/")
	v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	bad := &ConfigError{Msg: fmt.Sprintf("rate %q is not valid; write e.g. 100/s, 600/m or 5/h", s)}
	if err != nil || v < 0 || v != v || v > 1e9 {
		return 0, bad
	}
	switch strings.TrimSpace(unit) {
	case "", "s", "sec", "second":
		return v, nil
	case "m", "min", "minute":
		return v / 60, nil
	case "h", "hour":
		return v / 3600, nil
	}
	return 0, bad
}

// Duration is a time.Duration written as "10s" in YAML.
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return nodeErr(n, "a duration must be a scalar like 10s")
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return nodeErr(n, "%s", err.(*ConfigError).Msg)
	}
	*d = Duration(v)
	return nil
}

// Rate is events per second, written as "100/s" in YAML.
type Rate float64

// UnmarshalYAML implements yaml.Unmarshaler.
func (r *Rate) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return nodeErr(n, "a rate must be a scalar like 100/s")
	}
	v, err := ParseRate(n.Value)
	if err != nil {
		return nodeErr(n, "%s", err.(*ConfigError).Msg)
	}
	*r = Rate(v)
	return nil
}

// UnmarshalYAML implements yaml.Unmarshaler for payload profiles ("telemetry", "gps", "blob:256").
func (p *Payload) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return nodeErr(n, "a payload must be telemetry, gps or blob:SIZE")
	}
	v, err := ParsePayload(n.Value)
	if err != nil {
		return nodeErr(n, "%s", err.(*ConfigError).Msg)
	}
	*p = v
	return nil
}

// UnmarshalYAML implements yaml.Unmarshaler for protocol versions ("3.1.1" or "5").
func (p *Protocol) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return nodeErr(n, "protocol must be 3.1.1 or 5")
	}
	v, err := ParseProtocol(n.Value)
	if err != nil {
		return nodeErr(n, "%s", err.(*ConfigError).Msg)
	}
	*p = v
	return nil
}

// QoS is an MQTT quality of service level, 0, 1 or 2.
type QoS byte

// UnmarshalYAML implements yaml.Unmarshaler.
func (q *QoS) UnmarshalYAML(n *yaml.Node) error {
	v, err := strconv.Atoi(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil || v < 0 || v > 2 {
		return nodeErr(n, "qos %q must be 0, 1 or 2", n.Value)
	}
	*q = QoS(v)
	return nil
}
