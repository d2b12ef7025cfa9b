package mqtt

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/sluicemq/sluice/mqtt/mqtttest"
)

// gateHook gates the PUBACK of every QoS 1 publish to a topic under gated/ and hands the gate to
// the test.
type gateHook struct {
	mochi.HookBase
	srv   *Server
	gates chan *AckGate
}

func (h *gateHook) ID() string           { return "gate" }
func (h *gateHook) Provides(b byte) bool { return b == mochi.OnPublish }

func (h *gateHook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Qos == 1 && bytes.HasPrefix([]byte(pk.TopicName), []byte("gated/")) {
		g := h.srv.GateAck(cl, pk.PacketID)
		if g == nil {
			return pk, fmt.Errorf("no gate for %s", cl.ID)
		}
		h.gates <- g
	}
	return pk, nil
}

// qos1Publish encodes a QoS 1 PUBLISH with packet id id.
func qos1Publish(version byte, topic string, id uint16) []byte {
	b := []byte{byte(len(topic) >> 8), byte(len(topic))}
	b = append(b, topic...)
	b = append(b, byte(id>>8), byte(id))
	if version == 5 {
		b = append(b, 0)
	}
	b = append(b, 'x')
	return append(mqtttest.AppendHeader(nil, 0x32, len(b)), b...)
}

// TestAckGate: gated PUBACKs leave only once opened, in the order of the publishes, with the
// acks of ungated publishes and ACL denials waiting behind them, while other packets (PINGRESP,
// deliveries) pass. A failure code becomes a PUBACK with that code for MQTT 5 and no PUBACK at
// all for 3.1.1.
func TestAckGate(t *testing.T) {
	h := &gateHook{gates: make(chan *AckGate, 16)}
	srv := startServerWith(t, Options{ACL: []ACLRule{{Publish: []string{"gated/#", "plain/#"}, Subscribe: []string{"#"}}}},
		func(s *Server) {
			h.srv = s
			if err := s.AddHook(h, nil); err != nil {
				t.Fatal(err)
			}
		})
	if g := srv.GateAck(nil, 1); g != nil {
		t.Fatal("GateAck(nil) gave a gate")
	}
	for _, version := range []byte{5, 4} {
		t.Run(fmt.Sprintf("v%d", version), func(t *testing.T) {
			nc := rawConnect(t, srv.Addr("tcp").String(), version, fmt.Sprintf("gw%d", version))
			br := bufio.NewReader(nc)
			// A subscription of its own: deliveries to it pass the gates.
			sub := []byte{0, 1}
			if version == 5 {
				sub = append(sub, 0)
			}
			sub = append(append(sub, 0, 7), "plain/#"...)
			if _, err := nc.Write(append(append(mqtttest.AppendHeader(nil, 0x82, len(sub)+1), sub...), 0)); err != nil {
				t.Fatal(err)
			}
			expect(t, nc, br, packets.Suback, 1)
			var burst []byte
			burst = append(burst, qos1Publish(version, "gated/a", 2)...)
			burst = append(burst, qos1Publish(version, "gated/b", 3)...)
			burst = append(burst, qos1Publish(version, "plain/c", 4)...) // not gated, delivered back
			burst = append(burst, qos1Publish(version, "gated/d", 5)...)
			if version == 5 {
				burst = append(burst, qos1Publish(version, "denied/e", 6)...) // 0x87
			}
			burst = append(burst, 0xc0, 0) // PINGREQ
			if _, err := nc.Write(burst); err != nil {
				t.Fatal(err)
			}
			g2, g3, g5 := <-h.gates, <-h.gates, <-h.gates
			// The delivery of plain/c and the PINGRESP pass (in either order: mochi delivers from
			// another goroutine); no PUBACK does.
			got := map[byte]bool{}
			for range 2 {
				_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
				first, body, err := mqtttest.ReadPacket(br)
				if err != nil || (first>>4 != packets.Publish && first>>4 != packets.Pingresp) || got[first>>4] {
					t.Fatalf("packet type %d (%x, %v), want the delivery and the PINGRESP", first>>4, body, err)
				}
				got[first>>4] = true
			}
			srv.OpenAcks([]*AckGate{g3, g5}, []byte{0, 0}) // not the first: still nothing
			if _, err := nc.Write([]byte{0xc0, 0}); err != nil {
				t.Fatal(err)
			}
			expect(t, nc, br, packets.Pingresp, 0)
			srv.OpenAcks([]*AckGate{g2}, []byte{0x97})
			if version == 5 {
				expectAck(t, nc, br, 2, 0x97)
			} // 3.1.1: no ack for 2
			expectAck(t, nc, br, 3, 0)
			expectAck(t, nc, br, 4, 0)
			expectAck(t, nc, br, 5, 0)
			if version == 5 {
				expectAck(t, nc, br, 6, 0x87)
			}
			// Nothing pending: acks go out at once again.
			if _, err := nc.Write(qos1Publish(version, "plain/f", 7)); err != nil {
				t.Fatal(err)
			}
			expectAck(t, nc, br, 7, 0)
		})
	}
}

// expect reads the next packet from nc and checks its type (and, for a SUBACK, its packet id).
func expect(t *testing.T, nc net.Conn, br *bufio.Reader, typ byte, id uint16) []byte {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	first, body, err := mqtttest.ReadPacket(br)
	if err != nil {
		t.Fatalf("want packet type %d: %v", typ, err)
	}
	if first>>4 != typ {
		t.Fatalf("packet type %d (%x), want %d", first>>4, body, typ)
	}
	if id != 0 && (len(body) < 2 || uint16(body[0])<<8|uint16(body[1]) != id) {
		t.Fatalf("packet type %d body %x, want id %d", typ, body, id)
	}
	return body
}

// expectAck reads a PUBACK and checks its packet id and reason code.
func expectAck(t *testing.T, nc net.Conn, br *bufio.Reader, id uint16, code byte) {
	t.Helper()
	body := expect(t, nc, br, packets.Puback, id)
	var got byte
	if len(body) > 2 {
		got = body[2]
	}
	if got != code {
		t.Fatalf("PUBACK %d: reason %#x, want %#x", id, got, code)
	}
}

// TestAckGateClose: when the connection closes with a gate still shut, what was free to leave goes
// out, then a DISCONNECT written behind the gate; the shut gate's PUBACK and the acks behind it do
// not (their publishes were not acknowledged: the client resends them).
func TestAckGateClose(t *testing.T) {
	inner, peer := socketPair(t)
	c := newConn(inner, &Server{}, nil)
	cl := &mochi.Client{Net: mochi.ClientConnection{Conn: c}}
	cl.Properties.ProtocolVersion = 5
	srv := &Server{}
	if _, err := c.Write([]byte{0x20, 2, 0, 0}); err != nil { // CONNACK
		t.Fatal(err)
	}
	g1 := srv.GateAck(cl, 1)
	srv.GateAck(cl, 2) // stays shut
	// mochi's PUBACKs 1 to 3, then a DISCONNECT
	for _, p := range [][]byte{{0x40, 2, 0, 1}, {0x40, 2, 0, 2}, {0x40, 2, 0, 3}, {0xe0, 1, 0x8b}} {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	srv.OpenAcks([]*AckGate{g1}, []byte{0})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if g := srv.GateAck(cl, 4); g != nil {
		t.Fatal("GateAck on a closed connection gave a gate")
	}
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(peer)
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x20, 2, 0, 0, 0x40, 2, 0, 1, 0xe0, 1, 0x8b}; !bytes.Equal(got, want) {
		t.Fatalf("peer got % x, want % x", got, want)
	}
}
