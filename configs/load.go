package configs

import (
	_ "embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// ErrInvalid is what every *Error unwraps to.
var ErrInvalid = errors.New("configs: invalid configuration")

// Error is one problem with a configuration, at a file and line when they are known. Its message is one
// line: "FILE:LINE: what is wrong".
type Error struct {
	File string // "" when not known
	Line int    // 0 when not known
	Msg  string
}

func (e *Error) Error() string {
	msg := strings.ReplaceAll(e.Msg, "\n", " ")
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, msg)
	case e.File != "":
		return e.File + ": " + msg
	default:
		return msg
	}
}

// Unwrap returns ErrInvalid.
func (e *Error) Unwrap() error { return ErrInvalid }

// EmbeddedName is the file name errors use for the embedded default configuration.
const EmbeddedName = "sluice.yaml (embedded)"

// MaxFileSize is the largest configuration file Load reads.
const MaxFileSize = 1 << 20

// maxNodes bounds the YAML nodes one decode visits, aliases expanded (a small file of nested aliases
// could otherwise expand to billions).
const maxNodes = 100_000

//go:embed sluice.yaml
var embedded []byte

// Embedded returns the embedded default configuration file, sluice.yaml, which is also the reference of
// every key.
func Embedded() []byte { return append([]byte(nil), embedded...) }

// Default returns the embedded default configuration. It fails only if the embedded file is broken,
// which a test rules out.
func Default() (*Config, error) {
	c := &Config{pos: map[string]position{}}
	if err := decodeInto(c, EmbeddedName, embedded); err != nil {
		return nil, err
	}
	return c, nil
}

// Load reads the YAML file at path onto the defaults (see Parse). It does not validate: call Validate.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{File: path, Msg: "cannot read the file: " + pathErrText(err)}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, &Error{File: path, Msg: "cannot read the file: " + pathErrText(err)}
	}
	if len(data) > MaxFileSize {
		return nil, &Error{File: path, Msg: fmt.Sprintf("the file is larger than %d bytes", MaxFileSize)}
	}
	return Parse(path, data)
}

// Parse decodes data, named name in errors, onto the defaults: keys the data sets override them; a list
// or a mapping it sets replaces the default one. Decoding is strict: an unknown key, a duplicate key or a
// value of the wrong kind is an *Error naming the line. Parse does not validate: call Validate.
func Parse(name string, data []byte) (*Config, error) {
	c, err := Default()
	if err != nil {
		return nil, err
	}
	if err := decodeInto(c, name, data); err != nil {
		return nil, err
	}
	return c, nil
}

func pathErrText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

type position struct {
	file string
	line int
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseYAML returns the root mapping node of data's only document, or nil for an empty document.
func parseYAML(name string, data []byte) (root *yaml.Node, err error) {
	defer func() {
		if r := recover(); r != nil { // yaml.v3 has panicked on hostile input before; never pass that on
			root, err = nil, &Error{File: name, Msg: "the file is not valid YAML"}
		}
	}()
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, yamlError(name, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &Error{File: name, Line: extra.Line, Msg: "a second YAML document; a config file holds one"}
	} else if !errors.Is(err, io.EOF) {
		return nil, yamlError(name, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], nil
}

func yamlError(name string, err error) error {
	msg := strings.TrimSpace(err.Error())
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Error{File: name, Line: line, Msg: "invalid YAML: " + m[2]}
	}
	return &Error{File: name, Msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

func decodeInto(c *Config, name string, data []byte) error {
	root, err := parseYAML(name, data)
	if err != nil {
		return err
	}
	if root == nil || isNull(root) {
		return nil
	}
	d := &decoder{file: name, pos: map[string]position{}, old: c.pos, budget: maxNodes}
	if err := d.decode(root, reflect.ValueOf(c).Elem(), ""); err != nil {
		return err
	}
	for k, p := range d.pos {
		c.pos[k] = p
	}
	return nil
}

type decoder struct {
	file   string
	pos    map[string]position // positions set by this decode
	old    map[string]position // positions set before (the defaults'), forgotten where replaced
	budget int
}

var durationType = reflect.TypeOf(time.Duration(0))

func (d *decoder) errf(n *yaml.Node, format string, args ...any) *Error {
	return &Error{File: d.file, Line: n.Line, Msg: fmt.Sprintf(format, args...)}
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// where names a key for messages: `key "port" in section mqtt.limits`.
func where(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return fmt.Sprintf("key %q", path)
	}
	if path[i] == '[' {
		return fmt.Sprintf("item %s of %s", path[i:], path[:i])
	}
	return fmt.Sprintf("key %q in section %s", path[i+1:], path[:i])
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return fmt.Sprintf("%q", n.Value)
	}
}

// forget drops earlier positions under path, whose list or mapping is being replaced.
func (d *decoder) forget(path string) {
	for k := range d.old {
		if strings.HasPrefix(k, path+"[") || strings.HasPrefix(k, path+".") {
			delete(d.old, k)
		}
	}
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) error {
	for depth := 0; n.Kind == yaml.AliasNode; depth++ {
		if n.Alias == nil || depth > 100 {
			return d.errf(n, "%s: alias does not resolve", where(path))
		}
		n = n.Alias
	}
	d.budget--
	if d.budget < 0 {
		return d.errf(n, "too many values (aliases expand to more than %d)", maxNodes)
	}
	if path != "" {
		d.pos[path] = position{d.file, n.Line}
	}
	if v.Type() == durationType {
		return d.duration(n, v, path)
	}
	switch v.Kind() {
	case reflect.Struct:
		return d.structure(n, v, path)
	case reflect.Slice:
		return d.slice(n, v, path)
	case reflect.Map:
		return d.mapping(n, v, path)
	case reflect.Pointer:
		if isNull(n) {
			v.Set(reflect.Zero(v.Type()))
			return nil
		}
		p := reflect.New(v.Type().Elem())
		if err := d.decode(n, p.Elem(), path); err != nil {
			return err
		}
		v.Set(p)
		return nil
	default:
		return d.scalar(n, v, path)
	}
}

func (d *decoder) structure(n *yaml.Node, v reflect.Value, path string) error {
	if isNull(n) {
		return nil // an empty section keeps its defaults
	}
	section := sectionName(path)
	if n.Kind != yaml.MappingNode {
		if path == "" {
			return d.errf(n, "the file must be a mapping of sections, got %s", kindName(n))
		}
		return d.errf(n, "section %s must be a mapping of keys, got %s", path, kindName(n))
	}
	t := v.Type()
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return d.errf(k, "a key in %s is not a plain name", section)
		}
		if line, dup := seen[k.Value]; dup {
			return d.errf(k, "key %q appears twice in %s (first on line %d)", k.Value, sectionName(path), line)
		}
		seen[k.Value] = k.Line
		f, ok := fieldByTag(t, k.Value)
		if !ok {
			msg := fmt.Sprintf("unknown key %q in %s", k.Value, sectionName(path))
			if s := suggest(k.Value, t); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			return d.errf(k, "%s", msg)
		}
		p := join(path, k.Value)
		if err := d.decode(val, v.FieldByIndex(f.Index), p); err != nil {
			return err
		}
		d.pos[p] = position{d.file, k.Line}
	}
	return nil
}

func sectionName(path string) string {
	if path == "" {
		return "the top level"
	}
	return "section " + path
}

func fieldByTag(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// suggest returns the known key of t closest to key, if it is close (a typo).
func suggest(key string, t reflect.Type) string {
	best, bestDist := "", 3
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		if dist := editDistance(key, tag); dist < bestDist {
			best, bestDist = tag, dist
		}
		if best == "" && len(key) >= 5 && commonPrefix(key, tag) >= max(5, len(key)-2) {
			best = tag
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (d *decoder) slice(n *yaml.Node, v reflect.Value, path string) error {
	d.forget(path)
	if isNull(n) {
		v.Set(reflect.Zero(v.Type()))
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		return d.errf(n, "%s must be a list, got %s", where(path), kindName(n))
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		if err := d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
			return err
		}
	}
	v.Set(s)
	return nil
}

func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) error {
	d.forget(path)
	if isNull(n) {
		v.Set(reflect.Zero(v.Type()))
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return d.errf(n, "%s must be a mapping of names, got %s", where(path), kindName(n))
	}
	if v.Type().Key().Kind() != reflect.String {
		return d.errf(n, "%s: unsupported mapping", where(path)) // not reached with Config's types
	}
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || isNull(k) {
			return d.errf(k, "a name in %s is not a plain name", path)
		}
		if line, dup := seen[k.Value]; dup {
			return d.errf(k, "name %q appears twice in %s (first on line %d)", k.Value, path, line)
		}
		seen[k.Value] = k.Line
		elem := reflect.New(v.Type().Elem()).Elem()
		p := path + "." + k.Value
		if err := d.decode(val, elem, p); err != nil {
			return err
		}
		d.pos[p] = position{d.file, k.Line}
		m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), elem)
	}
	v.Set(m)
	return nil
}

// names sorts a mapping's keys, so that validation walks it in a stable order.
func names[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func (d *decoder) duration(n *yaml.Node, v reflect.Value, path string) error {
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		return d.errf(n, "%s must be a duration like 10s, got %s", where(path), kindName(n))
	}
	s := strings.TrimSpace(n.Value)
	if s == "0" {
		v.SetInt(0)
		return nil
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		return d.errf(n, "%s: %q is not a duration (write a number with a unit: 500ms, 10s, 5m, 1h)", where(path), n.Value)
	}
	v.SetInt(int64(dur))
	return nil
}

func (d *decoder) scalar(n *yaml.Node, v reflect.Value, path string) error {
	if isNull(n) {
		return nil // keeps the default
	}
	if n.Kind != yaml.ScalarNode {
		return d.errf(n, "%s must be a single value, got %s", where(path), kindName(n))
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(n.Value)
	case reflect.Bool:
		if n.ShortTag() != "!!bool" {
			return d.errf(n, "%s must be true or false, got %q", where(path), n.Value)
		}
		b, err := strconv.ParseBool(strings.ToLower(n.Value))
		if err != nil {
			return d.errf(n, "%s must be true or false, got %q", where(path), n.Value)
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		text, base := intText(n.Value)
		i, err := strconv.ParseInt(text, base, v.Type().Bits())
		if err != nil {
			return d.errf(n, "%s must be an integer between %d and %d, got %q", where(path),
				int64(-1)<<(v.Type().Bits()-1), int64(uint64(1)<<(v.Type().Bits()-1)-1), n.Value)
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		text, base := intText(n.Value)
		u, err := strconv.ParseUint(text, base, v.Type().Bits())
		if err != nil {
			return d.errf(n, "%s must be an integer between 0 and %d, got %q", where(path),
				uint64(math.MaxUint64)>>(64-v.Type().Bits()), n.Value)
		}
		v.SetUint(u)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(n.Value, v.Type().Bits())
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return d.errf(n, "%s must be a number, got %q", where(path), n.Value)
		}
		v.SetFloat(f)
	default:
		return d.errf(n, "%s: unsupported value type %s", where(path), v.Type()) // not reached with Config's types
	}
	return nil
}

// intText readies a YAML integer for strconv: decimal (a leading zero is not octal), or 0x/0o/0b
// prefixed; underscores between digits are dropped.
func intText(s string) (string, int) {
	s = strings.ReplaceAll(strings.TrimSpace(s), "_", "")
	digits := strings.TrimLeft(s, "+-")
	if len(digits) > 2 && digits[0] == '0' && strings.ContainsRune("xXoObB", rune(digits[1])) {
		return s, 0
	}
	return s, 10
}

func commonPrefix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}
