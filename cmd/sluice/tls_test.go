package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

type testCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

// newCert makes a certificate for cn signed by parent (nil: self-signed CA).
func newCert(t *testing.T, cn string, parent *testCert, serverIP net.IP) *testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	signer, signerKey := tmpl, key
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	} else {
		signer, signerKey = parent.cert, parent.key
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
		if serverIP != nil {
			tmpl.IPAddresses = []net.IP{serverIP}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCert{cert: c, key: key, der: der}
}

func (c *testCert) write(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	kb, err := x509.MarshalECPrivateKey(c.key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestAppMutualTLS: a tls listener from the configuration with client-certificate verification and
// certificate identity: a client with a certificate gets in without a password, one without does not.
func TestAppMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newCert(t, "test ca", nil, nil)
	caFile, _ := ca.write(t, dir, "ca")
	srvCert, srvKey := newCert(t, "sluice", ca, net.ParseIP("127.0.0.1")).write(t, dir, "server")
	alice := newCert(t, "alice", ca, nil)
	p := filepath.Join(dir, "sluice.yaml")
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
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startApp(t, p)
	if a.HTTPAddr() != nil {
		t.Errorf("http.address \"\" still opened %v", a.HTTPAddr())
	}
	addr := a.MQTTAddr("mqtts").String()
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)

	dial := func(withCert bool) (*paho.Client, error) {
		tc := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		if withCert {
			tc.Certificates = []tls.Certificate{{Certificate: [][]byte{alice.der}, PrivateKey: alice.key}}
		}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tc)
		if err != nil {
			return nil, err
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn})
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
