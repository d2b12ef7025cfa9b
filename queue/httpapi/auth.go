package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Rights is a set of things a key may do on a queue.
type Rights uint8

// The rights of a key on a queue. Admin implies the others.
const (
	Consume Rights = 1 << iota // receive, ack, nack, extend, stats
	Produce                    // enqueue, stats
	Admin                      // everything: dead letters, redrive, purge
)

// ParseRights turns names ("consume", "produce", "admin") into Rights.
func ParseRights(names []string) (Rights, error) {
	var r Rights
	for _, n := range names {
		switch n {
		case "consume":
			r |= Consume
		case "produce":
			r |= Produce
		case "admin":
			r |= Admin
		default:
			return 0, fmt.Errorf("unknown right %q (want consume, produce or admin)", n)
		}
	}
	return r, nil
}

func (r Rights) has(want Rights) bool { return r&Admin != 0 || r&want == want }

// Key is an API key: a bearer token known by its SHA-256 digest, with rights per queue.
type Key struct {
	Name   string            // shown in logs; never the token
	SHA256 [sha256.Size]byte // digest of the token
	Queues map[string]Rights // queue name, or "*" for every queue → rights
}

// HashToken returns the SHA-256 digest of an API token.
func HashToken(token string) [sha256.Size]byte { return sha256.Sum256([]byte(token)) }

// ParseHash parses "sha256:" followed by 64 hex digits.
func ParseHash(s string) ([sha256.Size]byte, error) {
	var d [sha256.Size]byte
	hexPart, ok := strings.CutPrefix(s, "sha256:")
	if !ok {
		return d, errors.New(`key hash must start with "sha256:"`)
	}
	b, err := hex.DecodeString(hexPart)
	if err != nil || len(b) != sha256.Size {
		return d, errors.New(`key hash must be "sha256:" followed by 64 hex digits`)
	}
	copy(d[:], b)
	return d, nil
}

func (k *Key) rights(q string) Rights {
	return k.Queues[q] | k.Queues["*"]
}

// authenticate returns the key the request's bearer token belongs to. With no keys configured
// every request is allowed (nil key, nil error). Every key is compared, in constant time, so
// the time taken does not say which key nearly matched.
func (h *Handler) authenticate(r *http.Request) (*Key, *httpError) {
	if len(h.keys) == 0 {
		return nil, nil
	}
	auth := r.Header.Get("Authorization")
	token, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || token == "" {
		return nil, &httpError{http.StatusUnauthorized, "unauthorized", "an API key is required: send Authorization: Bearer <key>"}
	}
	sum := HashToken(token)
	var found *Key
	for i := range h.keys {
		if subtle.ConstantTimeCompare(sum[:], h.keys[i].SHA256[:]) == 1 {
			found = &h.keys[i]
		}
	}
	if found == nil {
		return nil, &httpError{http.StatusUnauthorized, "unauthorized", "the API key is not valid"}
	}
	return found, nil
}

// anyRight asks authorize for some right on the queue (to read its stats).
const anyRight Rights = 0

// authorize checks that key (nil: no keys configured) has want (or, for anyRight, some right) on queue q.
func authorize(key *Key, q string, want Rights) *httpError {
	if key == nil {
		return nil
	}
	if have := key.rights(q); (want == anyRight && have != 0) || (want != anyRight && have.has(want)) {
		return nil
	}
	return &httpError{http.StatusForbidden, "forbidden", fmt.Sprintf("API key %q may not %s queue %q", key.Name, rightName(want), q)}
}

func rightName(r Rights) string {
	switch r {
	case Consume:
		return "consume from"
	case Produce:
		return "produce to"
	case Admin:
		return "administer"
	case anyRight:
		return "read"
	}
	return "use"
}
