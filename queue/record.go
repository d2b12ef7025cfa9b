package queue

import (
	"encoding/binary"
	"time"
)

// Properties are the MQTT 5 properties of a message that travel with it.
type Properties struct {
	ContentType     string         `json:"content_type,omitempty"`
	PayloadFormat   *byte          `json:"payload_format,omitempty"`
	CorrelationData []byte         `json:"correlation_data,omitempty"`
	ResponseTopic   string         `json:"response_topic,omitempty"`
	UserProperties  []UserProperty `json:"user_properties,omitempty"`
	MessageExpiry   *uint32        `json:"message_expiry,omitempty"` // seconds
}

// UserProperty is one MQTT 5 user property.
type UserProperty struct{ Key, Value string }

// Message is what a producer enqueues.
type Message struct {
	Topic, ClientID, Username string
	QoS                       byte
	Retain                    bool
	ReceivedAt                time.Time // zero → now
	Properties                Properties
	Payload                   []byte
}

// Delivery is what a consumer receives.
type Delivery struct {
	ID         string // stable, unique, time-sortable id assigned at enqueue (kept across retries, DLQ and redrive)
	Receipt    string // opaque; belongs to this one delivery (lease)
	Attempt    int    // 1 for the first delivery
	EnqueuedAt time.Time
	Message
}

// DeadLetter is a message in a queue's dead-letter queue.
type DeadLetter struct {
	ID         string
	Attempts   int
	Reason     string
	DeadAt     time.Time
	EnqueuedAt time.Time
	Message
}

// Message record, version 1 (little endian; "uv" = unsigned varint length prefix):
//
//	0      version (1)
//	1      flags: 1 retain, 2 payload format present, 4 message expiry present, 8 dead letter
//	2..13  id (12 bytes, xid layout: time-sortable)
//	14..21 enqueued at, unix nanoseconds
//	22..29 received at, unix nanoseconds
//	30     qos
//	then   uv topic, uv client id, uv username, uv content type, uv response topic, uv correlation data,
//	       [payload format byte], [message expiry uint32], uv count of user properties, each uv key uv value,
//	       if dead letter: uv attempts, deadAt int64, uv reason,
//	       uv payload (must end the record)
//
// Recovery reads only the fixed 31-byte header.
const (
	recVersion    = 1
	recHeaderLen  = 31
	idLen         = 12
	maxRecordSize = 64 << 20

	flagRetain   = 1
	flagPFormat  = 2
	flagExpiry   = 4
	flagDead     = 8
	flagsAllowed = flagRetain | flagPFormat | flagExpiry | flagDead
)

// record is the decoded form of a message record.
type record struct {
	id       [idLen]byte
	enqueued int64
	msg      Message
	dead     bool
	attempts uint64
	deadAt   int64
	reason   string
}

// recordHeader is the part recovery needs.
type recordHeader struct {
	id       [idLen]byte
	enqueued int64
	dead     bool
}

func appendUv(b []byte, s []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendUvs(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// encodedSizeHint is an upper bound guess for the buffer of r.
func encodedSizeHint(m *Message) int {
	n := recHeaderLen + 6*binary.MaxVarintLen32 + len(m.Topic) + len(m.ClientID) + len(m.Username) +
		len(m.Properties.ContentType) + len(m.Properties.ResponseTopic) + len(m.Properties.CorrelationData) +
		5 + binary.MaxVarintLen32 + len(m.Payload) + binary.MaxVarintLen32
	for _, p := range m.Properties.UserProperties {
		n += len(p.Key) + len(p.Value) + 2*binary.MaxVarintLen32
	}
	return n
}

// encodeRecord appends the record to b.
func encodeRecord(b []byte, r *record) []byte {
	m := &r.msg
	var flags byte
	if m.Retain {
		flags |= flagRetain
	}
	if m.Properties.PayloadFormat != nil {
		flags |= flagPFormat
	}
	if m.Properties.MessageExpiry != nil {
		flags |= flagExpiry
	}
	if r.dead {
		flags |= flagDead
	}
	b = append(b, recVersion, flags)
	b = append(b, r.id[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(r.enqueued))
	var recv int64
	if !m.ReceivedAt.IsZero() {
		recv = m.ReceivedAt.UnixNano()
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(recv))
	b = append(b, m.QoS)
	b = appendUvs(b, m.Topic)
	b = appendUvs(b, m.ClientID)
	b = appendUvs(b, m.Username)
	b = appendUvs(b, m.Properties.ContentType)
	b = appendUvs(b, m.Properties.ResponseTopic)
	b = appendUv(b, m.Properties.CorrelationData)
	if m.Properties.PayloadFormat != nil {
		b = append(b, *m.Properties.PayloadFormat)
	}
	if m.Properties.MessageExpiry != nil {
		b = binary.LittleEndian.AppendUint32(b, *m.Properties.MessageExpiry)
	}
	b = binary.AppendUvarint(b, uint64(len(m.Properties.UserProperties)))
	for _, p := range m.Properties.UserProperties {
		b = appendUvs(b, p.Key)
		b = appendUvs(b, p.Value)
	}
	if r.dead {
		b = binary.AppendUvarint(b, r.attempts)
		b = binary.LittleEndian.AppendUint64(b, uint64(r.deadAt))
		b = appendUvs(b, r.reason)
	}
	return appendUv(b, m.Payload)
}

// decodeHeader reads the fixed header of a record without touching the rest.
func decodeHeader(b []byte) (recordHeader, error) {
	var h recordHeader
	if len(b) < recHeaderLen {
		return h, errShort
	}
	if b[0] != recVersion {
		return h, errVersion
	}
	if b[1]&^flagsAllowed != 0 {
		return h, decodeError("unknown flags")
	}
	copy(h.id[:], b[2:2+idLen])
	h.enqueued = int64(binary.LittleEndian.Uint64(b[14:]))
	h.dead = b[1]&flagDead != 0
	return h, nil
}

// reader is a bounds-checked cursor over a record; the first error sticks.
type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errShort
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errShort
		return 0
	}
	r.b = r.b[n:]
	return v
}

// bytes returns the next length-prefixed field, without copying; the length is checked
// against the remaining input before anything is allocated.
func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.err = errLength
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) str() string { return string(r.bytes()) }

func (r *reader) byte1() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 1 {
		r.err = errShort
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) u32() uint32 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 4 {
		r.err = errShort
		return 0
	}
	v := binary.LittleEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *reader) u64() uint64 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 8 {
		r.err = errShort
		return 0
	}
	v := binary.LittleEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

// decodeRecord decodes a whole record. The result does not alias b.
func decodeRecord(b []byte) (*record, error) { return decodeRecordAlias(b, false) }

// decodeRecordAlias decodes a whole record; with alias, payload and correlation data point into b,
// which the caller then hands over.
func decodeRecordAlias(b []byte, alias bool) (*record, error) {
	h, err := decodeHeader(b)
	if err != nil {
		return nil, err
	}
	rec := &record{id: h.id, enqueued: h.enqueued, dead: h.dead}
	m := &rec.msg
	flags := b[1]
	m.Retain = flags&flagRetain != 0
	if recv := int64(binary.LittleEndian.Uint64(b[22:])); recv != 0 {
		m.ReceivedAt = time.Unix(0, recv)
	}
	m.QoS = b[30]
	r := reader{b: b[recHeaderLen:]}
	m.Topic = r.str()
	m.ClientID = r.str()
	m.Username = r.str()
	m.Properties.ContentType = r.str()
	m.Properties.ResponseTopic = r.str()
	if cd := r.bytes(); len(cd) > 0 {
		m.Properties.CorrelationData = cd
		if !alias {
			m.Properties.CorrelationData = append([]byte(nil), cd...)
		}
	}
	if flags&flagPFormat != 0 {
		v := r.byte1()
		m.Properties.PayloadFormat = &v
	}
	if flags&flagExpiry != 0 {
		v := r.u32()
		m.Properties.MessageExpiry = &v
	}
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)/2) { // each property takes at least two bytes
		r.err = errLength
	}
	if r.err == nil && n > 0 {
		m.Properties.UserProperties = make([]UserProperty, n)
		for i := range m.Properties.UserProperties {
			m.Properties.UserProperties[i] = UserProperty{Key: r.str(), Value: r.str()}
		}
	}
	if rec.dead {
		rec.attempts = r.uvarint()
		rec.deadAt = int64(r.u64())
		rec.reason = r.str()
	}
	p := r.bytes()
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, errTrail
	}
	m.Payload = p
	if !alias {
		m.Payload = append([]byte{}, p...)
	}
	return rec, nil
}
