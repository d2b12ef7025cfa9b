// Package mqtttest holds helpers for tests that speak MQTT: a throwaway certificate authority
// (NewCA) that issues certificates for 127.0.0.1 (CA.Issue), as values for tls.Config and as PEM
// files for listener and client configuration; and raw packet framing (AppendHeader, WritePacket,
// ReadPacket) for tests that drive a broker byte by byte.
//
// It lives under mqtt/ because listeners and the wire protocol are mqtt's; tests of mqtt, bridge,
// devices and cmd/sluice import it, always from _test.go files. It imports only the standard
// library, so a test that uses it pulls in nothing of the broker (devices stays broker-free).
//
// # Concurrency
//
// A CA may issue from several goroutines at once; nothing is shared but its read-only key.
//
// # Example
//
//	ca := mqtttest.NewCA(t, "test ca")
//	caFile := ca.WriteFile(t, dir, "ca")
//	certFile, keyFile := ca.Issue(t, "127.0.0.1", x509.ExtKeyUsageServerAuth).WriteFiles(t, dir, "server")
//	client := ca.Issue(t, "device-7", x509.ExtKeyUsageClientAuth).TLS() // CN "device-7"
//	cfg := &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{client}}
package mqtttest
