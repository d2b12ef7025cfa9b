package devices

import (
	"bytes"
	"io"
	"log/slog"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// passwordHook accepts only user/pass (when set) and allows every topic.
type passwordHook struct {
	mqtt.HookBase
	user, pass string
}

func (h *passwordHook) ID() string { return "password" }
func (h *passwordHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}
func (h *passwordHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	return string(cl.Properties.Username) == h.user && bytes.Equal(pk.Connect.Password, []byte(h.pass))
}
func (h *passwordHook) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

type brokerOpts struct {
	user, pass string
	hooks      []mqtt.Hook
}

// startBroker runs an in-process mochi broker on 127.0.0.1:0 and returns its tcp:// URL.
func startBroker(tb testing.TB, o brokerOpts) (string, *mqtt.Server) {
	tb.Helper()
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClientWritesPending = 4096
	s := mqtt.New(&mqtt.Options{
		InlineClient: true,
		Capabilities: caps,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	var err error
	if o.user != "" {
		err = s.AddHook(&passwordHook{user: o.user, pass: o.pass}, nil)
	} else {
		err = s.AddHook(new(auth.AllowHook), nil)
	}
	if err != nil {
		tb.Fatal(err)
	}
	for _, h := range o.hooks {
		if err := s.AddHook(h, nil); err != nil {
			tb.Fatal(err)
		}
	}
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := s.AddListener(l); err != nil {
		tb.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return "tcp://" + l.Address(), s
}
