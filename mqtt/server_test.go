package mqtt

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

func TestDeliveryQoS(t *testing.T) {
	srv := startServer(t, Options{})
	addr := srv.Addr("tcp").String()
	for _, qos := range []byte{0, 1, 2} {
		t.Run(fmt.Sprintf("qos=%d", qos), func(t *testing.T) {
			sub := mustV5(t, addr, v5opts{id: fmt.Sprintf("sub%d", qos)})
			sub.sub(t, "q/+/x", qos)
			pub := mustV5(t, addr, v5opts{id: fmt.Sprintf("pub%d", qos)})
			const n = 50
			for i := range n {
				pub.pub(t, fmt.Sprintf("q/%d/x", i), qos, fmt.Sprint(i))
			}
			seen := map[string]int{}
			for range n {
				p := sub.next(t, 5*time.Second)
				seen[string(p.Payload)]++
				if p.QoS != qos {
					t.Fatalf("got qos %d, want %d", p.QoS, qos)
				}
			}
			if qos == 2 {
				sub.none(t, 200*time.Millisecond)
				for k, v := range seen {
					if v != 1 {
						t.Fatalf("QoS 2 message %s delivered %d times", k, v)
					}
				}
			}
			if len(seen) != n {
				t.Fatalf("got %d distinct messages, want %d", len(seen), n)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"bad type", Options{Listeners: []Listener{{Name: "x", Type: "udp", Address: ":1"}}}, `type "udp"`},
		{"dup name", Options{Listeners: []Listener{{Name: "x", Type: "tcp", Address: ":1"}, {Name: "x", Type: "tcp", Address: ":2"}}}, "used twice"},
		{"tls without cert", Options{Listeners: []Listener{{Name: "x", Type: "tls", Address: ":1"}}}, "cert file"},
		{"missing cert file", Options{Listeners: []Listener{{Name: "x", Type: "tls", Address: ":1", TLS: TLS{CertFile: "/nonexistent.pem", KeyFile: "/nonexistent.key"}}}}, "load certificate"},
		{"bad hash", Options{Users: []User{{Username: "u", PasswordHash: "plain"}}}, "not a bcrypt hash"},
		{"bad acl", Options{ACL: []ACLRule{{Publish: []string{"a/#/b"}}}}, "not valid"},
		{"bad policy", Options{Slow: SlowSubscribers{Policy: "maybe"}}, "policy"},
		{"keepalive", Options{Limits: Limits{KeepAliveMin: 100, KeepAliveMax: 10}}, "keep-alive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.opts)
			if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want ErrInvalidOptions containing %q", err, tt.want)
			}
		})
	}
}

func TestStartPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv, err := New(Options{Listeners: []Listener{
		{Name: "ok", Type: TypeTCP, Address: "127.0.0.1:0"},
		{Name: "busy", Type: TypeTCP, Address: ln.Addr().String()},
	}})
	if err != nil {
		t.Fatal(err)
	}
	err = srv.Start()
	if err == nil || !strings.Contains(err.Error(), `"busy"`) || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Start: %v, want an error naming listener busy and its address", err)
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown after failed Start: %v", err)
	}
	if err := srv.Shutdown(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Shutdown: %v, want ErrClosed", err)
	}
}
