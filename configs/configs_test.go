package configs

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeFile(t testing.TB, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefault(t *testing.T) {
	c, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("embedded default does not validate: %v", err)
	}
	want := []Listener{
		{Name: "tcp", Type: "tcp", Address: "127.0.0.1:1883", AllowAnonymous: true},
		{Name: "ws", Type: "ws", Address: "127.0.0.1:8083", AllowAnonymous: true},
	}
	if !reflect.DeepEqual(c.MQTT.Listeners, want) {
		t.Errorf("listeners = %+v, want %+v", c.MQTT.Listeners, want)
	}
	if c.HTTP.Address != "127.0.0.1:8080" || c.DataDir != "./data" {
		t.Errorf("http.address = %q, data_dir = %q", c.HTTP.Address, c.DataDir)
	}
	if want := []BridgeRule{{Filter: "devices/+/telemetry", Queue: "telemetry"}}; !reflect.DeepEqual(c.Bridge.Rules, want) {
		t.Errorf("bridge.rules = %+v, want %+v", c.Bridge.Rules, want)
	}
	d := c.Queues.Defaults
	if d.VisibilityTimeout != 30*time.Second || d.MaxAttempts != 5 || d.Backoff != (Backoff{time.Second, 2, 5 * time.Minute, 0.2}) ||
		d.Overflow != "reject" || d.Sync != "always" || d.DeadLetter == nil || !*d.DeadLetter || d.OnExpire != "dead_letter" {
		t.Errorf("queues.defaults = %+v", d)
	}
	l := c.MQTT.Limits
	if l.MaxPacketSize != 1<<20 || l.MaxPendingWrites != 256 || l.KeepAliveMax != 600 || l.ConnectTimeout != 10*time.Second {
		t.Errorf("mqtt.limits = %+v", l)
	}
	if c.Log.Level != "info" || c.Log.Format != "auto" || c.MQTT.SlowSubscribers.Policy != "backpressure" {
		t.Errorf("log = %+v, slow = %+v", c.Log, c.MQTT.SlowSubscribers)
	}
}

// TestEmbeddedDocumentsEveryKey keeps sluice.yaml the complete reference: every key of Config appears in
// it, as a key or in a comment.
func TestEmbeddedDocumentsEveryKey(t *testing.T) {
	text := string(Embedded())
	var walk func(t reflect.Type, path string)
	walk = func(typ reflect.Type, path string) {
		for typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map || typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || typ == durationType {
			return
		}
		for i := range typ.NumField() {
			f := typ.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if tag == "" {
				continue
			}
			if !strings.Contains(text, tag+":") {
				t.Errorf("key %s.%s is not documented in sluice.yaml", path, tag)
			}
			walk(f.Type, path+"."+tag)
		}
	}
	walk(reflect.TypeOf(Config{}), "")
}

func TestLoadOverridesDefaults(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "s.yaml", `
log: {level: debug}
mqtt:
  listeners:
    - {name: only, type: tcp, address: "127.0.0.1:0"}
  limits:
    max_packet_size: 0x1000
    keep_alive_max: 1_200
    connect_timeout: 2s
  users:
    - username: alice
      password_hash: "$2a$10$CwTycUXWue0Thq9StjUM0uJ8DPLKXt1FYlwYpQW2G3cK1vG3zF5lW"
queues:
  declare:
    telemetry: {max_messages: 100, overflow: drop_oldest, dead_letter: false}
bridge:
  rules: []
`)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Log.Level != "debug" || c.Log.Format != "auto" {
		t.Errorf("log = %+v: level overridden, format kept", c.Log)
	}
	if len(c.MQTT.Listeners) != 1 || c.MQTT.Listeners[0].Name != "only" {
		t.Errorf("listeners = %+v: the file's list replaces the default", c.MQTT.Listeners)
	}
	if l := c.MQTT.Limits; l.MaxPacketSize != 4096 || l.KeepAliveMax != 1200 || l.ConnectTimeout != 2*time.Second || l.MaxInflight != 256 {
		t.Errorf("limits = %+v", l)
	}
	if len(c.Bridge.Rules) != 0 {
		t.Errorf("bridge.rules = %+v, want emptied", c.Bridge.Rules)
	}
	q := c.Queues.Declare["telemetry"]
	if q.MaxMessages != 100 || q.Overflow != "drop_oldest" || q.DeadLetter == nil || *q.DeadLetter || q.MaxAttempts != 0 {
		t.Errorf("declared queue = %+v", q)
	}
	if c.HTTP.Address != "127.0.0.1:8080" || c.DataDir != "./data" {
		t.Errorf("untouched sections lost their defaults: http %+v data_dir %q", c.HTTP, c.DataDir)
	}
}

func TestEmptyFileIsDefault(t *testing.T) {
	for _, data := range []string{"", "\n# nothing\n", "---\n", "~\n"} {
		c, err := Parse("e.yaml", []byte(data))
		if err != nil {
			t.Fatalf("%q: %v", data, err)
		}
		d, _ := Default()
		if !reflect.DeepEqual(c, d) {
			t.Errorf("%q: not the default", data)
		}
	}
}

const hash = "$2a$10$CwTycUXWue0Thq9StjUM0uJ8DPLKXt1FYlwYpQW2G3cK1vG3zF5lW"

// TestErrors: every bad input is one line that names the file and the line of the key at fault.
func TestErrors(t *testing.T) {
	dir := t.TempDir()
	cert := writeFile(t, dir, "cert.pem", "x")
	key := writeFile(t, dir, "key.pem", "x")
	missing := filepath.Join(dir, "missing.pem")
	tests := []struct {
		name string
		data string
		want string // expected message, after "FILE:"
	}{
		{"unknown top-level key", "mqt: {}\n", `1: unknown key "mqt" in the top level (did you mean "mqtt"?)`},
		{"unknown key in section", "mqtt:\n  limits:\n    max_packets: 3\n", `3: unknown key "max_packets" in section mqtt.limits (did you mean "max_packet_size"?)`},
		{"unknown key in list item", "mqtt:\n  listeners:\n    - name: a\n      adress: x\n", `4: unknown key "adress" in section mqtt.listeners[0] (did you mean "address"?)`},
		{"unknown key far off", "log:\n  colour: red\n", `2: unknown key "colour" in section log`},
		{"duplicate key", "log:\n  level: info\n  level: debug\n", `3: key "level" appears twice in section log (first on line 2)`},
		{"bad duration", "mqtt:\n  sys_interval: 10 seconds\n", `2: key "sys_interval" in section mqtt: "10 seconds" is not a duration (write a number with a unit: 500ms, 10s, 5m, 1h)`},
		{"duration without unit", "mqtt:\n  limits: {connect_timeout: 10}\n", `2: key "connect_timeout" in section mqtt.limits: "10" is not a duration (write a number with a unit: 500ms, 10s, 5m, 1h)`},
		{"bad integer", "mqtt:\n  limits:\n    receive_maximum: 70000\n", `3: key "receive_maximum" in section mqtt.limits must be an integer between 0 and 65535, got "70000"`},
		{"bad bool", "mqtt:\n  echo_user_properties: yes\n", `2: key "echo_user_properties" in section mqtt must be true or false, got "yes"`},
		{"bad float", "mqtt:\n  limits: {publish_rate: fast}\n", `2: key "publish_rate" in section mqtt.limits must be a number, got "fast"`},
		{"list where mapping", "log: [a]\n", `1: section log must be a mapping of keys, got a list`},
		{"scalar where list", "mqtt:\n  listeners: tcp\n", `2: key "listeners" in section mqtt must be a list, got "tcp"`},
		{"invalid yaml", "log:\n  level: [\n", `2: invalid YAML: did not find expected node content`},
		{"two documents", "log: {}\n---\nlog: {}\n", `2: a second YAML document; a config file holds one`},
		{"bad listener type", "mqtt:\n  listeners:\n    - {name: a, type: udp, address: \"127.0.0.1:1\"}\n", `3: listener "a": type "udp" is not one of tcp, tls, ws, wss`},
		{"listener without name", "mqtt:\n  listeners:\n    - {type: tcp, address: \"127.0.0.1:1\"}\n", `3: listener 1 has no name`},
		{"bad address", "mqtt:\n  listeners:\n    - name: a\n      type: tcp\n      address: localhost\n", `5: listener "a": address "localhost" is not host:port`},
		{"bad port", "mqtt:\n  listeners:\n    - name: a\n      type: tcp\n      address: \":99999\"\n", `5: listener "a": address ":99999" has an invalid port (0 to 65535)`},
		{"duplicate listener names", "mqtt:\n  listeners:\n    - {name: a, type: tcp, address: \"127.0.0.1:1\"}\n    - {name: a, type: ws, address: \"127.0.0.1:2\"}\n", `4: listener name "a" is used twice (listeners 1 and 2)`},
		{"duplicate listener addresses", "mqtt:\n  listeners:\n    - {name: a, type: tcp, address: \"127.0.0.1:1\"}\n    - {name: b, type: ws, address: \"127.0.0.1:1\"}\n", `4: listeners "a" and "b" both listen on 127.0.0.1:1`},
		{"no listeners", "mqtt:\n  listeners: []\n", `2: mqtt.listeners is empty; the broker needs at least one listener`},
		{"tls listener without files", "mqtt:\n  listeners:\n    - name: s\n      type: tls\n      address: \"127.0.0.1:1\"\n", `3: listener "s": a tls listener needs tls.cert_file and tls.key_file`},
		{"missing tls cert file", "mqtt:\n  listeners:\n    - name: s\n      type: wss\n      address: \"127.0.0.1:1\"\n      tls:\n        cert_file: " + missing + "\n        key_file: " + key + "\n", `7: listener "s": tls.cert_file ` + missing + ` does not exist`},
		{"missing tls key file", "mqtt:\n  listeners:\n    - name: s\n      type: tls\n      address: \"127.0.0.1:1\"\n      tls: {cert_file: " + cert + ", key_file: " + missing + "}\n", `6: listener "s": tls.key_file ` + missing + ` does not exist`},
		{"missing client ca", "mqtt:\n  listeners:\n    - name: s\n      type: tls\n      address: \"127.0.0.1:1\"\n      tls:\n        cert_file: " + cert + "\n        key_file: " + key + "\n        client_ca_file: " + missing + "\n", `9: listener "s": tls.client_ca_file ` + missing + ` does not exist`},
		{"require cert without ca", "mqtt:\n  listeners:\n    - name: s\n      type: tls\n      address: \"127.0.0.1:1\"\n      tls:\n        cert_file: " + cert + "\n        key_file: " + key + "\n        require_client_cert: true\n", `9: listener "s": tls.require_client_cert needs tls.client_ca_file`},
		{"tls on tcp listener", "mqtt:\n  listeners:\n    - name: a\n      type: tcp\n      address: \"127.0.0.1:1\"\n      tls: {cert_file: " + cert + "}\n", `6: listener "a": tls settings given for a tcp listener (use type tls or wss)`},
		{"user without hash", "mqtt:\n  users:\n    - username: bob\n", `3: user "bob" has no password_hash (make one with ` + "`sluice passwd`)"},
		{"user with plaintext password", "mqtt:\n  users:\n    - username: bob\n      password_hash: secret\n", `4: user "bob": password_hash is not a bcrypt hash (make one with ` + "`sluice passwd`)"},
		{"duplicate user", "mqtt:\n  users:\n    - {username: bob, password_hash: \"" + hash + "\"}\n    - {username: bob, password_hash: \"" + hash + "\"}\n", `4: user "bob" is listed twice (users 1 and 2)`},
		{"bad acl filter hash", "mqtt:\n  acl:\n    - username: bob\n      publish: [\"a/#/b\"]\n", `4: acl rule 1: publish filter "a/#/b": '#' must be the whole last level`},
		{"bad acl filter plus", "mqtt:\n  acl:\n    - username: bob\n      subscribe:\n        - ok/+\n        - \"a/b+\"\n", `6: acl rule 1: subscribe filter "a/b+": '+' must be a whole level`},
		{"acl rule granting nothing", "mqtt:\n  acl:\n    - username: bob\n", `3: acl rule 1 grants nothing (give it publish or subscribe filters)`},
		{"bad log level", "log: {level: loud}\n", `1: log.level "loud" is not one of trace, debug, info, warn, error`},
		{"bad slow policy", "mqtt:\n  slow_subscribers:\n    policy: wait\n", `3: mqtt.slow_subscribers.policy "wait" is not one of drop, disconnect, backpressure`},
		{"keep alive bounds", "mqtt:\n  limits:\n    keep_alive_min: 100\n    keep_alive_max: 10\n", `3: mqtt.limits.keep_alive_min (100) is above keep_alive_max (10)`},
		{"negative duration", "mqtt:\n  limits:\n    max_session_expiry: -1h\n", `3: mqtt.limits.max_session_expiry is negative`},
		{"http address clash", "http:\n  address: 127.0.0.1:1883\n", `2: http.address 127.0.0.1:1883 is also the address of listener "tcp" (listener 1)`},
		{"api key without secret", "http:\n  api_keys:\n    - name: k\n      queues: {q: [consume]}\n", `3: api key "k" needs exactly one of key and key_hash`},
		{"api key bad hash", "http:\n  api_keys:\n    - name: k\n      key_hash: abc\n      queues: {q: [consume]}\n", `4: api key "k": key_hash must be "sha256:" and 64 hex digits`},
		{"api key bad right", "http:\n  api_keys:\n    - name: k\n      key: 0123456789abcdef0123\n      queues:\n        q: [consume, delete]\n", `6: api key "k": right "delete" is not one of consume, produce, admin`},
		{"bad bridge filter", "bridge:\n  rules:\n    - {filter: \"a/#/b\", queue: q}\n", `3: bridge rule 1: filter "a/#/b": '#' must be the whole last level`},
		{"share bridge rule", "bridge:\n  rules:\n    - filter: devices/x\n      queue: q\n    - filter: $share/g/devices/#\n      queue: q\n", `5: bridge rule 2: filter "$share/g/devices/#" is a shared subscription; use the topic filter alone (every matching publish is bridged once per rule)`},
		{"bridge rule bad queue name", "bridge:\n  rules:\n    - filter: a/b\n      queue: ../etc\n", `4: bridge rule 1: "../etc" is not a queue name (1 to 128 letters, digits, '.', '_' or '-')`},
		{"bridge rule bad qos", "bridge:\n  rules:\n    - filter: a/b\n      queue: q\n      min_qos: 3\n", `5: bridge rule 1: min_qos 3 is not 0, 1 or 2`},
		{"bridge rule without queue", "bridge:\n  rules:\n    - filter: a/b\n", `3: bridge rule 1 has no queue`},
		{"bad declared queue name", "queues:\n  declare:\n    \"a/b\": {}\n", `3: queue name "a/b" must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit`},
		{"bad queue overflow", "queues:\n  declare:\n    q:\n      overflow: block\n", `4: queues.declare.q.overflow "block" is not one of reject, drop_oldest`},
		{"bad backoff jitter", "queues:\n  defaults:\n    backoff: {jitter: 2}\n", `3: queues.defaults.backoff.jitter 2 is not between 0 and 1`},
		{"bad sync", "queues:\n  defaults:\n    sync: sometimes\n", `3: queues.defaults.sync "sometimes" is not one of always, interval, none`},
		{"empty data dir", "data_dir: \"\"\n", `1: data_dir is empty; name a directory for the broker's and the queues' data`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, dir, "bad.yaml", tt.data)
			c, err := Load(p)
			if err == nil {
				err = c.Validate()
			}
			if err == nil {
				t.Fatal("no error")
			}
			if want := p + ":" + tt.want; err.Error() != want {
				t.Errorf("error\n got: %s\nwant: %s", err, want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.File != p || ce.Line == 0 {
				t.Errorf("error %#v: want *Error with file and line", err)
			}
		})
	}
}

func TestLoadUnreadable(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(filepath.Join(dir, "nope.yaml"))
	if want := filepath.Join(dir, "nope.yaml") + ": cannot read the file: no such file or directory"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
	big := writeFile(t, dir, "big.yaml", "#"+strings.Repeat("x", MaxFileSize)+"\n")
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("big file: err = %v", err)
	}
}

func TestAliasBomb(t *testing.T) {
	data := `
a: &a ["x","x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
`
	// The top-level keys are unknown, so this fails early; put the bomb under a real list too.
	if _, err := Parse("bomb.yaml", []byte(data)); err == nil {
		t.Fatal("no error")
	}
	bomb := strings.Replace(data, "a: &a", "x: &a", 1) + "mqtt:\n  acl:\n    - publish: *f\n"
	bomb = "log: {}\n" + bomb
	_, err := Parse("bomb.yaml", []byte(bomb))
	if err == nil {
		t.Fatal("no error")
	}
}

func TestAliasesWork(t *testing.T) {
	c, err := Parse("a.yaml", []byte(`
mqtt:
  acl:
    - username: a
      publish: &pubs ["x/#", "y/+"]
    - username: b
      publish: *pubs
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.MQTT.ACL[1].Publish; !reflect.DeepEqual(got, []string{"x/#", "y/+"}) {
		t.Errorf("alias decoded to %v", got)
	}
}

func TestCheckFilter(t *testing.T) {
	for _, f := range []string{"#", "+", "a/b", "a/+/c", "a/#", "+/+/#", "/", "a//b", "$SYS/#", "devices/%u/#"} {
		if err := CheckFilter(f); err != nil {
			t.Errorf("CheckFilter(%q) = %v, want ok", f, err)
		}
	}
	for _, f := range []string{"", "a/#/b", "a#", "a/b+", "+a", "a\x00b", "\xff", "##"} {
		if err := CheckFilter(f); err == nil {
			t.Errorf("CheckFilter(%q) = nil, want an error", f)
		}
	}
}

func FuzzLoad(f *testing.F) {
	f.Add(Embedded())
	f.Add([]byte("mqtt:\n  listeners:\n    - {name: a, type: tls, address: \":1\"}\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("log: {level: debug}\nqueues: {declare: {q: {backoff: {jitter: 0.5}}}}\n"))
	f.Add([]byte("bridge: {rules: [{filter: \"$share/x/y\", queue: q, min_qos: 9}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.yaml", data)
		if err == nil {
			err = c.Validate()
		}
		if err != nil && strings.ContainsAny(err.Error(), "\n\r") {
			t.Fatalf("error is not one line: %q", err)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("error %v does not wrap ErrInvalid", err)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	for _, tt := range []struct {
		name string
		data []byte
	}{{"embedded", Embedded()}, {"small", []byte("log: {level: debug}\nmqtt: {limits: {max_inflight: 10}}\n")}} {
		b.Run("file="+tt.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(tt.data)))
			for b.Loop() {
				c, err := Parse("b.yaml", tt.data)
				if err != nil {
					b.Fatal(err)
				}
				if err := c.Validate(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
