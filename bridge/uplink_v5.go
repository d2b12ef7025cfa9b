package bridge

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/sluicemq/sluice/queue"
)

// v5Conn is a minimal MQTT 5 client connection built on paho.golang's packet codec. It exists
// because paho.golang's Client cannot pipeline publishes in a guaranteed order and report each
// one's reason code: here publishes are written in the order they are given, any number in flight
// (up to the upstream's Receive Maximum), and each PUBACK/PUBCOMP goes to the results channel.
type v5Conn struct {
	p       upParams
	conn    net.Conn
	w       upWriteBuffer
	br      *bufio.Reader
	recvMax int
	qosMax  byte
	maxPkt  uint32

	mu     sync.Mutex
	ids    map[uint16]uint64 // packet id → seq of publishes in flight
	nextID uint16
	subID  uint16 // packet id of our SUBSCRIBE

	upLost
	stop chan struct{}
	wg   sync.WaitGroup
}

func handshakeV5(ctx context.Context, nc net.Conn, p upParams) (*v5Conn, error) {
	c := &v5Conn{
		p:      p,
		conn:   nc,
		w:      upWriteBuffer{conn: nc, bw: bufio.NewWriterSize(nc, 32<<10), timeout: p.timeout},
		br:     bufio.NewReaderSize(nc, 32<<10),
		ids:    make(map[uint16]uint64),
		upLost: newUpLost(),
		stop:   make(chan struct{}),
	}
	cp := packets.NewControlPacket(packets.CONNECT)
	conn := cp.Content.(*packets.Connect)
	conn.ClientID = p.clientID
	conn.CleanStart = true
	conn.KeepAlive = uint16(p.keepAlive / time.Second)
	if p.username != "" {
		conn.UsernameFlag, conn.Username = true, p.username
	}
	if p.password != "" {
		conn.PasswordFlag, conn.Password = true, []byte(p.password)
	}
	in := p.inflightIn
	if in == 0 {
		in = 64
	}
	conn.Properties.ReceiveMaximum = &in
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	stopWatch := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Now()) })
	defer stopWatch()
	if _, err := cp.WriteTo(c.w.bw); err != nil {
		return nil, &ConnectError{URL: upRedactURL(p.url), Err: err}
	}
	if err := c.w.bw.Flush(); err != nil {
		return nil, &ConnectError{URL: upRedactURL(p.url), Err: err}
	}
	resp, err := packets.ReadPacket(c.br)
	if err != nil {
		return nil, &ConnectError{URL: upRedactURL(p.url), Err: fmt.Errorf("read CONNACK: %w", err)}
	}
	ack, ok := resp.Content.(*packets.Connack)
	if !ok {
		return nil, &ConnectError{URL: upRedactURL(p.url), Err: fmt.Errorf("got %s instead of CONNACK", resp.PacketType())}
	}
	if ack.ReasonCode >= 0x80 {
		reason := ack.Properties.ReasonString
		if reason == "" {
			reason = ack.Reason()
		}
		return nil, &ConnectError{URL: upRedactURL(p.url), Code: ack.ReasonCode, Reason: reason}
	}
	_ = nc.SetDeadline(time.Time{})
	c.recvMax, c.qosMax, c.maxPkt = 65535, 2, 0
	if ack.Properties != nil {
		if rm := ack.Properties.ReceiveMaximum; rm != nil && *rm > 0 {
			c.recvMax = int(*rm)
		}
		if mq := ack.Properties.MaximumQOS; mq != nil {
			c.qosMax = *mq
		}
		if mp := ack.Properties.MaximumPacketSize; mp != nil {
			c.maxPkt = *mp
		}
		if ka := ack.Properties.ServerKeepAlive; ka != nil {
			c.p.keepAlive = time.Duration(*ka) * time.Second
		}
	}
	if len(p.subscribe) > 0 {
		if err := c.subscribe(); err != nil {
			return nil, &ConnectError{URL: upRedactURL(p.url), Err: err}
		}
	}
	c.wg.Add(2)
	go c.readLoop()
	go c.pingLoop()
	return c, nil
}

func (c *v5Conn) subscribe() error {
	cp := packets.NewControlPacket(packets.SUBSCRIBE)
	s := cp.Content.(*packets.Subscribe)
	c.subID = 1
	s.PacketID = c.subID
	for _, f := range c.p.subscribe {
		s.Subscriptions = append(s.Subscriptions, packets.SubOptions{Topic: f, QoS: c.p.subQoS, NoLocal: true})
	}
	if _, err := cp.WriteTo(c.w.bw); err != nil {
		return err
	}
	if err := c.w.bw.Flush(); err != nil {
		return err
	}
	resp, err := packets.ReadPacket(c.br)
	if err != nil {
		return fmt.Errorf("read SUBACK: %w", err)
	}
	sa, ok := resp.Content.(*packets.Suback)
	if !ok {
		return fmt.Errorf("got %s instead of SUBACK", resp.PacketType())
	}
	for i, code := range sa.Reasons {
		if code >= 0x80 && i < len(c.p.subscribe) {
			return fmt.Errorf("subscription to %q refused with code 0x%02x", c.p.subscribe[i], code)
		}
	}
	return nil
}

func (c *v5Conn) window() int  { return c.recvMax }
func (c *v5Conn) maxQoS() byte { return c.qosMax }

func (c *v5Conn) publish(m *upOut) error {
	select {
	case <-c.upLost.ch:
		return c.cause()
	default:
	}
	cp := packets.NewControlPacket(packets.PUBLISH)
	pb := cp.Content.(*packets.Publish)
	pb.Topic, pb.QoS, pb.Retain, pb.Payload = m.topic, m.qos, m.retain, m.payload
	if pr := m.props; pr != nil {
		pb.Properties.ContentType = pr.ContentType
		pb.Properties.PayloadFormat = pr.PayloadFormat
		pb.Properties.CorrelationData = pr.CorrelationData
		pb.Properties.ResponseTopic = pr.ResponseTopic
		for _, u := range pr.UserProperties {
			pb.Properties.User = append(pb.Properties.User, packets.User{Key: u.Key, Value: u.Value})
		}
	}
	pb.Properties.MessageExpiry = m.expiry
	if c.maxPkt > 0 && upPublishSize(pb) > int(c.maxPkt) {
		// The upstream would disconnect us: answer it as the refusal it is (0x95 packet too large).
		c.p.results <- upResult{seq: m.seq, code: 0x95, reason: fmt.Sprintf("larger than the upstream's maximum packet size %d", c.maxPkt)}
		return nil
	}
	if m.qos > 0 {
		c.mu.Lock()
		for {
			c.nextID++
			if c.nextID == 0 || c.nextID == c.subID {
				continue
			}
			if _, used := c.ids[c.nextID]; !used {
				break
			}
		}
		pb.PacketID = c.nextID
		c.ids[c.nextID] = m.seq
		c.mu.Unlock()
	}
	c.w.mu.Lock()
	err := c.w.writeLocked(cp)
	c.w.mu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("write: %w", err))
		_ = c.conn.Close()
		return err
	}
	return nil
}

func (c *v5Conn) flush() error {
	c.w.mu.Lock()
	err := c.w.flushLocked()
	c.w.mu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("write: %w", err))
		_ = c.conn.Close()
	}
	return err
}

// send writes one control packet and flushes; used by the reader and pinger goroutines.
func (c *v5Conn) send(cp *packets.ControlPacket) {
	c.w.mu.Lock()
	err := c.w.writeLocked(cp)
	if err == nil {
		err = c.w.flushLocked()
	}
	c.w.mu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("write: %w", err))
		_ = c.conn.Close()
	}
}

// queue writes a control packet without flushing it (see flushQueued).
func (c *v5Conn) queue(cp *packets.ControlPacket) {
	c.w.mu.Lock()
	err := c.w.writeLocked(cp)
	if err == nil {
		c.w.dirty = true
	}
	c.w.mu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("write: %w", err))
		_ = c.conn.Close()
	}
}

// flushQueued flushes what queue wrote, if nothing else did; false when the connection failed.
func (c *v5Conn) flushQueued() bool {
	c.w.mu.Lock()
	var err error
	if c.w.dirty {
		err = c.w.flushLocked()
	}
	c.w.mu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("write: %w", err))
		_ = c.conn.Close()
		return false
	}
	return true
}

// done reports the answer to the publish with packet id id.
func (c *v5Conn) done(id uint16, code byte, reason string) {
	c.mu.Lock()
	seq, ok := c.ids[id]
	delete(c.ids, id)
	c.mu.Unlock()
	if ok {
		c.p.results <- upResult{seq: seq, code: code, reason: reason}
	}
}

func (c *v5Conn) readLoop() {
	defer c.wg.Done()
	defer close(c.stop)
	ka := c.p.keepAlive
	if ka <= 0 {
		ka = time.Minute
	}
	for {
		if c.br.Buffered() == 0 && !c.flushQueued() {
			return
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(ka * 3 / 2))
		cp, err := packets.ReadPacket(c.br)
		if err != nil {
			if upNetClosed(err) {
				err = errUpClosed
			}
			c.fail(fmt.Errorf("read: %w", err))
			_ = c.conn.Close()
			return
		}
		switch pk := cp.Content.(type) {
		case *packets.Puback:
			c.done(pk.PacketID, pk.ReasonCode, pk.Properties.ReasonString)
		case *packets.Pubrec:
			if pk.ReasonCode >= 0x80 {
				c.done(pk.PacketID, pk.ReasonCode, pk.Properties.ReasonString)
				continue
			}
			rel := packets.NewControlPacket(packets.PUBREL)
			rel.Content.(*packets.Pubrel).PacketID = pk.PacketID
			c.queue(rel) // flushed once the PUBRECs read so far are answered
		case *packets.Pubcomp:
			// A PUBCOMP's only failure code (0x92, packet id not found) still means the upstream
			// has the message: it was PUBREC'd before.
			c.done(pk.PacketID, 0, "")
		case *packets.Publish:
			c.inbound(pk)
		case *packets.Pubrel:
			comp := packets.NewControlPacket(packets.PUBCOMP)
			comp.Content.(*packets.Pubcomp).PacketID = pk.PacketID
			c.send(comp)
		case *packets.Disconnect:
			reason := pk.Properties.ReasonString
			if reason == "" {
				reason = pk.Reason()
			}
			c.fail(fmt.Errorf("upstream disconnected with code 0x%02x (%s)", pk.ReasonCode, reason))
			_ = c.conn.Close()
			return
		}
	}
}

// inbound hands a downlink message to onMessage with a function that acknowledges it.
func (c *v5Conn) inbound(pk *packets.Publish) {
	if c.p.onMessage == nil {
		return
	}
	m := upIn{topic: pk.Topic, qos: pk.QoS, retain: pk.Retain, payload: pk.Payload}
	if pr := pk.Properties; pr != nil {
		m.props = queue.Properties{ContentType: pr.ContentType, PayloadFormat: pr.PayloadFormat,
			CorrelationData: pr.CorrelationData, ResponseTopic: pr.ResponseTopic, MessageExpiry: pr.MessageExpiry}
		for _, u := range pr.User {
			m.props.UserProperties = append(m.props.UserProperties, queue.UserProperty{Key: u.Key, Value: u.Value})
		}
	}
	id := pk.PacketID
	switch pk.QoS {
	case 1:
		m.ack = func() {
			a := packets.NewControlPacket(packets.PUBACK)
			a.Content.(*packets.Puback).PacketID = id
			c.send(a)
		}
	case 2:
		m.ack = func() {
			a := packets.NewControlPacket(packets.PUBREC)
			a.Content.(*packets.Pubrec).PacketID = id
			c.send(a)
		}
	}
	c.p.onMessage(m, c.upLost.ch)
}

func (c *v5Conn) pingLoop() {
	defer c.wg.Done()
	ka := c.p.keepAlive
	if ka <= 0 {
		return
	}
	t := time.NewTicker(ka / 2)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.send(packets.NewControlPacket(packets.PINGREQ))
		}
	}
}

func (c *v5Conn) close() {
	select {
	case <-c.upLost.ch:
	default:
		d := packets.NewControlPacket(packets.DISCONNECT)
		c.w.mu.Lock()
		_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := d.WriteTo(c.w.bw); err == nil {
			_ = c.w.bw.Flush()
		}
		c.w.mu.Unlock()
		c.fail(errUpClosed)
	}
	_ = c.conn.Close()
	c.wg.Wait()
}

// upPublishSize is the size of pb on the wire (packet id included).
func upPublishSize(pb *packets.Publish) int {
	n := 0
	for _, b := range pb.Buffers() {
		n += len(b)
	}
	n += 2   // the packet id, not yet set
	switch { // fixed header: type byte and remaining length
	case n < 128:
		return n + 2
	case n < 16384:
		return n + 3
	case n < 2097152:
		return n + 4
	}
	return n + 5
}
