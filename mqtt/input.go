package mqtt

import mochi "github.com/mochi-mqtt/server/v2"

// InputBuffered reports whether cl's connection has already received bytes past the packet being
// handled: the next packet (or part of it) is waiting in the read buffer. Call it from a hook on
// the connection's reader goroutine. The bridge pipelines a publish only when something waits
// behind it; otherwise it blocks, which acks a lone publish sooner. For a client that is not on
// one of this server's listeners it returns false.
func (s *Server) InputBuffered(cl *mochi.Client) bool {
	if cl == nil {
		return false
	}
	c := connOf(cl)
	return c != nil && c.rx.Load() > c.parsed.Load()
}

// BeforeReadWait makes fn run once on cl's reader goroutine before it next waits: when it goes to
// read the network with everything received so far handled, or when the backpressure policy
// holds it for a saturated subscriber. A hook batching work across the publishes of one read uses
// it to finish that work before the reader waits. Call it from cl's reader goroutine (a hook such
// as OnPublish); a later call replaces fn. It returns false, and fn never runs, when cl is not on
// one of this server's listeners.
func (s *Server) BeforeReadWait(cl *mochi.Client, fn func()) bool {
	if cl == nil {
		return false
	}
	c := connOf(cl)
	if c == nil {
		return false
	}
	c.in.beforeWait = fn
	return true
}

// packetSize is the size on the wire of a packet with remaining bytes after its fixed header:
// the type byte, the variable-length remaining length, the rest.
func packetSize(remaining int) int {
	n := 1 + remaining
	for {
		n++
		remaining >>= 7
		if remaining == 0 {
			return n
		}
	}
}
