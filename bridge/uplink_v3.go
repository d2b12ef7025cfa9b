package bridge

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sync"

	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// v3Conn is an MQTT 3.1.1 connection on paho.mqtt.golang. Its Publish queues packets for one
// writer goroutine in call order, so publishes go out in the order given; a waiter goroutine
// collects the tokens in that order. MQTT 3.1.1 has no reason codes: a PUBACK is success.
type v3Conn struct {
	cl      paho3.Client
	tokens  chan v3Pending
	results chan<- upResult
	upLost
	wg sync.WaitGroup
}

type v3Pending struct {
	seq uint64
	tok paho3.Token
}

// v3Window bounds the publishes in flight on a 3.1.1 connection (the protocol has no Receive Maximum).
const v3Window = 1024

func connectV3(ctx context.Context, p upParams) (*v3Conn, error) {
	c := &v3Conn{tokens: make(chan v3Pending, v3Window+1), results: p.results, upLost: newUpLost()}
	target := p.url
	o := paho3.NewClientOptions().
		AddBroker("tcp://" + p.url.Host).
		SetClientID(p.clientID).
		SetUsername(p.username).
		SetPassword(p.password).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(p.keepAlive).
		SetPingTimeout(p.timeout).
		SetConnectTimeout(p.timeout).
		SetWriteTimeout(p.timeout).
		SetOrderMatters(true).
		SetAutoAckDisabled(true).
		SetProtocolVersion(4).
		SetCustomOpenConnectionFn(func(*url.URL, paho3.ClientOptions) (net.Conn, error) {
			return upDial(ctx, target, p.tls)
		}).
		SetConnectionLostHandler(func(_ paho3.Client, err error) { c.fail(fmt.Errorf("connection lost: %w", err)) })
	c.cl = paho3.NewClient(o)
	tok := c.cl.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		c.cl.Disconnect(0)
		return nil, &ConnectError{URL: upRedactURL(p.url), Err: ctx.Err()}
	}
	if err := tok.Error(); err != nil {
		return nil, &ConnectError{URL: upRedactURL(p.url), Err: err}
	}
	for _, f := range p.subscribe {
		onMessage, gone := p.onMessage, c.upLost.ch
		st := c.cl.Subscribe(f, p.subQoS, func(_ paho3.Client, m paho3.Message) {
			im := upIn{topic: m.Topic(), qos: m.Qos(), retain: m.Retained(), payload: m.Payload()}
			if m.Qos() > 0 {
				im.ack = m.Ack
			}
			onMessage(im, gone)
		})
		if !st.WaitTimeout(p.timeout) || st.Error() != nil {
			c.cl.Disconnect(0)
			err := st.Error()
			if err == nil {
				err = fmt.Errorf("no SUBACK within %v", p.timeout)
			}
			return nil, &ConnectError{URL: upRedactURL(p.url), Err: fmt.Errorf("subscribe to %q: %w", f, err)}
		}
		if codes := st.(*paho3.SubscribeToken).Result(); codes[f] >= 0x80 {
			c.cl.Disconnect(0)
			return nil, &ConnectError{URL: upRedactURL(p.url), Err: fmt.Errorf("subscription to %q refused", f)}
		}
	}
	c.wg.Add(1)
	go c.wait()
	return c, nil
}

// wait reports the tokens' outcomes in publish order. A token that fails means the connection is
// unusable: the message stays with the drain loop, which publishes it again on the next connection.
func (c *v3Conn) wait() {
	defer c.wg.Done()
	for pd := range c.tokens {
		select {
		case <-pd.tok.Done():
		case <-c.upLost.ch:
			<-pd.tok.Done() // paho completes every token when the connection ends (clean session)
		}
		if err := pd.tok.Error(); err != nil {
			c.fail(fmt.Errorf("publish: %w", err)) // the drain loop then closes the connection
			continue
		}
		c.results <- upResult{seq: pd.seq}
	}
}

func (c *v3Conn) publish(m *upOut) error {
	select {
	case <-c.upLost.ch:
		return c.cause()
	default:
	}
	tok := c.cl.Publish(m.topic, m.qos, m.retain, m.payload)
	c.tokens <- v3Pending{seq: m.seq, tok: tok}
	return nil
}

func (c *v3Conn) flush() error { return nil }
func (c *v3Conn) window() int  { return v3Window }
func (c *v3Conn) maxQoS() byte { return 2 }

func (c *v3Conn) close() {
	quiesce := uint(250)
	select {
	case <-c.upLost.ch:
		quiesce = 0
	default:
	}
	c.fail(errUpClosed) // first: a downlink handler blocked on a full buffer gives up
	c.cl.Disconnect(quiesce)
	close(c.tokens)
	c.wg.Wait()
}
