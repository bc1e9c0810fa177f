package policy

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Position is a place in a source file. Lines and columns start at 1.
type Position struct {
	File   string
	Line   int
	Column int
}

// String renders the position as file:line:col.
func (p Position) String() string {
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
}

// FieldError is one problem in a policy document: where it is, which field
// path it concerns (for example spec.rules[0].from[1].source.ipBlocks[2]),
// and what is wrong.
type FieldError struct {
	Pos   Position
	Field string
	Msg   string
}

// Error renders file:line:col: field.path: message, the format every
// kordon command prints.
func (e *FieldError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%s: %s", e.Pos, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.Pos, e.Field, e.Msg)
}

// ErrorList collects FieldErrors. It is an error itself when non-empty.
type ErrorList []*FieldError

// Error joins the errors, one per line.
func (l ErrorList) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// Unwrap exposes the individual errors to errors.Is/As.
func (l ErrorList) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// sortErrors orders errors by file, line, column so output is stable.
func (l ErrorList) sortErrors() {
	sort.SliceStable(l, func(i, j int) bool {
		a, b := l[i].Pos, l[j].Pos
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

// AsErrorList returns the FieldErrors inside err, or nil if err holds none.
func AsErrorList(err error) ErrorList {
	var l ErrorList
	if errors.As(err, &l) {
		return l
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return ErrorList{fe}
	}
	return nil
}

// Positions maps field paths of one decoded document to where they appear in
// the source, so validation can report exact places long after decoding.
type Positions struct {
	file string
	m    map[string]Position
	// doc is the position of the document's first node.
	doc Position
}

// Of returns the position of path, or of its nearest recorded ancestor, or
// of the document if none is recorded.
func (p *Positions) Of(path string) Position {
	if p == nil {
		return Position{}
	}
	for path != "" {
		if pos, ok := p.m[path]; ok {
			return pos
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return p.doc
}

// Errorf builds a FieldError for path at its recorded position.
func (p *Positions) Errorf(path, format string, args ...any) *FieldError {
	return &FieldError{Pos: p.Of(path), Field: path, Msg: fmt.Sprintf(format, args...)}
}

// File is the name of the source file.
func (p *Positions) File() string {
	if p == nil {
		return ""
	}
	return p.file
}

// Decode is the strict decoder every kordon file format goes through
// (policies, the dev folder's workloads.yaml and services.yaml, the
// authoritative DNS zone file). data is YAML, or JSON when file ends in
// .json or data is a JSON object or array; both are held to the same
// rules. It decodes the single document of data into v, a non-nil
// pointer, and returns where every field path was found so callers can
// position their own validation errors (Positions.Errorf).
//
// The field names are the struct tags: `json` first, then `yaml`, else the
// Go field name; matching is exact (encoding/json's case-insensitive match
// would let "Selector" stand for "selector"). Embedded structs without a
// name and fields tagged `,inline` are flattened; pointers are allocated;
// maps need string keys; types implementing encoding.TextUnmarshaler parse
// their own scalars; interface fields take free-form content. Every
// problem is a FieldError with file:line:col and a field path: an unknown
// field (with "did you mean" when a known one is close), a duplicate key
// (with both positions), a value of the wrong type, a YAML alias. An empty
// input leaves v untouched and is not an error.
func Decode(file string, data []byte, v any) (*Positions, error) {
	docs, err := Documents(file, data)
	if err != nil {
		return nil, err
	}
	switch len(docs) {
	case 0:
		return &Positions{file: file, m: map[string]Position{}, doc: Position{File: file, Line: 1, Column: 1}}, nil
	case 1:
		return DecodeNode(file, docs[0], v)
	}
	n := docs[1]
	return nil, ErrorList{{Pos: Position{File: file, Line: n.Line, Column: n.Column}, Msg: "expected one document, found another"}}
}

// DecodeNode decodes one document's root node (from Documents) into v, a
// non-nil pointer, with Decode's rules.
func DecodeNode(file string, root *yaml.Node, v any) (*Positions, error) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		panic(fmt.Sprintf("policy: Decode needs a non-nil pointer, got %T", v))
	}
	d := newDecoder(file, root)
	d.decode(root, rv.Elem(), "")
	if len(d.errs) > 0 {
		d.errs.sortErrors()
		return d.pos, d.errs
	}
	return d.pos, nil
}

// Documents parses data into the root node of each non-empty document:
// YAML documents separated by ---, or the JSON values of a .json file (or
// of data that is one JSON object or array). A syntax error is a
// FieldError at its position, prefixed "invalid YAML:" or "invalid JSON:".
func Documents(file string, data []byte) ([]*yaml.Node, error) {
	if isJSON(file, data) {
		return jsonDocuments(file, data)
	}
	var out []*yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, ErrorList{yamlSyntaxError(file, data, err)}
		}
		if len(doc.Content) == 0 {
			continue
		}
		root := doc.Content[0]
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			continue // an empty document between separators
		}
		out = append(out, root)
	}
}

// yamlSyntaxError converts a yaml.v3 error ("yaml: line 3: ...") into a
// positioned FieldError. yaml.v3 gives no line for errors at the end of
// the stream (an unclosed quote): those point at the end.
func yamlSyntaxError(file string, data []byte, err error) *FieldError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	pos := endOf(file, data)
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.Index(rest, ":"); i > 0 {
			if line, e := strconv.Atoi(rest[:i]); e == nil {
				msg = strings.TrimSpace(rest[i+1:])
				pos = Position{File: file, Line: line, Column: 1}
			}
		}
	}
	return &FieldError{Pos: pos, Msg: "invalid YAML: " + msg}
}

// endOf is the position just past the last character of data.
func endOf(file string, data []byte) Position {
	return offsetPosition(file, data, len(data))
}

// offsetPosition converts a byte offset into a line and a column counted
// in characters, as yaml.v3 counts them.
func offsetPosition(file string, data []byte, off int) Position {
	off = min(max(off, 0), len(data))
	line := bytes.Count(data[:off], []byte("\n")) + 1
	start := bytes.LastIndexByte(data[:off], '\n') + 1
	return Position{File: file, Line: line, Column: len(bytes.Runes(data[start:off])) + 1}
}

// decoder walks a yaml.Node tree into a Go value, strictly.
type decoder struct {
	pos  *Positions
	errs ErrorList
	// keys holds the position of each map key seen per map path, for
	// duplicate reports that name both places.
	keys map[string]Position
}

func newDecoder(file string, doc *yaml.Node) *decoder {
	return &decoder{pos: &Positions{
		file: file,
		m:    map[string]Position{},
		doc:  Position{File: file, Line: doc.Line, Column: doc.Column},
	}, keys: map[string]Position{}}
}

func (d *decoder) at(n *yaml.Node) Position {
	return Position{File: d.pos.file, Line: n.Line, Column: n.Column}
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, &FieldError{Pos: d.at(n), Field: path, Msg: fmt.Sprintf(format, args...)})
}

func joinPath(base, field string) string {
	if base == "" {
		return field
	}
	return base + "." + field
}

// kindName describes a YAML node kind for error messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "an object"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "null"
		case "!!int", "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		default:
			return "a string"
		}
	case yaml.AliasNode:
		return "an alias"
	}
	return "unknown"
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// decode fills v (addressable) from n. path is the field path of v.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode {
		d.fail(n, path, "YAML aliases are not supported")
		return
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return
		}
		n = n.Content[0]
	}
	if path != "" {
		d.pos.m[path] = d.at(n)
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // null leaves the zero value, as JSON does
	}
	if v.Kind() != reflect.Pointer && v.Kind() != reflect.Interface && v.Addr().Type().Implements(textUnmarshaler) {
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "expected a scalar, got %s", kindName(n))
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			d.fail(n, path, "%v", err)
		}
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "expected a list, got %s", kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case reflect.Map:
		d.decodeMap(n, v, path)
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.Tag == "!!binary" {
			d.fail(n, path, "expected a string, got %s", kindName(n))
			return
		}
		// Numbers and booleans written where a string belongs are accepted
		// as their text (ports: [80]), as Kubernetes does for int-or-string
		// values; validators reject content that is wrong.
		v.SetString(n.Value)
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			d.fail(n, path, "expected a boolean, got %s", kindName(n))
			return
		}
		b, err := strconv.ParseBool(n.Value)
		if err != nil {
			d.fail(n, path, "expected a boolean, got %q", n.Value)
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if !d.intScalar(n, path) {
			return
		}
		i, err := strconv.ParseInt(n.Value, 10, v.Type().Bits())
		if err != nil {
			d.failNumber(n, path, err, "an integer", v.Type().Bits())
			return
		}
		v.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if !d.intScalar(n, path) {
			return
		}
		u, err := strconv.ParseUint(n.Value, 10, v.Type().Bits())
		if err != nil {
			d.failNumber(n, path, err, "a non-negative integer", v.Type().Bits())
			return
		}
		v.SetUint(u)
	case reflect.Float32, reflect.Float64:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") {
			d.fail(n, path, "expected a number, got %s", kindName(n))
			return
		}
		f, err := strconv.ParseFloat(n.Value, v.Type().Bits())
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			d.fail(n, path, "expected a finite number, got %q", n.Value)
			return
		}
		v.SetFloat(f)
	case reflect.Interface:
		// Free-form content (for example metadata.annotations values).
		var x any
		if err := n.Decode(&x); err != nil {
			d.fail(n, path, "%v", err)
			return
		}
		if x != nil {
			v.Set(reflect.ValueOf(x))
		}
	default:
		panic(fmt.Sprintf("policy: decoder cannot fill %s", v.Type()))
	}
}

// intScalar reports whether n can hold an integer: an integer, or a
// string of digits ("443"), as Kubernetes accepts for ports.
func (d *decoder) intScalar(n *yaml.Node, path string) bool {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!str") {
		d.fail(n, path, "expected an integer, got %s", kindName(n))
		return false
	}
	return true
}

// failNumber reports a number that did not parse: out of range for the
// field's size, or not a number of the wanted kind at all.
func (d *decoder) failNumber(n *yaml.Node, path string, err error, want string, bits int) {
	if errors.Is(err, strconv.ErrRange) {
		d.fail(n, path, "%s is out of range (%d-bit %s)", n.Value, bits, strings.TrimPrefix(strings.TrimPrefix(want, "an "), "a "))
		return
	}
	d.fail(n, path, "expected %s, got %q", want, n.Value)
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected an object, got %s", kindName(n))
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		panic("policy: decoder supports only string-keyed maps")
	}
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "map keys must be strings")
			continue
		}
		kp := fmt.Sprintf("%s[%s]", path, k.Value)
		if d.duplicate(k, kp) {
			continue
		}
		e := reflect.New(v.Type().Elem()).Elem()
		d.decode(val, e, kp)
		m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), e)
	}
	v.Set(m)
}

// duplicate reports key k at path kp if the same mapping had it before,
// naming where.
func (d *decoder) duplicate(k *yaml.Node, kp string) bool {
	if first, ok := d.keys[kp]; ok {
		d.fail(k, kp, "duplicate key %q (first at %d:%d)", k.Value, first.Line, first.Column)
		return true
	}
	d.keys[kp] = d.at(k)
	return false
}

// structField describes one tagged field.
type structField struct {
	index []int
	name  string
}

// fieldName is a field's name in documents: its json tag, else its yaml
// tag, else its Go name; inline says the field's own fields are flattened
// into the parent.
func fieldName(f reflect.StructField) (name string, inline, skip bool) {
	for _, key := range []string{"json", "yaml"} {
		tag, ok := f.Tag.Lookup(key)
		if !ok {
			continue
		}
		if tag == "-" {
			return "", false, true
		}
		name, opts, _ := strings.Cut(tag, ",")
		for _, o := range strings.Split(opts, ",") {
			if o == "inline" {
				return "", true, false
			}
		}
		if name != "" {
			return name, false, false
		}
	}
	if f.Anonymous {
		return "", true, false
	}
	return f.Name, false, false
}

func fieldsOf(t reflect.Type) []structField {
	var out []structField
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		name, inline, skip := fieldName(f)
		if skip {
			continue
		}
		if inline {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				if !f.IsExported() {
					continue // reflect cannot allocate it, as encoding/json cannot
				}
				ft = ft.Elem()
			}
			if ft.Kind() != reflect.Struct {
				panic(fmt.Sprintf("policy: inline field %s.%s is not a struct", t, f.Name))
			}
			for _, sub := range fieldsOf(ft) {
				sub.index = append([]int{i}, sub.index...)
				out = append(out, sub)
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		out = append(out, structField{index: []int{i}, name: name})
	}
	return out
}

// fieldByIndex is reflect.Value.FieldByIndex allocating nil embedded
// pointers on the way.
func fieldByIndex(v reflect.Value, index []int) reflect.Value {
	for i, x := range index {
		if i > 0 && v.Kind() == reflect.Pointer {
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		}
		v = v.Field(x)
	}
	return v
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected an object, got %s", kindName(n))
		return
	}
	fields := fieldsOf(v.Type())
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "object keys must be strings")
			continue
		}
		fp := joinPath(path, k.Value)
		if d.duplicate(k, fp) {
			continue
		}
		var f *structField
		for j := range fields {
			if fields[j].name == k.Value {
				f = &fields[j]
				break
			}
		}
		if f == nil {
			d.fail(k, fp, "unknown field%s", suggest(k.Value, fields))
			continue
		}
		d.decode(val, fieldByIndex(v, f.index), fp)
	}
}

// suggest proposes a known field name close to an unknown one: the same
// name in other case, or one at most two edits away.
func suggest(name string, fields []structField) string {
	best, bestD := "", 3
	for _, f := range fields {
		if dist := editDistance(strings.ToLower(name), strings.ToLower(f.name)); dist < bestD {
			best, bestD = f.name, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
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
