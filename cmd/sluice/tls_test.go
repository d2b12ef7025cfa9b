package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/sluicemq/sluice/mqtt/mqtttest"
)

// TestAppMutualTLS: a tls listener from the configuration with client-certificate verification and
// certificate identity: a client with a certificate gets in without a password, one without does not.
func TestAppMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := mqtttest.NewCA(t, "test ca")
	caFile := ca.WriteFile(t, dir, "ca")
	srvCert, srvKey := ca.Issue(t, "sluice", x509.ExtKeyUsageServerAuth).WriteFiles(t, dir, "server")
	alice := ca.Issue(t, "alice", x509.ExtKeyUsageClientAuth)
	cfg := fmt.Sprintf(`log: {format: json}
mqtt:
  listeners:
    - name: mqtts
      type: tls
      address: "127.0.0.1:0"
      allow_anonymous: false
      tls: {cert_file: %s, key_file: %s, client_ca_file: %s, require_client_cert: true, cert_identity: true}
  acl:
    - {username: alice, publish: ["users/%%u/#"], subscribe: ["users/%%u/#"]}
http: {address: ""}
data_dir: %s
bridge: {rules: []}
`, srvCert, srvKey, caFile, filepath.Join(dir, "data"))
	a := startApp(t, writeText(t, dir, "sluice.yaml", cfg))
	if a.HTTPAddr() != nil {
		t.Errorf("http.address \"\" still opened %v", a.HTTPAddr())
	}
	addr := a.MQTTAddr("mqtts").String()
	pool := ca.Pool()

	dial := func(withCert bool) (*paho.Client, error) {
		tc := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		if withCert {
			tc.Certificates = []tls.Certificate{alice.TLS()}
		}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tc)
		if err != nil {
			return nil, err
		}
		// Over TLS paho.golang's packet writes interleave unless the conn is a sync.Locker.
		c := paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(conn)})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: "tls-client", KeepAlive: 30, CleanStart: true}); err != nil {
			conn.Close()
			return nil, err
		}
		return c, nil
	}
	c, err := dial(true)
	if err != nil {
		t.Fatalf("client with a certificate: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "users/alice/#", QoS: 1}}})
	if err != nil || len(sa.Reasons) != 1 || sa.Reasons[0] != 1 {
		t.Errorf("subscribe as alice (from the certificate): %v %+v", err, sa)
	}
	sa, err = c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "users/bob/#", QoS: 1}}})
	if err == nil && len(sa.Reasons) == 1 && sa.Reasons[0] < 0x80 {
		t.Errorf("alice subscribed to bob's topics: %+v", sa)
	}
	_ = c.Disconnect(&paho.Disconnect{})
	<-c.Done()

	if c, err := dial(false); err == nil {
		_ = c.Disconnect(&paho.Disconnect{})
		<-c.Done()
		t.Fatal("a client without a certificate got in")
	}
}
