package mqtt

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestShutdownWhileClientsLeave stops servers while their clients are disconnecting. mochi's own
// listener teardown (Clients.GetByListener) takes the clients' read lock twice, and a client
// removing itself between the two deadlocked Shutdown forever; a benchmark teardown hung that way
// about once in 150. The race window is narrow, so this makes many rounds of it: several listeners
// (one teardown each) and many clients leaving at the moment Shutdown starts.
func TestShutdownWhileClientsLeave(t *testing.T) {
	const rounds, listeners, clients = 25, 4, 60
	for r := range rounds {
		var ls []Listener
		for i := range listeners {
			ls = append(ls, Listener{Name: fmt.Sprintf("l%d", i), Type: TypeTCP, Address: "127.0.0.1:0", AllowAnonymous: true})
		}
		srv, err := New(Options{Listeners: ls})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		var conns []func() error
		for i := range clients {
			nc := rawConnect(t, srv.Addr(ls[i%listeners].Name).String(), 5, fmt.Sprintf("c%d", i))
			conns = append(conns, nc.Close)
		}
		var wg sync.WaitGroup
		for _, closeConn := range conns {
			wg.Go(func() { _ = closeConn() })
		}
		ctx, cancel := contextWithTimeout(10 * time.Second)
		err = srv.Shutdown(ctx)
		cancel()
		wg.Wait()
		if err != nil {
			t.Fatalf("round %d: Shutdown with clients leaving: %v (want it done before the deadline)", r, err)
		}
	}
}
