package devices

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string // substring; "" means success
		check   func(t *testing.T, c Config)
	}{
		{name: "defaults", yaml: "count: 3\n", check: func(t *testing.T, c Config) {
			if c.Broker != "tcp://127.0.0.1:1883" || c.Topic != "devices/{id}/telemetry" || c.Count != 3 ||
				c.Protocol != MQTT5 || time.Duration(c.Interval) != time.Second || c.Payload.Kind != PayloadTelemetry {
				t.Errorf("defaults not applied: %+v", c)
			}
			if c.DeviceID(7) != "dev-7" {
				t.Errorf("DeviceID(7) = %q", c.DeviceID(7))
			}
		}},
		{name: "full", yaml: `broker: tls://broker.example:8883
count: 10
id_pattern: "sensor-{n}"
connect_rate: 600/m
protocol: "3.1.1"
qos: 2
interval: 250ms
jitter: 50ms
payload: blob:1KiB
command_topic: cmd/{id}
reconnect: {initial: 1s, max: 1m, multiplier: 3, jitter: 0.5}
flaps: {every: 30s, down: 2s, fraction: 0.25}
`, check: func(t *testing.T, c Config) {
			if c.ConnectRate != 10 || c.Protocol != MQTT311 || c.QoS != 2 || c.Payload != (Payload{Kind: PayloadBlob, Size: 1024}) ||
				c.ReplyTopic != "cmd/{id}/reply" || c.Reconnect.Multiplier != 3 || c.Flaps.Fraction != 0.25 {
				t.Errorf("parsed wrong: %+v", c)
			}
		}},
		{name: "unknown key", yaml: "count: 3\ncuont: 4\n", wantErr: `f.yaml:2: unknown key "cuont"`},
		{name: "unknown nested key", yaml: "reconnect:\n  initial: 1s\n  maximum: 3s\n", wantErr: `f.yaml:3: unknown key "maximum"`},
		{name: "bad duration", yaml: "count: 3\ninterval: 10 seconds\n", wantErr: `f.yaml:2: duration "10 seconds" is not valid`},
		{name: "bad rate", yaml: "connect_rate: fast\n", wantErr: `f.yaml:1: rate "fast" is not valid`},
		{name: "bad qos", yaml: "\nqos: 3\n", wantErr: `f.yaml:2: qos "3" must be 0, 1 or 2`},
		{name: "bad protocol", yaml: "protocol: 4.0\n", wantErr: `f.yaml:1: protocol "4.0" is not supported`},
		{name: "bad payload", yaml: "payload: xml\n", wantErr: `f.yaml:1: payload "xml" is not a profile`},
		{name: "wrong type", yaml: "count: many\n", wantErr: `f.yaml:1: value "many" is not an integer`},
		{name: "validation has a line", yaml: "count: 1\nreconnect:\n  initial: 5s\n  max: 1s\n", wantErr: "f.yaml:4: reconnect.max 1s is below reconnect.initial 5s"},
		{name: "wildcard topic", yaml: "topic: a/+/b\n", wantErr: `f.yaml:1: topic "a/+/b" must be non-empty and have no wildcards`},
		{name: "bad broker", yaml: "broker: http://x:1\n", wantErr: `f.yaml:1: broker URL "http://x:1" has scheme "http"`},
		{name: "empty", yaml: "", wantErr: "f.yaml: file is empty"},
		{name: "two documents", yaml: "count: 1\n---\ncount: 2\n", wantErr: "f.yaml:2: a second YAML document"},
		{name: "duplicate key", yaml: "count: 1\ncount: 2\n", wantErr: `f.yaml:2: mapping key "count" already defined`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig("f.yaml", []byte(tt.yaml))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				tt.check(t, c)
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrConfig) {
				t.Fatalf("error %q, want it to contain %q and match ErrConfig", err, tt.wantErr)
			}
			if strings.Count(err.Error(), "\n") > 0 {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestExampleFleetFile(t *testing.T) {
	c, err := LoadConfig("../configs/fleet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.StatusTopic == "" || c.CommandTopic == "" || c.Count < 1 {
		t.Errorf("example should show status and commands: %+v", c)
	}
	if _, err := LoadConfig("no/such/fleet.yaml"); err == nil || !strings.Contains(err.Error(), "no/such/fleet.yaml: cannot read") {
		t.Errorf("missing file: %v", err)
	}
	_ = os.Remove
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		want float64
		ok   bool
	}{
		{"100", 100, true}, {"100/s", 100, true}, {"600/m", 10, true}, {"600/min", 10, true}, {"7200/h", 2, true},
		{"0", 0, true}, {"2.5/s", 2.5, true}, {"-1/s", 0, false}, {"x", 0, false}, {"10/d", 0, false}, {"NaN", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseRate(tt.in)
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("ParseRate(%q) = %v, %v; want %v ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"0": 0, "10s": 10 * time.Second, "1m30s": 90 * time.Second} {
		if got, err := ParseDuration(in); err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "10", "-1s", "soon"} {
		if _, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) accepted", in)
		}
	}
}

func TestParseBroker(t *testing.T) {
	for _, ok := range []string{"tcp://127.0.0.1:1883", "127.0.0.1:1883", "mqtts://h:8883", "ws://h:8083/mqtt", "wss://h:443"} {
		if _, err := ParseBroker(ok); err != nil {
			t.Errorf("ParseBroker(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "http://h:1", "tcp://h", "tcp://:1883"} {
		if _, err := ParseBroker(bad); err == nil {
			t.Errorf("ParseBroker(%q) accepted", bad)
		}
	}
}

func TestPayloadStamp(t *testing.T) {
	sent := time.Unix(1700000000, 123456789)
	for _, spec := range []string{"telemetry", "gps", "blob:0", "blob:300"} {
		t.Run(spec, func(t *testing.T) {
			p, err := ParsePayload(spec)
			if err != nil {
				t.Fatal(err)
			}
			g := NewGenerator(p, "dev-42")
			var buf []byte
			for seq := uint64(1); seq <= 3; seq++ {
				buf = g.Append(buf[:0], seq, sent)
				st, err := DecodeStamp(buf)
				if err != nil {
					t.Fatalf("DecodeStamp(%q): %v", buf, err)
				}
				if st.ID != "dev-42" || st.Seq != seq || !st.Sent.Equal(sent) {
					t.Fatalf("stamp = %+v", st)
				}
			}
			if p.Kind == PayloadBlob && p.Size > 0 && len(buf) != p.Size {
				t.Errorf("blob size %d, want %d", len(buf), p.Size)
			}
		})
	}
	if _, err := DecodeStamp([]byte("hello")); !errors.Is(err, ErrNoStamp) {
		t.Errorf("DecodeStamp(hello) = %v", err)
	}
	if _, err := DecodeStamp([]byte{blobMagic, blobVersion, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 200}); !errors.Is(err, ErrNoStamp) {
		t.Errorf("truncated blob: %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("count: 3\n"))
	f.Add([]byte("reconnect: {initial: 1s, max: 1m}\nflaps: {every: 1s}\n"))
	f.Add([]byte("payload: blob:99999999999\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig("fuzz.yaml", data)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error is not a ConfigError: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed config does not validate: %v", err)
		}
	})
}

func FuzzDecodeStamp(f *testing.F) {
	f.Add(AppendBlob(nil, "d", 1, time.Unix(0, 1), 40))
	f.Add([]byte(`{"id":"x","seq":1,"ts":5}`))
	f.Fuzz(func(t *testing.T, p []byte) { _, _ = DecodeStamp(p) })
}
