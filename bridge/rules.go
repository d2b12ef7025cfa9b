package bridge

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// Rule routes the MQTT messages whose topic matches Filter into the queue named Queue.
type Rule struct {
	Filter string // an MQTT topic filter; '+' matches one level, '#' (last) any number of levels
	Queue  string // the queue's name
	MinQoS byte   // only messages published with at least this QoS are bridged (0, 1 or 2)
}

// ErrInvalidRule is wrapped by the errors New and ValidateRules return for a rule that cannot be used.
var ErrInvalidRule = errors.New("bridge: invalid rule")

// RuleError says which rule is wrong and why.
type RuleError struct {
	Index  int // position of the rule in the list
	Filter string
	Reason string
}

func (e *RuleError) Error() string {
	return fmt.Sprintf("bridge: rule %d (filter %q): %s", e.Index, e.Filter, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidRule) true.
func (e *RuleError) Unwrap() error { return ErrInvalidRule }

// maxFilterLen is the MQTT limit on a UTF-8 string.
const maxFilterLen = 65535

// ValidateFilter reports why filter is not a usable bridge topic filter, or nil.
// Shared-subscription filters ($share/...) are refused: a bridge rule sees every publish,
// there is no group to share it with.
func ValidateFilter(filter string) error {
	switch {
	case filter == "":
		return errors.New("the filter is empty")
	case len(filter) > maxFilterLen:
		return fmt.Errorf("the filter is %d bytes long, the limit is %d", len(filter), maxFilterLen)
	case !utf8.ValidString(filter):
		return errors.New("the filter is not valid UTF-8")
	case strings.ContainsRune(filter, 0):
		return errors.New("the filter contains a NUL character")
	case strings.HasPrefix(filter, "$share/") || filter == "$share":
		return errors.New("shared subscriptions ($share/...) cannot be bridge filters; use the topic filter itself")
	}
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		switch {
		case l == "#" && i != len(levels)-1:
			return errors.New("'#' must be the last level of the filter")
		case l != "#" && strings.Contains(l, "#"):
			return errors.New("'#' must occupy a whole level")
		case l != "+" && strings.Contains(l, "+"):
			return errors.New("'+' must occupy a whole level")
		}
	}
	return nil
}

// ValidateRules checks every rule; the error names the first bad rule.
// Queue names are checked only for emptiness here: the queue package validates them when
// they are declared.
func ValidateRules(rules []Rule) error {
	for i, r := range rules {
		if err := ValidateFilter(r.Filter); err != nil {
			return &RuleError{Index: i, Filter: r.Filter, Reason: err.Error()}
		}
		if r.Queue == "" {
			return &RuleError{Index: i, Filter: r.Filter, Reason: "the queue name is empty"}
		}
		if r.MinQoS > 2 {
			return &RuleError{Index: i, Filter: r.Filter, Reason: fmt.Sprintf("min_qos is %d, it must be 0, 1 or 2", r.MinQoS)}
		}
	}
	return nil
}

// Match reports whether topic matches the MQTT topic filter (which must be valid).
// Topics beginning with '$' are not matched by a filter whose first level is a wildcard
// [MQTT-4.7.2-1]. It does not allocate.
func Match(filter, topic string) bool {
	if len(topic) > 0 && topic[0] == '$' && len(filter) > 0 && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true // matches the parent level too: "a/#" matches "a"
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		if !fmore || !tmore {
			if fmore == tmore {
				return true
			}
			// topic ended, filter goes on: only a trailing "/#" still matches
			return !tmore && frest == "#"
		}
		filter, topic = frest, trest
	}
}

// router maps topics to the distinct queues their rules name.
type router struct {
	rules []Rule
}

func newRouter(rules []Rule) *router {
	return &router{rules: slices.Clone(rules)}
}

// route appends to dst the distinct queue names of the rules matching topic at qos,
// in rule order.
func (r *router) route(dst []string, topic string, qos byte) []string {
	for _, rule := range r.rules {
		if qos < rule.MinQoS || !Match(rule.Filter, topic) {
			continue
		}
		if !slices.Contains(dst, rule.Queue) {
			dst = append(dst, rule.Queue)
		}
	}
	return dst
}

// queues returns the distinct queue names of the rules, sorted.
func (r *router) queues() []string {
	var qs []string
	for _, rule := range r.rules {
		qs = append(qs, rule.Queue)
	}
	slices.Sort(qs)
	return slices.Compact(qs)
}
