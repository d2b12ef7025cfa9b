package devices

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/sluicemq/sluice/mqtt/mqtttest"
)

func TestFleetOverTLS(t *testing.T) {
	pki := mqtttest.NewCA(t, "sluice-test")
	cert := pki.Issue(t, "127.0.0.1", x509.ExtKeyUsageServerAuth).TLS()
	s := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tls", Address: "127.0.0.1:0", TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
	if err := s.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ca := pki.WriteFile(t, t.TempDir(), "ca")
	for _, proto := range []Protocol{MQTT5, MQTT311} {
		t.Run("protocol="+string(proto), func(t *testing.T) {
			f, err := NewFleet(Config{Broker: "mqtts://" + l.Address(), Count: 2, Protocol: proto, QoS: 1,
				Interval: Duration(20 * time.Millisecond), TLS: TLSConfig{CAFile: ca}}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- f.Run(ctx) }()
			waitFor(t, "acked telemetry over TLS", 10*time.Second, func() bool { return f.Stats().Acked >= 6 })
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
	// Without the CA the certificate is not trusted: the first connection fails at once.
	f, err := NewFleet(Config{Broker: "tls://" + l.Address(), Count: 1}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Run(context.Background()); err == nil {
		t.Error("untrusted certificate accepted")
	}
}
