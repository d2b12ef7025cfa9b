// Package httpapitest serves the queue HTTP API in tests: Serve runs an httpapi.Handler over the
// caller's queues on an httptest server on 127.0.0.1, for tests of the handler and of the Go
// client (queue/client) alike. Import it from _test.go files only.
//
// # Concurrency
//
// The server is safe for concurrent requests; Serve itself is called from the test goroutine.
//
// # Example
//
//	m, _ := queue.Open(t.TempDir(), queue.Options{})
//	t.Cleanup(func() { m.Close() }) // registered first: runs after the server is closed
//	_, srv := httpapitest.Serve(t, m, httpapi.Options{})
//	c := &client.Client{BaseURL: srv.URL, HTTPClient: srv.Client()}
package httpapitest

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/sluicemq/sluice/queue/httpapi"
)

// Serve starts the API for m with opts on a new httptest server and returns both. A cleanup
// closes the handler, then the server (and its client's idle connections); close m in a cleanup
// registered before Serve, so that it runs after them. It fails t if opts are not valid.
func Serve(t testing.TB, m httpapi.Manager, opts httpapi.Options) (*httpapi.Handler, *httptest.Server) {
	t.Helper()
	h, err := httpapi.New(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		h.Close()
		srv.Close()
		srv.Client().CloseIdleConnections()
	})
	return h, srv
}
