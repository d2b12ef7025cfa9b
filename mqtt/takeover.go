package mqtt

import (
	"bytes"
	"sync"
	"sync/atomic"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// takeover guards the resumption of a persistent session by a new connection against a race in
// mochi v2.7.9: (*Server).inheritClientSession copies the old client's in-flight store into the
// new client and clears the old one, but the new client replaces the old one in s.Clients only
// afterwards. A concurrent fan-out that still resolved the old client adds its QoS 1/2 message to
// the old store — after the copy, or before the clear — and the message, acknowledged to its
// publisher, was lost. Such messages are caught here (OnQosPublish and OnQosDropped of the old
// client, and a sweep of its store in OnSessionEstablished) and moved into the new client once it
// is established. A clean start discards the old session, so nothing is moved then.
type takeover struct {
	old, cl *mochi.Client

	mu      sync.Mutex
	done    bool    // cl is established (CONNACK and the session's resends were written)
	pending []moved // caught before done
}

// moved is a message to move from the old client to the new one.
type moved struct {
	pk      packets.Packet
	claimed bool // deleted from the old store by us, so still counted in mochi's Info.Inflight
}

// beginTakeover runs in OnSessionEstablish, before mochi inherits the session.
func (h *hook) beginTakeover(cl *mochi.Client, pk packets.Packet) {
	if pk.Connect.Clean {
		return // [MQTT-3.1.2-4]: the old session is discarded
	}
	old, ok := h.s.mochi.Clients.Get(cl.ID)
	if !ok || old == cl || (old.Properties.Clean && old.Properties.ProtocolVersion < 5) {
		return
	}
	t := &takeover{old: old, cl: cl}
	h.s.byOld.Store(old, t)
	h.s.byNew.Store(cl, t)
}

// finishTakeover runs in OnSessionEstablished: moves what was caught so far and what is left in
// the old client's store; later arrivals are moved as they come (route).
func (h *hook) finishTakeover(cl *mochi.Client) {
	v, ok := h.s.byNew.Load(cl)
	if !ok {
		return
	}
	t := v.(*takeover)
	t.mu.Lock()
	t.done = true
	pend := t.pending
	t.pending = nil
	t.mu.Unlock()
	for _, m := range pend {
		h.deliver(t.cl, m)
	}
	for _, pk := range t.old.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type == packets.Publish && t.old.State.Inflight.Delete(pk.PacketID) {
			h.deliver(t.cl, moved{pk: pk, claimed: true})
		}
	}
}

// endTakeover forgets a takeover when its new client disconnects.
func (h *hook) endTakeover(cl *mochi.Client) {
	if v, ok := h.s.byNew.LoadAndDelete(cl); ok {
		h.s.byOld.CompareAndDelete(v.(*takeover).old, v)
	}
}

// catchPublished moves a QoS 1/2 message just set into a client being taken over. It reports
// whether cl is such a client.
func (h *hook) catchPublished(cl *mochi.Client, pk packets.Packet) bool {
	v, ok := h.s.byOld.Load(cl)
	if !ok {
		return h.catchLate(cl, pk)
	}
	if pk.FixedHeader.Type != packets.Publish {
		return true
	}
	if cur, ok := cl.State.Inflight.Get(pk.PacketID); ok && cl.State.Inflight.Delete(pk.PacketID) {
		h.route(v.(*takeover), moved{pk: cur, claimed: true})
	}
	return true
}

// catchLate moves a QoS 1/2 message that a fan-out set into a client whose takeover is over: the
// publisher resolved the client before it was taken over and set the message only after the
// takeover, and the next one, had ended (seen in TestTakeoverUnderLoad: two takeovers later, about
// once in 300 runs), so no takeover record was left to catch it and it sat in a dead client. The
// session lives on in the client now registered for the id, unless that one started clean.
func (h *hook) catchLate(cl *mochi.Client, pk packets.Packet) bool {
	if pk.FixedHeader.Type != packets.Publish || cl.Net.Inline || !cl.Closed() ||
		(cl.Properties.Clean && cl.Properties.ProtocolVersion < 5) {
		return false
	}
	cur, ok := h.s.mochi.Clients.Get(cl.ID)
	if !ok || cur == cl || cur.Properties.Clean {
		return false // offline session kept for a resend, or the session was discarded
	}
	if m, ok := cl.State.Inflight.Get(pk.PacketID); ok && cl.State.Inflight.Delete(pk.PacketID) {
		if v, ok := h.s.byNew.Load(cur); ok {
			h.route(v.(*takeover), moved{pk: m, claimed: true})
		} else {
			h.deliver(cur, moved{pk: m, claimed: true})
		}
	}
	return true
}

// catchDropped keeps what mochi's ClearInflights drops from a client being taken over: copies of
// what the new client inherited (recognised and skipped when delivered) and messages set after
// the copy.
func (h *hook) catchDropped(cl *mochi.Client, pk packets.Packet) {
	v, ok := h.s.byOld.Load(cl)
	if !ok || pk.FixedHeader.Type != packets.Publish {
		return
	}
	t := v.(*takeover)
	t.mu.Lock()
	if !t.done {
		t.pending = append(t.pending, moved{pk: pk})
	}
	t.mu.Unlock()
}

// route moves m into t's new client: kept until it is established, then delivered to the client
// now registered for the id (a later takeover's new client, possibly).
func (h *hook) route(t *takeover, m moved) {
	t.mu.Lock()
	if !t.done {
		t.pending = append(t.pending, m)
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	dst := t.cl
	if cur, ok := h.s.mochi.Clients.Get(dst.ID); ok && cur != dst {
		if v, ok := h.s.byNew.Load(cur); ok {
			h.route(v.(*takeover), m)
			return
		}
		dst = cur
	}
	h.deliver(dst, m)
}

// deliver sets m into dst's in-flight store under a fresh packet id (unless dst already holds
// this very message, inherited from the old client), persists it and writes it to dst.
func (h *hook) deliver(dst *mochi.Client, m moved) {
	info := h.s.mochi.Info
	pk := m.pk
	oldID := pk.PacketID
	if have, ok := dst.State.Inflight.Get(oldID); ok && samePacket(have, pk) {
		if m.claimed {
			atomic.AddInt64(&info.Inflight, -1)
		}
		return
	}
	if dst.State.Inflight.Len() >= int(h.s.opts.Limits.MaxInflight) {
		h.lostInTakeover(dst, pk, m.claimed)
		return
	}
	id, err := dst.NextPacketID()
	if err != nil {
		h.lostInTakeover(dst, pk, m.claimed)
		return
	}
	pk.PacketID = uint16(id)
	pk.FixedHeader.Dup = false
	pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false // aliases are per connection
	if !dst.State.Inflight.Set(pk) {
		h.lostInTakeover(dst, pk, m.claimed) // not reached: NextPacketID returned a free id
		return
	}
	if !m.claimed {
		atomic.AddInt64(&info.Inflight, 1)
	}
	if h.s.storage != nil {
		// The storage key is client id + packet id: drop the old id's record unless another
		// message of dst now holds that id.
		if _, ok := dst.State.Inflight.Get(oldID); !ok && oldID != pk.PacketID {
			h.s.storage.OnQosComplete(dst, m.pk)
		}
		h.s.storage.OnQosPublish(dst, pk, pk.Created, 0)
	}
	if dst.Net.Conn != nil && !dst.Closed() {
		_ = dst.WritePacket(pk) // a failed write leaves it in the session for the next resend
	}
	// dst itself may have been taken over meanwhile: move it on.
	if v, ok := h.s.byOld.Load(dst); ok && dst.State.Inflight.Delete(pk.PacketID) {
		h.route(v.(*takeover), moved{pk: pk, claimed: true})
	}
}

func (h *hook) lostInTakeover(dst *mochi.Client, pk packets.Packet, claimed bool) {
	if claimed {
		atomic.AddInt64(&h.s.mochi.Info.Inflight, -1)
	}
	h.s.metrics.drop(dropInflightFull)
	h.s.logDrop(dst, pk, dropInflightFull)
}

// samePacket reports whether a and b are the same message (a copy made by mochi's Clone).
func samePacket(a, b packets.Packet) bool {
	return a.FixedHeader.Type == b.FixedHeader.Type && a.PacketID == b.PacketID &&
		a.TopicName == b.TopicName && a.Origin == b.Origin && a.Created == b.Created &&
		bytes.Equal(a.Payload, b.Payload)
}
