package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// The decoder walks the yaml.Node tree alongside the Config's Go type,
// matching mapping keys to yaml struct tags. Unlike yaml.v3's own decoding
// it reports every unknown key and every badly typed value with its field
// path and position, keeps going after each, and remembers where every
// field was so that validation can point into the file too.

// maxNodes bounds the work of one decode; YAML aliases and merges could
// otherwise expand a small file into a huge tree.
const maxNodes = 1 << 20

// field is what the decoder learned about one field path.
type field struct {
	line, col int
	raw       string // the scalar as written (or the environment value)
	set       bool   // given a non-null value, in the file or the environment
	bad       bool   // its value could not be decoded; validation skips it
	env       string // the environment variable that set it, if any
}

type decoder struct {
	file     string
	problems []Problem
	fields   map[string]*field
	budget   int
}

func newDecoder(file string) *decoder {
	return &decoder{file: file, fields: make(map[string]*field), budget: maxNodes}
}

func (d *decoder) field(path string) *field {
	f := d.fields[path]
	if f == nil {
		f = &field{}
		d.fields[path] = f
	}
	return f
}

// isSet reports whether the file or the environment gave path a value.
func (d *decoder) isSet(path string) bool {
	f := d.fields[path]
	return f != nil && f.set
}

// problemAt records a problem at a node.
func (d *decoder) problemAt(path string, n *yaml.Node, format string, args ...any) {
	p := Problem{File: d.file, Field: path, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		p.Line, p.Column = n.Line, n.Column
	}
	d.problems = append(d.problems, p)
}

// badValue records a value that cannot be decoded into path.
func (d *decoder) badValue(path string, n *yaml.Node, format string, args ...any) {
	d.field(path).bad = true
	d.problemAt(path, n, format, args...)
}

// problem records a problem with a decoded field: at the environment
// variable that set it, at its value in the file, or — when the file
// leaves it out — at its nearest ancestor in the file. Problems with a
// field that failed to decode, or inside one that did, are dropped: the
// decode problem was reported.
func (d *decoder) problem(path string, format string, args ...any) {
	p := Problem{File: d.file, Field: path, Msg: fmt.Sprintf(format, args...)}
	for q := path; ; q = parent(q) {
		if f := d.fields[q]; f != nil && f.bad {
			return
		}
		if q == "" {
			break
		}
	}
	if f := d.fields[path]; f != nil {
		if f.env != "" {
			p.File = "$" + f.env
			d.problems = append(d.problems, p)
			return
		}
	}
	for q := path; q != ""; q = parent(q) {
		if f := d.fields[q]; f != nil && f.line > 0 {
			p.Line, p.Column = f.line, f.col
			break
		}
	}
	d.problems = append(d.problems, p)
}

// raw returns the text path had in the file or environment, or def.
func (d *decoder) raw(path, def string) string {
	if f := d.fields[path]; f != nil && f.set && f.raw != "" {
		return f.raw
	}
	return def
}

// line returns the line of path in the file, 0 if unknown.
func (d *decoder) line(path string) int {
	if f := d.fields[path]; f != nil {
		return f.line
	}
	return 0
}

// parent strips the last component of a field path:
// "a.b[2].c" → "a.b[2]" → "a.b" → "a" → "".
func parent(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// deref follows aliases to the node they name.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// spend takes one unit of the decode budget, reporting once when it runs
// out.
func (d *decoder) spend() bool {
	d.budget--
	if d.budget == -1 {
		d.problemAt("", nil, "the document is too large once its aliases are expanded (more than %d nodes)", maxNodes)
	}
	return d.budget >= 0
}

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// decode stores node n into v, the field at path. A null value (a key with
// nothing after it, or ~) leaves v as it was: the same as leaving the key
// out.
func (d *decoder) decode(path string, n *yaml.Node, v reflect.Value) {
	if !d.spend() {
		return
	}
	f := d.field(path)
	// Validation points at the alias, where this field got its value; type
	// errors below point at the anchored value, where the bad text is.
	f.line, f.col = n.Line, n.Column
	n = deref(n)
	if n.Kind == yaml.ScalarNode {
		f.raw = n.Value
	}
	if isNull(n) || n.Kind == yaml.AliasNode {
		return
	}
	f.set = true

	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}
	if reflect.PointerTo(v.Type()).Implements(unmarshalerType) {
		if err := v.Addr().Interface().(yaml.Unmarshaler).UnmarshalYAML(n); err != nil {
			d.badValue(path, n, "%s", strings.TrimPrefix(err.Error(), "yaml: "))
		}
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.mapping(path, n, v)
	case reflect.Slice:
		d.sequence(path, n, v)
	case reflect.Map:
		d.dict(path, n, v)
	default:
		d.scalar(path, n, v)
	}
}

// structKeys maps the yaml keys of a struct type to field indexes.
func structKeys(t reflect.Type) (map[string]int, []string) {
	keys := make(map[string]int, t.NumField())
	var names []string
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = strings.ToLower(sf.Name)
		}
		keys[name] = i
		names = append(names, name)
	}
	return keys, names
}

func (d *decoder) mapping(path string, n *yaml.Node, v reflect.Value) {
	if n.Kind != yaml.MappingNode {
		d.badValue(path, n, "must be a mapping (key: value lines), got %s", describe(n))
		return
	}
	keys, names := structKeys(v.Type())
	for _, p := range d.pairs(path, n) {
		key := p.key.Value
		if path == "" && strings.HasPrefix(key, "x-") {
			continue // top-level extension keys hold anchors for reuse
		}
		i, ok := keys[key]
		if !ok {
			d.unknownKey(join(path, key), p.key, names)
			continue
		}
		d.decode(join(path, key), p.val, v.Field(i))
	}
}

func (d *decoder) unknownKey(path string, k *yaml.Node, names []string) {
	if s := suggest(k.Value, names); s != "" {
		d.problemAt(path, k, "unknown key; did you mean %q?", s)
		return
	}
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	d.problemAt(path, k, "unknown key; expected one of: %s", strings.Join(sorted, ", "))
}

func (d *decoder) sequence(path string, n *yaml.Node, v reflect.Value) {
	if n.Kind != yaml.SequenceNode {
		d.badValue(path, n, "must be a list, got %s", describe(n))
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, e := range n.Content {
		d.decode(path+"["+strconv.Itoa(i)+"]", e, s.Index(i))
	}
	v.Set(s)
}

// dict decodes a mapping into a map with string keys.
func (d *decoder) dict(path string, n *yaml.Node, v reflect.Value) {
	if n.Kind != yaml.MappingNode {
		d.badValue(path, n, "must be a mapping (key: value lines), got %s", describe(n))
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		d.badValue(path, n, "internal error: cannot decode into %s", v.Type())
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	for _, p := range d.pairs(path, n) {
		e := reflect.New(v.Type().Elem()).Elem()
		d.decode(join(path, p.key.Value), p.val, e)
		v.SetMapIndex(reflect.ValueOf(p.key.Value).Convert(v.Type().Key()), e)
	}
}

// wants says what a scalar of each kind must look like, for messages.
var wants = map[reflect.Kind]string{
	reflect.String: "a string",
	reflect.Bool:   "true or false",
	reflect.Int:    "a whole number", reflect.Int8: "a whole number", reflect.Int16: "a whole number",
	reflect.Int32: "a whole number", reflect.Int64: "a whole number",
	reflect.Uint: "a whole number", reflect.Uint8: "a whole number", reflect.Uint16: "a whole number",
	reflect.Uint32: "a whole number", reflect.Uint64: "a whole number",
	reflect.Float32: "a number", reflect.Float64: "a number",
}

func (d *decoder) scalar(path string, n *yaml.Node, v reflect.Value) {
	want := wants[v.Kind()]
	if want == "" {
		d.badValue(path, n, "internal error: cannot decode into %s", v.Type())
		return
	}
	if n.Kind != yaml.ScalarNode {
		d.badValue(path, n, "must be %s, got %s", want, describe(n))
		return
	}
	tag := n.ShortTag()
	if tag == "!!float" && isDigits(strings.TrimLeft(n.Value, "+-")) {
		tag = "!!int" // an integer too large for int64, which YAML calls a float
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(n.Value)
		return
	case reflect.Bool:
		var b bool
		if tag == "!!bool" && n.Decode(&b) == nil {
			v.SetBool(b)
			return
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		var i int64
		if tag == "!!int" {
			if n.Decode(&i) != nil || v.OverflowInt(i) {
				d.badValue(path, n, "is out of range, got %s", quote(n.Value))
				return
			}
			v.SetInt(i)
			return
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		var u uint64
		if tag == "!!int" {
			if n.Decode(&u) != nil || v.OverflowUint(u) {
				d.badValue(path, n, "is out of range, got %s", quote(n.Value))
				return
			}
			v.SetUint(u)
			return
		}
	case reflect.Float32, reflect.Float64:
		var x float64
		if (tag == "!!float" || tag == "!!int") && n.Decode(&x) == nil {
			v.SetFloat(x)
			return
		}
	}
	d.badValue(path, n, "must be %s, got %s", want, describe(n))
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

type pair struct{ key, val *yaml.Node }

// pairs returns the key/value pairs of mapping n in file order, reporting
// keys that are not plain scalars and keys given twice. Merge keys
// ("<<: *anchor" or "<<: [*a, *b]") add the merged mappings' keys that n
// does not set itself, after n's own.
func (d *decoder) pairs(path string, n *yaml.Node) []pair {
	var out []pair
	seen := make(map[string]*yaml.Node)
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.problemAt(path, k, "keys must be plain names, got %s", describe(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			merges = append(merges, val)
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.problemAt(join(path, k.Value), k, "key given twice (first on line %d)", first.Line)
			continue
		}
		seen[k.Value] = k
		out = append(out, pair{k, val})
	}
	visited := map[*yaml.Node]bool{n: true}
	for _, m := range merges {
		out = d.merge(path, m, seen, visited, out)
	}
	return out
}

// merge appends the pairs of the mapping (or list of mappings) m whose
// keys are not yet seen. Earlier mappings win, as in YAML's merge key.
func (d *decoder) merge(path string, m *yaml.Node, seen map[string]*yaml.Node, visited map[*yaml.Node]bool, out []pair) []pair {
	m = deref(m)
	if visited[m] || !d.spend() {
		return out
	}
	visited[m] = true
	switch m.Kind {
	case yaml.SequenceNode:
		for _, e := range m.Content {
			if deref(e).Kind != yaml.MappingNode {
				d.problemAt(path, e, "<< must merge a mapping or a list of mappings, got %s", describe(deref(e)))
				continue
			}
			out = d.merge(path, e, seen, visited, out)
		}
		return out
	case yaml.MappingNode:
	default:
		d.problemAt(path, m, "<< must merge a mapping or a list of mappings, got %s", describe(m))
		return out
	}
	var inner []*yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := deref(m.Content[i])
		if k.Kind != yaml.ScalarNode {
			continue // reported where that mapping is decoded, if it is
		}
		if k.ShortTag() == "!!merge" {
			inner = append(inner, m.Content[i+1])
			continue
		}
		if _, ok := seen[k.Value]; !ok {
			seen[k.Value] = k
			out = append(out, pair{k, m.Content[i+1]})
		}
	}
	for _, x := range inner {
		out = d.merge(path, x, seen, visited, out)
	}
	return out
}

// suggest returns the name closest to key when it is close enough to be
// a likely typo.
func suggest(key string, names []string) string {
	best, bestDist := "", 3
	for _, name := range names {
		if dist := editDistance(strings.ToLower(key), name); dist < bestDist {
			best, bestDist = name, dist
		}
	}
	if bestDist > len(key)/2 {
		return ""
	}
	return best
}

// editDistance is the optimal string alignment distance between a and b:
// the insertions, deletions, substitutions and transpositions of adjacent
// bytes that turn one into the other.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	// d[i][j] is the distance between a[:i] and b[:j].
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
