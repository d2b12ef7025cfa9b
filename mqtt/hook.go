package mqtt

import (
	"fmt"
	"strings"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// hook is Sluice's single mochi hook: authentication, ACL, keep-alive bounds, topic limits,
// publish rate, slow-subscriber policy and metrics. One hook rather than several keeps mochi's
// per-event hook dispatch short on the hot path.
type hook struct {
	mochi.HookBase
	s *Server
}

func (h *hook) ID() string { return "sluice" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mochi.OnConnect, mochi.OnConnectAuthenticate, mochi.OnACLCheck, mochi.OnSessionEstablish,
		mochi.OnSessionEstablished, mochi.OnPacketRead, mochi.OnPacketSent, mochi.OnPublishDropped,
		mochi.OnQosDropped, mochi.OnPacketEncode, mochi.OnQosPublish, mochi.OnQosComplete,
		mochi.OnDisconnect, mochi.OnPublish, mochi.OnSubscribe:
		return true
	}
	return false
}

// connOf returns our per-connection state, nil for a session restored from storage and offline.
func connOf(cl *mochi.Client) *conn {
	c, _ := cl.Net.Conn.(*conn)
	return c
}

// OnConnect bounds the keep-alive. MQTT 5 clients asking for 0 or more than KeepAliveMax (or less
// than KeepAliveMin) are told the server's value in CONNACK. MQTT 3 clients cannot be told, so one
// asking for 0 or more than KeepAliveMax is refused with "identifier rejected", as Mosquitto does.
func (h *hook) OnConnect(cl *mochi.Client, pk packets.Packet) error {
	lim := h.s.opts.Limits
	ka := pk.Connect.Keepalive
	if cl.Properties.ProtocolVersion >= 5 {
		switch {
		case ka == 0 || ka > lim.KeepAliveMax:
			cl.State.Keepalive, cl.State.ServerKeepalive = lim.KeepAliveMax, true
		case ka < lim.KeepAliveMin:
			cl.State.Keepalive, cl.State.ServerKeepalive = lim.KeepAliveMin, true
		}
		return nil
	}
	if ka == 0 || ka > lim.KeepAliveMax {
		h.s.metrics.authFailure("keepalive")
		_ = h.s.mochi.SendConnack(cl, packets.ErrClientIdentifierNotValid, false, nil)
		return packets.ErrClientIdentifierNotValid
	}
	return nil
}

// OnConnectAuthenticate authenticates with, in order: a password (bcrypt, against Users); a
// verified client certificate's CommonName (listeners with CertIdentity); anonymity (listeners with
// AllowAnonymous). A username without a password on an anonymous listener with no users
// configured is treated as anonymous, and its username is not trusted for ACL matching.
func (h *hook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	st := h.s.auth.state.Load()
	lc := h.s.listenerCfg(cl.Net.Listener)
	c := connOf(cl)
	user := string(pk.Connect.Username)
	switch {
	case pk.Connect.PasswordFlag:
		if h.s.auth.checkPassword(st, user, pk.Connect.Password) {
			return true
		}
		h.s.metrics.authFailure("bad_password")
		return false
	case c != nil && c.verified && lc.TLS.CertIdentity:
		cl.Properties.Username = []byte(c.certCN)
		return true
	case lc.AllowAnonymous && (user == "" || len(st.users) == 0):
		cl.Properties.Username = nil
		return true
	}
	h.s.metrics.authFailure("anonymous_refused")
	return false
}

// OnSessionEstablish marks the connection as past CONNECT (its deadline is mochi's keep-alive now)
// and notes a persistent session about to be resumed (see takeover).
func (h *hook) OnSessionEstablish(cl *mochi.Client, pk packets.Packet) {
	if c := connOf(cl); c != nil {
		c.established.Store(true)
	}
	h.beginTakeover(cl, pk)
}

// OnSessionEstablished switches off mochi's outbound send quota. In mochi v2.7.9 that mechanism
// (a) deadlocks: processPacket calls Inflight.NextImmediate, which read-locks the in-flight store
// and calls GetAll, which read-locks it again — a publisher's Inflight.Set waiting in between
// blocks both forever (seen in BenchmarkFanIn within seconds); and (b) leaks quota: a message
// parked at quota 0 is deleted from the in-flight store once sent, so its PUBACK never returns the
// quota and the session stalls after Receive Maximum of them. With the quota off, outbound
// QoS 1/2 messages are bounded by MaxInflight per client (beyond it they are dropped and counted
// as reason inflight_full) and by MaxPendingWrites; the client's Receive Maximum is honoured under
// the backpressure policy (publishers wait while a subscriber has that many unacked), and
// otherwise only approximately (paho clients queue the excess, they do not fail).
//
// It then moves into cl the messages a resumed session's old client received during the takeover
// (see takeover).
func (h *hook) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	cl.State.Inflight.ResetSendQuota(0)
	h.finishTakeover(cl)
}

// OnACLCheck applies the ACL: write = publish; otherwise a SUBSCRIBE filter or the topic of a
// message about to be delivered.
func (h *hook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	st := h.s.auth.state.Load()
	if len(st.rules) == 0 {
		return true
	}
	var g *grants
	if c := connOf(cl); c != nil {
		g = c.grants.Load()
		if g == nil || g.gen != st.gen {
			g = h.s.auth.resolve(st, string(cl.Properties.Username), cl.ID)
			c.grants.Store(g)
		}
	} else {
		g = h.s.auth.resolve(st, string(cl.Properties.Username), cl.ID)
	}
	ok := g.allowed(topic, write)
	if !ok && write {
		h.s.metrics.drop(dropNotRouted)
	}
	return ok
}

// invalidFilter replaces a SUBSCRIBE filter over the topic limits: mochi refuses it as an invalid
// filter ('#' must be last), so the client gets 0x8F (MQTT 5) or 0x80 (3.1.1) for that filter
// alone and nothing enters the topic tree.
const invalidFilter = "#/"

// OnSubscribe applies MaxTopicLength and MaxTopicLevels to SUBSCRIBE filters as to PUBLISH topics
// (a shared subscription's levels are counted without its $share/NAME/ prefix).
func (h *hook) OnSubscribe(cl *mochi.Client, pk packets.Packet) packets.Packet {
	lim := &h.s.opts.Limits
	for i, sub := range pk.Filters {
		filter := sub.Filter
		if strings.HasPrefix(filter, "$share/") {
			if parts := strings.SplitN(filter, "/", 3); len(parts) == 3 {
				filter = parts[2]
			}
		}
		if len(sub.Filter) > lim.MaxTopicLength || strings.Count(filter, "/")+1 > lim.MaxTopicLevels {
			pk.Filters[i].Filter = invalidFilter
		}
	}
	return pk
}

// OnPacketRead enforces topic limits and the publish rate, and counts inbound messages.
func (h *hook) OnPacketRead(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if c := connOf(cl); c != nil {
		c.parsed.Add(int64(packetSize(pk.FixedHeader.Remaining)))
	}
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	if pk.FixedHeader.Qos == 2 && h.resentQoS2(cl, &pk) {
		return pk, nil
	}
	c := connOf(cl)
	lim := &h.s.opts.Limits
	if len(pk.TopicName) > lim.MaxTopicLength || strings.Count(pk.TopicName, "/")+1 > lim.MaxTopicLevels {
		// Only ErrRejectPacket makes mochi drop the packet (other hook errors are ignored); the
		// read loop then ends and the connection is closed.
		return pk, fmt.Errorf("%w: %w", packets.ErrRejectPacket, h.disconnect(cl, packets.ErrTopicNameInvalid))
	}
	if lim.PublishRate > 0 && c != nil {
		now := time.Now()
		if c.lastFill.IsZero() {
			c.tokens, c.lastFill = float64(lim.PublishBurst), now
		}
		c.tokens = min(float64(lim.PublishBurst), c.tokens+now.Sub(c.lastFill).Seconds()*lim.PublishRate)
		c.lastFill = now
		if c.tokens < 1 {
			// Over the rate: delay this client's reads until a token is due. TCP flow control
			// then slows the publisher; nothing is lost and no one else waits.
			wait := time.Duration((1 - c.tokens) / lim.PublishRate * float64(time.Second))
			h.s.metrics.rateLimit()
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-h.s.stopping:
				t.Stop()
			}
			c.tokens, c.lastFill = 1, time.Now()
		}
		c.tokens--
	}
	h.s.metrics.in(pk.FixedHeader.Qos, len(pk.Payload))
	return pk, nil
}

// dupTopic is where a resent QoS 2 PUBLISH is sent after resentQoS2 answered it: mochi drops a
// client's PUBLISH to a $SYS topic without an ack, a hook call or delivery.
const dupTopic = "$SYS/sluice/duplicate"

// resentQoS2 answers a QoS 2 PUBLISH whose packet identifier is still waiting for its PUBREL (the
// client resent it because our PUBREC was lost): PUBREC success again, and no second delivery
// [MQTT-4.3.3-10]. mochi v2.7.9 answers such a resend with PUBREC 0x91 (packet identifier in use),
// which paho and other MQTT 5 clients take as a failure of a message the broker has. The packet is
// then made harmless for mochi (see dupTopic) rather than rejected, which would close the
// connection. It is not counted as a received message. The original's PUBREC state is unchanged:
// PUBREL completes it as usual.
func (h *hook) resentQoS2(cl *mochi.Client, pk *packets.Packet) bool {
	if pk.PacketID == 0 {
		return false
	}
	in, ok := cl.State.Inflight.Get(pk.PacketID)
	if !ok || in.FixedHeader.Type != packets.Pubrec {
		return false
	}
	_ = cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: pk.PacketID})
	pk.TopicName = dupTopic
	pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false
	pk.FixedHeader.Retain = false
	return true
}

// disconnect sends MQTT 5 clients a DISCONNECT with code and returns the code as the error that
// ends the connection.
func (h *hook) disconnect(cl *mochi.Client, code packets.Code) error {
	if cl.Properties.ProtocolVersion >= 5 {
		_ = h.s.mochi.DisconnectClient(cl, code)
	}
	return code
}

// OnPacketSent counts outbound messages and wakes publishers held by backpressure.
func (h *hook) OnPacketSent(cl *mochi.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Publish {
		return
	}
	h.s.metrics.out(pk.FixedHeader.Qos, len(pk.Payload))
	if c := connOf(cl); c != nil {
		c.notifySent()
	}
}

// window is the number of unacked QoS 1/2 messages at which backpressure holds publishers to cl:
// its Receive Maximum, but at most 3/4 of MaxInflight so that publishes already being routed when
// the window fills do not hit mochi's in-flight limit (where they would be dropped).
func (h *hook) window(cl *mochi.Client) int {
	limit := max(1, int(h.s.opts.Limits.MaxInflight)*3/4)
	w := int(cl.Properties.Props.ReceiveMaximum)
	if w == 0 || w > limit {
		w = limit
	}
	return w
}

// OnQosPublish moves a message set into a client being taken over to its successor (see
// takeover) and marks a connected subscriber whose in-flight window is full as saturated
// (backpressure policy).
func (h *hook) OnQosPublish(cl *mochi.Client, pk packets.Packet, _ int64, _ int) {
	if h.catchPublished(cl, pk) {
		return
	}
	if h.s.opts.Slow.Policy != PolicyBackpressure || pk.FixedHeader.Type != packets.Publish {
		return
	}
	if c := connOf(cl); c != nil && !cl.Closed() && cl.State.Inflight.Len() >= h.window(cl) {
		if c.saturated.CompareAndSwap(false, true) {
			h.s.satCount.Add(1)
		}
	}
}

// OnQosComplete clears saturation once the window is half empty.
func (h *hook) OnQosComplete(cl *mochi.Client, _ packets.Packet) {
	if c := connOf(cl); c != nil && c.saturated.Load() && cl.State.Inflight.Len() < h.window(cl)/2 {
		h.unsaturate(c)
	}
}

func (h *hook) unsaturate(c *conn) {
	if c.saturated.CompareAndSwap(true, false) {
		h.s.satCount.Add(-1)
		h.s.satMu.Lock()
		close(h.s.satCh)
		h.s.satCh = make(chan struct{})
		h.s.satMu.Unlock()
	}
}

// OnDisconnect clears saturation of a departing client and forgets its takeover.
func (h *hook) OnDisconnect(cl *mochi.Client, _ error, _ bool) {
	if c := connOf(cl); c != nil {
		h.unsaturate(c)
	}
	h.endTakeover(cl)
}

// OnPublish holds a publisher, under the backpressure policy, while a connected subscriber of the
// topic has a full in-flight window: its reader goroutine waits before mochi acks and routes the
// message, so the publisher's own window fills and it slows to the subscriber's pace. A subscriber
// saturated for DisconnectAfter is disconnected (see dropSlow) and the publisher goes on.
func (h *hook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	s := h.s
	if s.opts.Slow.Policy != PolicyBackpressure || s.satCount.Load() == 0 {
		return pk, nil
	}
	deadline := time.Now().Add(s.opts.Slow.DisconnectAfter)
	for s.satCount.Load() > 0 {
		var stuck *mochi.Client
		for id := range s.mochi.Topics.Subscribers(pk.TopicName).Subscriptions {
			if id == cl.ID {
				continue
			}
			if sc, ok := s.mochi.Clients.Get(id); ok {
				if c := connOf(sc); c != nil && c.saturated.Load() && !sc.Closed() {
					stuck = sc
					break
				}
			}
		}
		if stuck == nil {
			return pk, nil
		}
		if time.Now().After(deadline) {
			if c := connOf(stuck); c != nil {
				h.unsaturate(c)
				h.dropSlow(stuck, c)
			}
			return pk, nil
		}
		if c := connOf(cl); c != nil {
			c.beforeWait()
		}
		s.satMu.Lock()
		ch := s.satCh
		s.satMu.Unlock()
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ch:
		case <-t.C:
		case <-s.stopping:
			t.Stop()
			return pk, nil
		}
		t.Stop()
	}
	return pk, nil
}

// OnPacketEncode
//   - drops the user properties mochi copies from SUBSCRIBE/UNSUBSCRIBE into their acks, unless
//     EchoUserProperties (PUBACK/PUBREC/... are handled by mochi's NoInheritedPropertiesOnAck);
//   - tells MQTT 5 clients in CONNACK the limits mochi enforces but does not announce: Maximum
//     Packet Size and Topic Alias Maximum;
//   - keeps user properties on PUBLISH, CONNACK and DISCONNECT for clients that set Request Problem
//     Information to 0 (paho.golang's default): mochi strips them from every packet, but
//     [MQTT-3.1.2-29] only forbids them on the other packets, and a PUBLISH's user properties are
//     the application's data.
func (h *hook) OnPacketEncode(cl *mochi.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Publish, packets.Disconnect:
		pk.Mods.DisallowProblemInfo = false
	case packets.Suback, packets.Unsuback:
		if !h.s.opts.EchoUserProperties {
			pk.Properties.User = nil // mochi echoes the SUBSCRIBE's user properties
		}
	case packets.Connack:
		pk.Mods.DisallowProblemInfo = false
		if pk.ReasonCode < 0x80 {
			pk.Properties.MaximumPacketSize = h.s.opts.Limits.MaxPacketSize
			pk.Properties.TopicAliasMaximum = h.s.mochi.Options.Capabilities.TopicAliasMaximum
		}
	}
	return pk
}

// OnQosDropped counts in-flight messages mochi gave up on, and keeps those dropped from a client
// being taken over (see takeover).
func (h *hook) OnQosDropped(cl *mochi.Client, pk packets.Packet) {
	if _, ok := h.s.byOld.Load(cl); ok {
		h.catchDropped(cl, pk)
		return
	}
	h.s.metrics.drop(dropQoSExpired)
}

// OnPublishDropped runs on the publisher's goroutine when a subscriber's outbound queue is full
// (mochi has already acked the publisher). Policy:
//   - QoS 0 is dropped and counted.
//   - QoS 1/2 is kept in the subscriber's session (in-flight store, persisted with a persistent
//     session) and redelivered when the client reconnects; counted as slow_subscriber_deferred.
//     It is dropped (and counted) only if the in-flight store is full (MaxInflight).
//   - "backpressure" first holds the publisher until the subscriber's writer makes progress
//     (bounded), which slows publishers to the pace of the slowest subscriber.
//   - "disconnect" and "backpressure" disconnect a subscriber whose queue stays full for
//     DisconnectAfter (its socket is closed, see dropSlow); a persistent session keeps its parked
//     messages.
func (h *hook) OnPublishDropped(cl *mochi.Client, pk packets.Packet) {
	s := h.s
	c := connOf(cl)
	policy := s.opts.Slow.Policy
	if c != nil && policy == PolicyBackpressure {
		c.waiters.Add(1)
		ch := c.sentSignal()
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ch:
		case <-t.C:
		case <-s.stopping:
		}
		t.Stop()
		c.waiters.Add(-1)
	}

	qos := h.subscriptionQoS(cl, pk)
	if qos == 0 {
		s.metrics.drop(dropSlowQoS0)
		s.logDrop(cl, pk, dropSlowQoS0)
	} else if h.park(cl, pk, qos) {
		s.metrics.drop(dropDeferred)
	} else {
		s.metrics.drop(dropInflightFull)
		s.logDrop(cl, pk, dropInflightFull)
	}

	if c == nil || policy == PolicyDrop {
		return
	}
	now := time.Now().UnixNano()
	last := c.lastDrop.Swap(now)
	gap := int64(s.opts.Slow.DisconnectAfter / 10)
	if last == 0 || now-last > max(gap, int64(time.Second)) {
		c.fullSince.Store(now) // a new episode of a full queue
		return
	}
	if since := c.fullSince.Load(); since != 0 && now-since >= int64(s.opts.Slow.DisconnectAfter) {
		c.fullSince.Store(0)
		h.dropSlow(cl, c)
	}
}

// dropSlow disconnects a subscriber that stayed full too long. Its socket is full, so no
// DISCONNECT can be written (mochi would block the caller writing one): the connection is closed
// and the session ends with cause 0x97 quota exceeded (in logs and hooks); a persistent session
// keeps its messages.
func (h *hook) dropSlow(cl *mochi.Client, c *conn) {
	h.s.metrics.slowDisconnect()
	h.s.log.Warn().Str("client", cl.ID).Msg("slow subscriber disconnected")
	c.abort()
	cl.Stop(packets.ErrQuotaExceeded)
}

// subscriptionQoS is the QoS the message would have been delivered to cl with.
func (h *hook) subscriptionQoS(cl *mochi.Client, pk packets.Packet) byte {
	if pk.FixedHeader.Qos == 0 {
		return 0
	}
	var best byte
	for filter, sub := range cl.State.Subscriptions.GetAll() {
		if strings.HasPrefix(filter, "$share/") {
			if parts := strings.SplitN(filter, "/", 3); len(parts) == 3 {
				filter = parts[2]
			}
		}
		if covers(strings.Split(filter, "/"), pk.TopicName) && sub.Qos > best {
			best = sub.Qos
		}
	}
	return min(best, pk.FixedHeader.Qos)
}

// park stores a QoS 1/2 message in cl's in-flight store, from which mochi resends it when the
// client reconnects (and, for a persistent session, after a restart).
func (h *hook) park(cl *mochi.Client, pk packets.Packet, qos byte) bool {
	if cl.State.Inflight.Len() >= int(h.s.opts.Limits.MaxInflight) {
		return false
	}
	id, err := cl.NextPacketID()
	if err != nil {
		return false
	}
	out := pk.Copy(false)
	out.FixedHeader.Qos = qos
	out.FixedHeader.Retain = false
	out.PacketID = uint16(id)
	if !cl.State.Inflight.Set(out) {
		return false
	}
	if h.s.storage != nil {
		h.s.storage.OnQosPublish(cl, out, out.Created, 0)
	}
	return true
}
