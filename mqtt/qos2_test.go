package mqtt

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/sluicemq/sluice/mqtt/mqtttest"
)

// qos2Publish encodes a QoS 2 PUBLISH (MQTT 3.1.1 or 5) with the given packet id and DUP flag.
func qos2Publish(version byte, topic string, id uint16, dup bool, payload string) []byte {
	var b bytes.Buffer
	b.Write(binary.BigEndian.AppendUint16(nil, uint16(len(topic))))
	b.WriteString(topic)
	b.Write(binary.BigEndian.AppendUint16(nil, id))
	if version == 5 {
		b.WriteByte(0)
	}
	b.WriteString(payload)
	h := byte(0x34)
	if dup {
		h |= 0x08
	}
	return append(mqtttest.AppendHeader(nil, h, b.Len()), b.Bytes()...)
}

// readRaw reads one packet: its type and body.
func readRaw(r *bufio.Reader) (byte, []byte, error) {
	first, body, err := mqtttest.ReadPacket(r)
	return first >> 4, body, err
}

// TestQoS2Resend: a QoS 2 PUBLISH resent (DUP=1, or even without DUP) before PUBREL is answered
// with PUBREC success again, not 0x91, and delivered once [MQTT-4.3.3-10]; after PUBCOMP the
// packet id is free and a publish with it is a new message.
func TestQoS2Resend(t *testing.T) {
	for _, version := range []byte{4, 5} {
		t.Run(fmt.Sprintf("version=%d", version), func(t *testing.T) {
			srv := startServer(t, Options{})
			addr := srv.Addr("tcp").String()
			sub := mustV5(t, addr, v5opts{id: "sub"})
			sub.sub(t, "q2/#", 2)
			nc := rawConnect(t, addr, version, "pub")
			_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(nc)
			send := func(b []byte) {
				t.Helper()
				if _, err := nc.Write(b); err != nil {
					t.Fatal(err)
				}
			}
			expect := func(typ byte, id uint16) {
				t.Helper()
				got, body, err := readRaw(br)
				if err != nil {
					t.Fatalf("waiting for packet type %d: %v", typ, err)
				}
				if got != typ || len(body) < 2 || binary.BigEndian.Uint16(body) != id {
					t.Fatalf("got type %d body %x, want type %d for id %d", got, body, typ, id)
				}
				if len(body) > 2 && body[2] != 0 {
					t.Fatalf("packet type %d for id %d: reason %#x, want success", typ, id, body[2])
				}
			}
			send(qos2Publish(version, "q2/a", 7, false, "once"))
			expect(5, 7) // PUBREC
			send(qos2Publish(version, "q2/a", 7, true, "once"))
			expect(5, 7) // PUBREC success again
			send(qos2Publish(version, "q2/a", 7, false, "once"))
			expect(5, 7)
			send([]byte{0x62, 2, 0, 7}) // PUBREL
			expect(7, 7)                // PUBCOMP
			send(qos2Publish(version, "q2/a", 7, false, "next"))
			expect(5, 7)
			send([]byte{0x62, 2, 0, 7})
			expect(7, 7)
			for _, want := range []string{"once", "next"} {
				if p := sub.next(t, 5*time.Second); string(p.Payload) != want {
					t.Fatalf("subscriber got %q, want %q (a resend was delivered again)", p.Payload, want)
				}
			}
			// The connection is still up and still the same session.
			send([]byte{0xc0, 0})
			if typ, _, err := readRaw(br); err != nil || typ != 13 {
				t.Fatalf("PINGRESP: type %d %v", typ, err)
			}
		})
	}
}
