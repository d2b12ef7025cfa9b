package mqtt

import (
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.golang/paho"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"
)

func hash(t testing.TB, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func TestCovers(t *testing.T) {
	tests := []struct {
		grant, req string
		want       bool
	}{
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a/+", true},
		{"a/+", "a/#", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "a/+/c", true},
		{"#", "x/y", true},
		{"#", "$SYS/x", false},
		{"+/x", "$SYS/x", false},
		{"$SYS/#", "$SYS/broker/uptime", true},
		{"a/b", "a/b/c", false},
		{"a/b/c", "a/b", false},
	}
	for _, tt := range tests {
		if got := covers(strings.Split(tt.grant, "/"), tt.req); got != tt.want {
			t.Errorf("covers(%q, %q) = %v, want %v", tt.grant, tt.req, got, tt.want)
		}
	}
}

func TestAuthentication(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv := startServer(t, Options{
		Listeners: []Listener{
			{Name: "open", Type: TypeTCP, Address: "127.0.0.1:0", AllowAnonymous: true},
			{Name: "closed", Type: TypeTCP, Address: "127.0.0.1:0"},
		},
		Users:      []User{{Username: "alice", PasswordHash: hash(t, "secret")}},
		Registerer: reg,
	})
	open, closed := srv.Addr("open").String(), srv.Addr("closed").String()
	tests := []struct {
		name       string
		addr       string
		user, pass string
		wantCode   byte // 0 = success
	}{
		{"anonymous on open listener", open, "", "", 0},
		{"anonymous on closed listener", closed, "", "", 0x86},
		{"right password", closed, "alice", "secret", 0},
		{"right password again (cache)", closed, "alice", "secret", 0},
		{"wrong password", closed, "alice", "nope", 0x86},
		{"wrong password on open listener", open, "alice", "nope", 0x86},
		{"unknown user", closed, "bob", "secret", 0x86},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, ca, err := dialV5(t, tt.addr, v5opts{id: "c-" + strings.ReplaceAll(tt.name, " ", "-"), user: tt.user, pass: tt.pass})
			switch {
			case tt.wantCode == 0 && err != nil:
				t.Fatalf("connect failed: %v", err)
			case tt.wantCode != 0 && (err == nil || ca == nil || ca.ReasonCode != tt.wantCode):
				t.Fatalf("connect: err %v, connack %+v; want reason %#x", err, ca, tt.wantCode)
			}
		})
	}
	if got := counterValue(t, reg, "sluice_mqtt_auth_failures_total", nil); got != 4 {
		t.Fatalf("auth failures counted %v, want 4", got)
	}

	t.Run("v3 wrong password", func(t *testing.T) {
		_, err := dialV3(t, closed, "v3bad", "alice", "nope", true)
		if err == nil || !strings.Contains(err.Error(), "not Authorized") { // mochi answers 3.1.1 return code 5
			t.Fatalf("v3 connect with wrong password: %v", err)
		}
	})
}

func TestACL(t *testing.T) {
	srv := startServer(t, Options{
		Users: []User{{Username: "dev1", PasswordHash: hash(t, "pw")}, {Username: "ops", PasswordHash: hash(t, "pw")}},
		ACL: []ACLRule{
			{Username: "*", Publish: []string{"devices/%u/#"}, Subscribe: []string{"cmd/%c/#"}},
			{Username: "ops", Subscribe: []string{"devices/#"}},
		},
	})
	addr := srv.Addr("tcp").String()
	ops := mustV5(t, addr, v5opts{id: "ops-1", user: "ops", pass: "pw"})
	if sa := ops.sub(t, "devices/#", 1); sa.Reasons[0] != 1 {
		t.Fatalf("ops subscribe devices/#: reason %#x", sa.Reasons[0])
	}
	dev := mustV5(t, addr, v5opts{id: "dev1-c", user: "dev1", pass: "pw"})

	t.Run("subscribe allowed and denied v5", func(t *testing.T) {
		sa := dev.sub(t, "cmd/dev1-c/#", 1)
		if sa.Reasons[0] != 1 {
			t.Fatalf("allowed subscribe: reason %#x", sa.Reasons[0])
		}
		sa = dev.sub(t, "devices/#", 1)
		if sa.Reasons[0] != 0x87 {
			t.Fatalf("denied subscribe: reason %#x, want 0x87", sa.Reasons[0])
		}
	})
	t.Run("publish allowed", func(t *testing.T) {
		r := dev.pub(t, "devices/dev1/temp", 1, "21")
		if r.ReasonCode != 0 {
			t.Fatalf("allowed publish: reason %#x", r.ReasonCode)
		}
		if p := ops.next(t, 5*time.Second); p.Topic != "devices/dev1/temp" {
			t.Fatalf("ops got %s", p.Topic)
		}
	})
	t.Run("publish denied v5", func(t *testing.T) {
		r := dev.pub(t, "devices/dev2/temp", 1, "spoof")
		if r == nil || r.ReasonCode != 0x87 {
			t.Fatalf("denied publish: %+v, want reason 0x87", r)
		}
		ops.none(t, 200*time.Millisecond)
	})
	t.Run("v3 subscribe denied", func(t *testing.T) {
		c, err := dialV3(t, addr, "dev1-v3", "dev1", "pw", true)
		if err != nil {
			t.Fatal(err)
		}
		tok := c.Subscribe("devices/#", 1, nil)
		tok.WaitTimeout(5 * time.Second)
		st := tok.(interface{ Result() map[string]byte }).Result()
		if st["devices/#"] != 0x80 {
			t.Fatalf("v3 denied subscribe: return code %#x, want 0x80", st["devices/#"])
		}
	})
	t.Run("reload", func(t *testing.T) {
		if err := srv.Reload([]User{{Username: "dev1", PasswordHash: hash(t, "pw")}},
			[]ACLRule{{Username: "dev1", Subscribe: []string{"devices/#"}}}); err != nil {
			t.Fatal(err)
		}
		if sa := dev.sub(t, "devices/#", 0); sa.Reasons[0] != 0 {
			t.Fatalf("subscribe after reload: reason %#x, want granted", sa.Reasons[0])
		}
		if _, ca, err := dialV5(t, addr, v5opts{id: "ops-2", user: "ops", pass: "pw"}); err == nil || ca.ReasonCode != 0x86 {
			t.Fatalf("removed user connected after reload: %v", err)
		}
		if err := srv.Reload(nil, []ACLRule{{Publish: []string{"a/#/b"}}}); err == nil {
			t.Fatal("Reload accepted an invalid filter")
		}
	})
	_ = paho.Publish{}
}

func TestACLDeniedPublishV3(t *testing.T) {
	srv := startServer(t, Options{ACL: []ACLRule{{Publish: []string{"ok/#"}, Subscribe: []string{"#"}}}})
	addr := srv.Addr("tcp").String()
	watcher := mustV5(t, addr, v5opts{id: "w"})
	watcher.sub(t, "#", 1)
	// QoS 0 to a denied topic: dropped, connection kept.
	nc := rawConnect(t, addr, 4, "v3-pub")
	nc.Write(publishPacket(4, []byte("denied/x"), []byte("q0")))
	nc.Write(publishPacket(4, []byte("ok/x"), []byte("fine")))
	if p := watcher.next(t, 5*time.Second); string(p.Payload) != "fine" {
		t.Fatalf("watcher got %s %q", p.Topic, p.Payload)
	}
	// QoS 1 to a denied topic: MQTT 3 has no negative PUBACK, so the client is disconnected.
	var b []byte
	b = append(b, 0x32, 0)
	body := append([]byte{0, 8}, "denied/y"...)
	body = append(body, 0, 1, 'x')
	b[1] = byte(len(body))
	nc.Write(append(b, body...))
	expectClose(t, nc)
	watcher.none(t, 200*time.Millisecond)
}

func TestAnonymousUsernameWithoutUsers(t *testing.T) {
	srv := startServer(t, Options{ACL: []ACLRule{{Username: "admin", Subscribe: []string{"#"}}, {Subscribe: []string{"pub/#"}}}})
	c := mustV5(t, srv.Addr("tcp").String(), v5opts{id: "claims-admin", user: "admin"})
	// The claimed username is not trusted on an anonymous listener without users: no admin rights.
	if sa := c.sub(t, "secret/#", 0); sa.Reasons[0] != 0x87 {
		t.Fatalf("subscribe with an unverified username: %#x, want 0x87", sa.Reasons[0])
	}
	if sa := c.sub(t, "pub/#", 0); sa.Reasons[0] != 0 {
		t.Fatalf("subscribe granted to anyone: %#x", sa.Reasons[0])
	}
}
