package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluicemq/sluice/mqtt"
	"github.com/sluicemq/sluice/mqtt/mqtttest"
	"github.com/sluicemq/sluice/queue/client"
	"github.com/sluicemq/sluice/wal/waltest"
)

// TestPipelinedAcksThroughServe drives the wired broker (mqtt.Server + startQueues, which turns
// pipelined acks on because mqtt.Server has GateAck) from one MQTT 5 gateway connection with
// every publish in flight at once: bridged, ACL-denied and full-queue publishes interleaved. PUBACKs
// come back in PUBLISH order with 0x00, 0x87 (denied) and 0x97 (queue full); every PUBACKed
// bridged message is in its queue, in order; nothing denied or refused is.
func TestPipelinedAcksThroughServe(t *testing.T) {
	dir := t.TempDir()
	cfg := fmt.Sprintf(`log: {level: warn, format: json}
mqtt:
  listeners:
    - {name: tcp, type: tcp, address: "127.0.0.1:0", allow_anonymous: true}
  acl:
    - {publish: ["devices/%%c/#", "small/#"]}
http:
  address: "127.0.0.1:0"
  api_keys:
    - {name: e2e, key: %q, queues: {"*": [admin]}}
data_dir: %s
queues:
  declare:
    small: {max_messages: 3, overflow: reject}
bridge:
  rules:
    - {filter: "devices/+/telemetry", queue: telemetry}
    - {filter: "small/#", queue: small}
`, testAPIKey, filepath.Join(dir, "data"))
	a := startApp(t, writeText(t, dir, "sluice.yaml", cfg))

	nc, err := net.DialTimeout("tcp", a.MQTTAddr("tcp").String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	br, bw := bufio.NewReader(nc), bufio.NewWriter(nc)
	const id = "gw"
	// CONNECT v5: clean start, keep-alive 60, Receive Maximum is the server's to enforce (we send
	// at most its default of 256).
	vh := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0, 0, byte(len(id))}, id...)
	mqtttest.WritePacket(bw, 0x10, vh)
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	if typ, body, err := readMQTT(br); err != nil || typ != 2 || len(body) < 2 || body[1] != 0 {
		t.Fatalf("CONNACK: type %d body %v err %v", typ, body, err)
	}

	const n = 200
	type sent struct {
		queue string
		want  byte
	}
	plan := make([]sent, n)
	smalls := 0
	for i := range n {
		var topic string
		switch i % 10 {
		case 3:
			topic, plan[i] = "devices/other/telemetry", sent{"", 0x87}
		case 7:
			topic, plan[i] = "small/gw", sent{"small", 0}
			if smalls++; smalls > 3 {
				plan[i].want = 0x97
			}
		default:
			topic, plan[i] = "devices/gw/telemetry", sent{"telemetry", 0}
		}
		var pb []byte
		pb = binary.BigEndian.AppendUint16(pb, uint16(len(topic)))
		pb = append(pb, topic...)
		pb = binary.BigEndian.AppendUint16(pb, uint16(i+1))
		pb = append(pb, 0)
		pb = append(pb, strconv.Itoa(i)...)
		mqtttest.WritePacket(bw, 0x32, pb)
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{}
	for i := range n {
		typ, body, err := readMQTT(br)
		if err != nil {
			t.Fatalf("PUBACK %d: %v", i+1, err)
		}
		if typ != 4 || len(body) < 2 {
			t.Fatalf("packet %d: type %d, want PUBACK", i, typ)
		}
		if got := binary.BigEndian.Uint16(body); got != uint16(i+1) {
			t.Fatalf("PUBACK %d is for packet %d: out of order", i+1, got)
		}
		var code byte
		if len(body) > 2 {
			code = body[2]
		}
		if code != plan[i].want {
			t.Fatalf("PUBACK %d: reason %#x, want %#x", i+1, code, plan[i].want)
		}
		if code == 0 {
			want[plan[i].queue] = append(want[plan[i].queue], strconv.Itoa(i))
		}
	}
	api := apiClient(a.HTTPAddr().String())
	for _, q := range []string{"telemetry", "small"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		msgs, err := api.Receive(ctx, q, client.ReceiveOptions{Max: client.MaxReceive})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != len(want[q]) {
			t.Fatalf("%s holds %d, want the %d PUBACKed with success", q, len(msgs), len(want[q]))
		}
		for i, m := range msgs {
			if string(m.Payload) != want[q][i] {
				t.Fatalf("%s message %d is %q, want %s", q, i, m.Payload, want[q][i])
			}
		}
	}
}

func readMQTT(r *bufio.Reader) (typ byte, body []byte, err error) {
	first, body, err := mqtttest.ReadPacket(r)
	return first >> 4, body, err
}

// TestQueuesStartedLine: startQueues says in one line, under component=queues, that acks are
// pipelined (mqtt.Server gates PUBACKs).
func TestQueuesStartedLine(t *testing.T) {
	cfg, err := loadConfig(queuesConfig(t, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := mqtt.New(mqtt.Options{Listeners: []mqtt.Listener{{Name: "tcp", Type: "tcp", Address: "127.0.0.1:0"}}})
	if err != nil {
		t.Fatal(err)
	}
	var buf waltest.LogBuffer // the queues log from their goroutines too
	_, stop, err := startQueues(context.Background(), cfg, srv, nil, nil, zerolog.New(&buf))
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not JSON: %s", line)
		}
		if m["message"] == "queues started" {
			if m["component"] != "queues" || m["pipelined_acks"] != true {
				t.Fatalf("queues started line: %s", line)
			}
			return
		}
	}
	t.Fatalf("no queues started line in %s", buf.String())
}
