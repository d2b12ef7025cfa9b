package mqtt

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/bcrypt"
)

// authState is one immutable generation of users and ACL rules; Reload swaps it atomically.
type authState struct {
	gen   uint64
	users map[string][]byte // username → bcrypt hash
	rules []aclRule         // empty → allow everything to authenticated clients
}

type aclRule struct {
	username, clientID string // "" = any
	publish, subscribe []string
}

func validateUsers(users []User) error {
	seen := map[string]bool{}
	for i, u := range users {
		if u.Username == "" {
			return fmt.Errorf("%w: user %d has no username", ErrInvalidOptions, i)
		}
		if seen[u.Username] {
			return fmt.Errorf("%w: user %q is listed twice", ErrInvalidOptions, u.Username)
		}
		seen[u.Username] = true
		if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
			return fmt.Errorf("%w: user %q: password hash is not a bcrypt hash", ErrInvalidOptions, u.Username)
		}
	}
	return nil
}

func validateACL(rules []ACLRule) error {
	for i, r := range rules {
		for _, f := range append(append([]string{}, r.Publish...), r.Subscribe...) {
			if !validFilter(f) {
				return fmt.Errorf("%w: acl rule %d: topic filter %q is not valid", ErrInvalidOptions, i, f)
			}
		}
	}
	return nil
}

// validFilter reports whether f is a well-formed MQTT topic filter ('#' last and alone, '+' alone).
func validFilter(f string) bool {
	if f == "" {
		return false
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return false
		}
		if strings.Contains(l, "+") && l != "+" {
			return false
		}
	}
	return true
}

func newAuthState(gen uint64, users []User, acl []ACLRule) *authState {
	st := &authState{gen: gen, users: make(map[string][]byte, len(users))}
	for _, u := range users {
		st.users[u.Username] = []byte(u.PasswordHash)
	}
	for _, r := range acl {
		ar := aclRule{username: r.Username, clientID: r.ClientID,
			publish: append([]string(nil), r.Publish...), subscribe: append([]string(nil), r.Subscribe...)}
		if ar.username == "*" {
			ar.username = ""
		}
		if ar.clientID == "*" {
			ar.clientID = ""
		}
		st.rules = append(st.rules, ar)
	}
	return st
}

// authenticator checks passwords and ACLs. It is safe for concurrent use.
type authenticator struct {
	state atomic.Pointer[authState]
	gen   atomic.Uint64

	// cache holds keys of (username, password, hash) triples that bcrypt verified, so a reconnect
	// storm of known devices costs a SHA-256 each, not a bcrypt each (~50 ms at cost 10).
	cacheMu sync.Mutex
	cache   map[[32]byte]struct{}
}

const bcryptCacheMax = 100000

func newAuthenticator(users []User, acl []ACLRule) *authenticator {
	a := &authenticator{cache: map[[32]byte]struct{}{}}
	a.state.Store(newAuthState(a.gen.Add(1), users, acl))
	return a
}

func (a *authenticator) reload(users []User, acl []ACLRule) {
	a.state.Store(newAuthState(a.gen.Add(1), users, acl))
}

// checkPassword reports whether password matches username's bcrypt hash in the current state.
func (a *authenticator) checkPassword(st *authState, username string, password []byte) bool {
	hash, ok := st.users[username]
	if !ok {
		return false
	}
	h := sha256.New()
	h.Write([]byte(username))
	h.Write([]byte{0})
	h.Write(hash)
	h.Write([]byte{0})
	h.Write(password)
	var key [32]byte
	h.Sum(key[:0])

	a.cacheMu.Lock()
	_, hit := a.cache[key]
	a.cacheMu.Unlock()
	if hit {
		return true
	}
	if bcrypt.CompareHashAndPassword(hash, password) != nil {
		return false
	}
	a.cacheMu.Lock()
	if len(a.cache) >= bcryptCacheMax {
		clear(a.cache)
	}
	a.cache[key] = struct{}{}
	a.cacheMu.Unlock()
	return true
}

// grants is the ACL of one client resolved against one authState: %u and %c substituted, filters split.
type grants struct {
	gen       uint64
	all       bool // no rules: everything allowed
	publish   [][]string
	subscribe [][]string
}

func (a *authenticator) resolve(st *authState, username, clientID string) *grants {
	g := &grants{gen: st.gen, all: len(st.rules) == 0}
	for _, r := range st.rules {
		if r.username != "" && r.username != username {
			continue
		}
		if r.clientID != "" && r.clientID != clientID {
			continue
		}
		sub := func(f string) []string {
			f = strings.ReplaceAll(f, "%u", username)
			f = strings.ReplaceAll(f, "%c", clientID)
			return strings.Split(f, "/")
		}
		for _, f := range r.publish {
			g.publish = append(g.publish, sub(f))
		}
		for _, f := range r.subscribe {
			g.subscribe = append(g.subscribe, sub(f))
		}
	}
	return g
}

// allowed reports whether g lets the client publish to topic (write) or subscribe to / receive
// from filter (read). For read, the requested filter must be covered by a granted filter: every
// topic it can match must be matched by the grant. A shared subscription's $share/group/ prefix
// is stripped first.
func (g *grants) allowed(topic string, write bool) bool {
	if g.all {
		return true
	}
	list := g.subscribe
	if write {
		list = g.publish
	} else if strings.HasPrefix(topic, "$share/") {
		parts := strings.SplitN(topic, "/", 3)
		if len(parts) < 3 {
			return false
		}
		topic = parts[2]
	}
	for _, f := range list {
		if covers(f, topic) {
			return true
		}
	}
	return false
}

// covers reports whether the granted filter (split on '/') covers the requested filter or topic.
func covers(grant []string, req string) bool {
	i := 0
	for {
		var lvl string
		end := strings.IndexByte(req, '/')
		last := end < 0
		if last {
			lvl = req
		} else {
			lvl = req[:end]
		}
		if i >= len(grant) {
			return false
		}
		g := grant[i]
		switch {
		case g == "#":
			// '#' and '+' never match a first level starting with '$' [MQTT-4.7.2-1].
			return !(i == 0 && strings.HasPrefix(lvl, "$"))
		case g == "+":
			if lvl == "#" || (i == 0 && strings.HasPrefix(lvl, "$")) {
				return false
			}
		case lvl != g:
			return false
		}
		i++
		if last {
			// "a/#" also covers "a" (the parent level).
			return i == len(grant) || (i == len(grant)-1 && grant[i] == "#")
		}
		req = req[end+1:]
	}
}
