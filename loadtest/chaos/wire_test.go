package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/sluicemq/sluice/devices"
)

// A minimal MQTT encoder for raw sockets: the hostile and stuck clients need to write exactly the
// bytes they choose (invalid UTF-8, wrong lengths) and to stop reading, which no client library does.

// MQTT packet types (the high nibble of the first byte).
const (
	pktConnect    = 1
	pktConnack    = 2
	pktPublish    = 3
	pktPuback     = 4
	pktSubscribe  = 8
	pktSuback     = 9
	pktDisconnect = 14
)

func appendVBI(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

func appendStr(b []byte, s string) []byte {
	b = append(b, byte(len(s)>>8), byte(len(s)))
	return append(b, s...)
}

// frame prefixes body with the fixed header.
func frame(first byte, body []byte) []byte {
	b := appendVBI([]byte{first}, len(body))
	return append(b, body...)
}

// encConnect is a CONNECT with clean start, no credentials.
func encConnect(id string, v5 bool, keepAlive uint16) []byte {
	var b []byte
	b = appendStr(b, "MQTT")
	if v5 {
		b = append(b, 5)
	} else {
		b = append(b, 4)
	}
	b = append(b, 0x02, byte(keepAlive>>8), byte(keepAlive)) // clean start
	if v5 {
		b = append(b, 0) // no properties
	}
	b = appendStr(b, id)
	return frame(pktConnect<<4, b)
}

// encSubscribe subscribes to filters at qos.
func encSubscribe(pid uint16, v5 bool, qos byte, filters ...string) []byte {
	b := []byte{byte(pid >> 8), byte(pid)}
	if v5 {
		b = append(b, 0)
	}
	for _, f := range filters {
		b = appendStr(b, f)
		b = append(b, qos)
	}
	return frame(pktSubscribe<<4|0x02, b)
}

// encPublish is a PUBLISH (pid is ignored at QoS 0).
func encPublish(v5 bool, topic string, qos byte, pid uint16, payload []byte) []byte {
	b := appendStr(nil, topic)
	if qos > 0 {
		b = append(b, byte(pid>>8), byte(pid))
	}
	if v5 {
		b = append(b, 0)
	}
	b = append(b, payload...)
	return frame(pktPublish<<4|qos<<1, b)
}

// readPacket reads one packet: its first byte and its body.
func readPacket(r *bufio.Reader) (byte, []byte, error) {
	first, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		d, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(d&0x7f) * mul
		mul *= 128
		if d&0x80 == 0 {
			break
		}
		if i == 3 {
			return 0, nil, errors.New("malformed remaining length")
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return first, body, nil
}

// rawClient is an MQTT connection on a bare socket.
type rawClient struct {
	net.Conn
	r  *bufio.Reader
	v5 bool
}

// dialRaw connects, sends CONNECT and waits for a successful CONNACK. readBuf > 0 shrinks the
// socket's receive buffer (set before connecting, so that a stuck reader fills up quickly).
func dialRaw(addr, id string, v5 bool, keepAlive uint16, readBuf int) (*rawClient, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if readBuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, readBuf)
			})
			return errors.Join(err, serr)
		}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &rawClient{Conn: conn, r: bufio.NewReaderSize(conn, 64<<10), v5: v5}
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := conn.Write(encConnect(id, v5, keepAlive)); err != nil {
		conn.Close()
		return nil, err
	}
	first, body, err := readPacket(c.r)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read CONNACK: %w", err)
	}
	if first>>4 != pktConnack || len(body) < 2 || body[1] != 0 {
		conn.Close()
		return nil, fmt.Errorf("CONNECT refused: packet %#x %x", first, body)
	}
	_ = conn.SetDeadline(time.Time{})
	return c, nil
}

// subscribe sends SUBSCRIBE and waits for its SUBACK, returning the reason codes.
func (c *rawClient) subscribe(pid uint16, qos byte, filters ...string) ([]byte, error) {
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(encSubscribe(pid, c.v5, qos, filters...)); err != nil {
		return nil, err
	}
	for {
		first, body, err := readPacket(c.r)
		if err != nil {
			return nil, fmt.Errorf("read SUBACK: %w", err)
		}
		if first>>4 != pktSuback {
			continue // a publish on an earlier subscription
		}
		body = body[2:]
		if c.v5 && len(body) > 0 { // skip the properties
			n, l := 0, 0
			for i, d := range body {
				n |= int(d&0x7f) << (7 * i)
				if d&0x80 == 0 {
					l = i + 1
					break
				}
			}
			body = body[l+n:]
		}
		return body, nil
	}
}

// closedWithin reports whether the peer closes conn (read returns EOF or a reset, not a timeout)
// within d, discarding whatever arrives meanwhile.
func closedWithin(conn net.Conn, d time.Duration) bool {
	_ = conn.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 4096)
	for {
		_, err := conn.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
}

// dialDevice connects a devices.Client (MQTT 5 unless proto says otherwise).
func dialDevice(ctx context.Context, addr string, o devices.ClientOptions) (*devices.Client, error) {
	u, err := devices.ParseBroker("tcp://" + addr)
	if err != nil {
		return nil, err
	}
	o.Broker = u
	return devices.Dial(ctx, o)
}

// mustDevice is dialDevice that fails the test, and closes the client at cleanup.
func mustDevice(t testing.TB, addr string, o devices.ClientOptions) *devices.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := dialDevice(ctx, addr, o)
	if err != nil {
		t.Fatalf("connect %s: %v", o.ClientID, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
