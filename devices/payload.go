package devices

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// PayloadKind names a payload profile.
type PayloadKind string

// The payload profiles. Every payload carries the device id, a per-device sequence number
// (1, 2, 3, ... per connection lifetime of the Device, not reset on reconnect) and the send
// timestamp, which DecodeStamp reads back.
const (
	// PayloadTelemetry is JSON with temperature, humidity and battery as random walks.
	PayloadTelemetry PayloadKind = "telemetry"
	// PayloadGPS is JSON with a GPS track: lat, lon, speed_kmh, heading_deg.
	PayloadGPS PayloadKind = "gps"
	// PayloadBlob is a binary blob of Size bytes: a 19-byte header, the id, then filler.
	PayloadBlob PayloadKind = "blob"
)

const (
	blobMagic   = 0xB5
	blobVersion = 1
	blobHeader  = 1 + 1 + 8 + 8 + 1 // magic, version, seq, ts, id length
	maxBlobSize = 256 << 20
)

// Payload is a payload profile.
type Payload struct {
	Kind PayloadKind
	Size int // blob size in bytes (PayloadBlob only); at least the header plus the id
}

// String gives the flag form: "telemetry", "gps" or "blob:SIZE".
func (p Payload) String() string {
	if p.Kind == PayloadBlob {
		return fmt.Sprintf("blob:%d", p.Size)
	}
	return string(p.Kind)
}

// ParsePayload parses "telemetry" (or "json"), "gps", or "blob:SIZE" (or "binary:SIZE"; SIZE in
// bytes, with an optional k/KiB suffix).
func ParsePayload(s string) (Payload, error) {
	kind, size, hasSize := strings.Cut(strings.TrimSpace(s), ":")
	switch strings.ToLower(kind) {
	case "", "telemetry", "json":
		if hasSize {
			return Payload{}, &ConfigError{Msg: fmt.Sprintf("payload %q: only blob takes a size", s)}
		}
		return Payload{Kind: PayloadTelemetry}, nil
	case "gps":
		if hasSize {
			return Payload{}, &ConfigError{Msg: fmt.Sprintf("payload %q: only blob takes a size", s)}
		}
		return Payload{Kind: PayloadGPS}, nil
	case "blob", "binary":
		n := 64
		if hasSize {
			v, err := parseSize(size)
			if err != nil {
				return Payload{}, &ConfigError{Msg: fmt.Sprintf("payload %q: %v", s, err)}
			}
			n = v
		}
		return Payload{Kind: PayloadBlob, Size: n}, nil
	}
	return Payload{}, &ConfigError{Msg: fmt.Sprintf("payload %q is not a profile; want telemetry, gps or blob:SIZE", s)}
}

func parseSize(s string) (int, error) {
	s = strings.TrimSpace(s)
	mult := 1
	for _, suf := range []struct {
		s string
		m int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"k", 1000}, {"K", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, suf.s) {
			s, mult = strings.TrimSuffix(s, suf.s), suf.m
			break
		}
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 || n > maxBlobSize/mult {
		return 0, fmt.Errorf("size %q is not a number of bytes up to 256MiB", s)
	}
	return n * mult, nil
}

// Stamp is what every generated payload carries.
type Stamp struct {
	ID   string    // publisher (device) id
	Seq  uint64    // 1-based sequence number per publisher
	Sent time.Time // the intended send time
}

// ErrNoStamp is returned by DecodeStamp for a payload that no generator of this package made.
var ErrNoStamp = errors.New("devices: payload carries no stamp")

// DecodeStamp reads the id, sequence number and send time from a payload made by a Generator.
func DecodeStamp(p []byte) (Stamp, error) {
	if len(p) >= blobHeader && p[0] == blobMagic && p[1] == blobVersion {
		seq := binary.BigEndian.Uint64(p[2:10])
		ts := int64(binary.BigEndian.Uint64(p[10:18]))
		n := int(p[18])
		if len(p) < blobHeader+n {
			return Stamp{}, ErrNoStamp
		}
		return Stamp{ID: string(p[blobHeader : blobHeader+n]), Seq: seq, Sent: time.Unix(0, ts)}, nil
	}
	if len(p) > 0 && p[0] == '{' {
		var v struct {
			ID  string `json:"id"`
			Seq uint64 `json:"seq"`
			TS  int64  `json:"ts"`
		}
		if err := json.Unmarshal(p, &v); err != nil || v.ID == "" || v.Seq == 0 {
			return Stamp{}, ErrNoStamp
		}
		return Stamp{ID: v.ID, Seq: v.Seq, Sent: time.Unix(0, v.TS)}, nil
	}
	return Stamp{}, ErrNoStamp
}

// Generator makes the payloads of one device. It is not safe for concurrent use.
type Generator struct {
	p   Payload
	id  string
	rnd *rand.Rand

	temp, hum, batt   float64
	lat, lon, heading float64
	speed             float64
}

// NewGenerator returns a generator for device id whose random walks are seeded from the id, so a
// rerun produces the same series.
func NewGenerator(p Payload, id string) *Generator {
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	seed := h.Sum64()
	g := &Generator{p: p, id: id, rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	g.temp = 18 + 6*g.rnd.Float64()
	g.hum = 40 + 20*g.rnd.Float64()
	g.batt = 80 + 20*g.rnd.Float64()
	g.lat = 48 + 4*g.rnd.Float64()
	g.lon = 2 + 10*g.rnd.Float64()
	g.heading = 360 * g.rnd.Float64()
	g.speed = 30 + 40*g.rnd.Float64()
	return g
}

// Append appends the payload for sequence number seq sent at sent to buf and returns it.
func (g *Generator) Append(buf []byte, seq uint64, sent time.Time) []byte {
	switch g.p.Kind {
	case PayloadBlob:
		return appendBlob(buf, g.id, seq, sent, g.p.Size)
	case PayloadGPS:
		return g.appendGPS(buf, seq, sent)
	default:
		return g.appendTelemetry(buf, seq, sent)
	}
}

// AppendBlob appends a binary payload of size bytes (never less than the header and the id)
// carrying id, seq and sent. The load tester uses it directly.
func AppendBlob(buf []byte, id string, seq uint64, sent time.Time, size int) []byte {
	return appendBlob(buf, id, seq, sent, size)
}

func appendBlob(buf []byte, id string, seq uint64, sent time.Time, size int) []byte {
	if len(id) > 255 {
		id = id[:255]
	}
	start := len(buf)
	buf = append(buf, blobMagic, blobVersion)
	buf = binary.BigEndian.AppendUint64(buf, seq)
	buf = binary.BigEndian.AppendUint64(buf, uint64(sent.UnixNano()))
	buf = append(buf, byte(len(id)))
	buf = append(buf, id...)
	for len(buf)-start < size {
		buf = append(buf, byte(len(buf)))
	}
	return buf
}

func walk(r *rand.Rand, v, step, lo, hi float64) float64 {
	v += (r.Float64()*2 - 1) * step
	return math.Min(hi, math.Max(lo, v))
}

func (g *Generator) head(buf []byte, seq uint64, sent time.Time) []byte {
	buf = append(buf, `{"id":`...)
	buf = strconv.AppendQuote(buf, g.id)
	buf = append(buf, `,"seq":`...)
	buf = strconv.AppendUint(buf, seq, 10)
	buf = append(buf, `,"ts":`...)
	buf = strconv.AppendInt(buf, sent.UnixNano(), 10)
	return buf
}

func (g *Generator) appendTelemetry(buf []byte, seq uint64, sent time.Time) []byte {
	g.temp = walk(g.rnd, g.temp, 0.2, -40, 85)
	g.hum = walk(g.rnd, g.hum, 0.5, 0, 100)
	g.batt = math.Max(0, g.batt-0.01*g.rnd.Float64())
	buf = g.head(buf, seq, sent)
	buf = append(buf, `,"temperature":`...)
	buf = strconv.AppendFloat(buf, g.temp, 'f', 2, 64)
	buf = append(buf, `,"humidity":`...)
	buf = strconv.AppendFloat(buf, g.hum, 'f', 1, 64)
	buf = append(buf, `,"battery":`...)
	buf = strconv.AppendFloat(buf, g.batt, 'f', 2, 64)
	return append(buf, '}')
}

func (g *Generator) appendGPS(buf []byte, seq uint64, sent time.Time) []byte {
	g.heading = math.Mod(g.heading+(g.rnd.Float64()*2-1)*10+360, 360)
	g.speed = walk(g.rnd, g.speed, 3, 0, 130)
	const stepKm = 0.01
	rad := g.heading * math.Pi / 180
	g.lat = math.Min(89, math.Max(-89, g.lat+stepKm*g.speed/100/111*math.Cos(rad)))
	g.lon = math.Mod(g.lon+stepKm*g.speed/100/(111*math.Cos(g.lat*math.Pi/180))*math.Sin(rad)+540, 360) - 180
	buf = g.head(buf, seq, sent)
	buf = append(buf, `,"lat":`...)
	buf = strconv.AppendFloat(buf, g.lat, 'f', 6, 64)
	buf = append(buf, `,"lon":`...)
	buf = strconv.AppendFloat(buf, g.lon, 'f', 6, 64)
	buf = append(buf, `,"speed_kmh":`...)
	buf = strconv.AppendFloat(buf, g.speed, 'f', 1, 64)
	buf = append(buf, `,"heading_deg":`...)
	buf = strconv.AppendFloat(buf, g.heading, 'f', 1, 64)
	return append(buf, '}')
}
