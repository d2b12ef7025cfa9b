package configs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateUplinks(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	const head = "queues:\n  declare:\n    outbox: {}\nuplinks:\n"
	for _, tc := range []struct {
		name string
		yaml string // after head
		want string // "" = valid; else a substring of the error, which starts with "up.yaml:LINE:"
		line string
	}{
		{"minimal", "  - name: cloud\n    url: mqtts://broker.example.com:8883\n    queue: outbox\n", "", ""},
		{"fed by a bridge rule", "  - name: cloud\n    url: mqtt://h:1883\n    queue: telemetry\n", "", ""},
		{"own queue from filters", "  - name: cloud\n    url: ws://h:80/mqtt\n    filters: [\"site/#\"]\n", "", ""},
		{"full", "  - name: cloud\n    url: mqtts://h:8883\n    queue: outbox\n    tls: {ca_file: " + ca + "}\n" +
			"    topic: {strip_prefix: devices/, template: \"sites/{gateway}/{topic}\"}\n    qos: 2\n    rate: 100\n" +
			"    downlink: {filters: [\"cmd/#\"], qos: 0}\n", "", ""},
		{"unknown queue", "  - name: cloud\n    url: mqtt://h:1883\n    queue: nope\n", `queue "nope" is not declared`, ":7:"},
		{"bad url", "  - name: cloud\n    url: http://h:80\n    queue: outbox\n", `scheme "http"`, ":6:"},
		{"no port", "  - name: cloud\n    url: mqtt://h\n    queue: outbox\n", "needs a host and a port", ":6:"},
		{"no name", "  - url: mqtt://h:1\n    queue: outbox\n", "uplink 1 has no name", ":5:"},
		{"queue and filters", "  - name: c\n    url: mqtt://h:1\n    queue: outbox\n    filters: [a]\n", "not both", ":8:"},
		{"neither queue nor filters", "  - name: c\n    url: mqtt://h:1\n", "needs a queue", ":5:"},
		{"qos 0", "  - name: c\n    url: mqtt://h:1\n    queue: outbox\n    qos: 0\n", "", ""},
		{"qos 3", "  - name: c\n    url: mqtt://h:1\n    queue: outbox\n    qos: 3\n", "qos 3 is not 1 or 2", ":8:"},
		{"tls on plain", "  - name: c\n    url: mqtt://h:1\n    queue: outbox\n    tls: {ca_file: " + ca + "}\n", "plain mqtt://", ":8:"},
		{"missing ca", "  - name: c\n    url: mqtts://h:1\n    queue: outbox\n    tls: {ca_file: /nonexistent/ca.pem}\n", "does not exist", ":8:"},
		{"wildcard template", "  - name: c\n    url: mqtt://h:1\n    queue: outbox\n    topic: {template: \"a/#\"}\n", "wildcard", ":8:"},
		{"unknown placeholder", "  - name: c\n    url: mqtt://h:1\n    queue: outbox\n    topic: {template: \"{site}/{topic}\"}\n", "placeholder", ":8:"},
		{"version 3", "  - name: c\n    url: mqtt://h:1\n    queue: outbox\n    protocol_version: 3\n", "not 5 or 4", ":8:"},
		{"two uplinks one queue", "  - name: a\n    url: mqtt://h:1\n    queue: outbox\n  - name: b\n    url: mqtt://h:2\n    queue: outbox\n",
			"both drain queue", ":10:"},
		{"same name", "  - name: a\n    url: mqtt://h:1\n    queue: outbox\n  - name: a\n    url: mqtt://h:2\n    queue: telemetry\n",
			"used twice", ":8:"},
		{"downlink without filters", "  - name: c\n    url: mqtt://h:1\n    queue: outbox\n    downlink: {qos: 1}\n", "no filters", ":8:"},
		{"downlink qos 3", "  - name: c\n    url: mqtt://h:1\n    queue: outbox\n    downlink: {filters: [a], qos: 3}\n", "downlink qos 3", ":8:"},
		{"password twice", "  - name: c\n    url: mqtt://h:1\n    queue: outbox\n    password: x\n    password_file: " + ca + "\n",
			"not both", ":9:"},
		{"lease below twice the timeout", "  - name: c\n    url: mqtt://h:1\n    queue: outbox\n    lease: 15s\n", "twice the timeout", ":8:"},
		{"negative in flight", "  - name: c\n    url: mqtt://h:1\n    queue: outbox\n    max_in_flight: -1\n", "max_in_flight -1", ":8:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("up.yaml", []byte(head+tc.yaml))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			err = c.ValidateUplinks()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "up.yaml"+tc.line) {
				t.Errorf("err = %q, want it to start with up.yaml%s", err, tc.line)
			}
		})
	}
}

func TestUplinkRulesAndQueueNames(t *testing.T) {
	c, err := Parse("up.yaml", []byte("uplinks:\n  - name: cloud\n    url: mqtt://h:1\n    filters: [\"a/#\", \"b/+\"]\n"+
		"  - name: other\n    url: mqtt://h:1\n    queue: telemetry\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ValidateUplinks(); err != nil {
		t.Fatal(err)
	}
	rules := c.UplinkRules()
	if len(rules) != 2 || rules[0] != (BridgeRule{Filter: "a/#", Queue: "uplink.cloud"}) || rules[1].Filter != "b/+" {
		t.Fatalf("rules %+v", rules)
	}
	if q := c.Uplinks[1].QueueName(); q != "telemetry" {
		t.Fatalf("queue name %q", q)
	}
	if got := c.Uplinks[0].Downlink; got != nil {
		t.Fatalf("downlink %+v, want none", got)
	}
	d := UplinkDownlink{}
	if d.SubQoS() != 1 || d.LocalURLFor(c) != "tcp://127.0.0.1:1883" {
		t.Fatalf("downlink defaults: qos %d, url %s", d.SubQoS(), d.LocalURLFor(c))
	}
}

// TestEdgeGatewayExample keeps configs/edge-gateway.yaml loadable and valid.
func TestEdgeGatewayExample(t *testing.T) {
	c, err := Load("edge-gateway.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := c.ValidateUplinks(); err != nil {
		t.Fatal(err)
	}
	if len(c.Uplinks) == 0 {
		t.Fatal("the example has no uplink")
	}
}
