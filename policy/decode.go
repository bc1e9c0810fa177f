package policy

import (
	"errors"
	"fmt"
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

// decoder walks a yaml.Node tree into a Go value, strictly: unknown fields,
// duplicate keys and wrong types are errors, each with a position and a
// field path. Field names come from `json` struct tags so the same types
// serve JSON, YAML and CRD generation.
type decoder struct {
	pos  *Positions
	errs ErrorList
}

func newDecoder(file string, doc *yaml.Node) *decoder {
	return &decoder{pos: &Positions{
		file: file,
		m:    map[string]Position{},
		doc:  Position{File: file, Line: doc.Line, Column: doc.Column},
	}}
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
	if u, ok := v.Addr().Interface().(yamlScalar); ok {
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "expected a scalar, got %s", kindName(n))
			return
		}
		if err := u.decodeScalar(n.Value); err != nil {
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
			if m.MapIndex(reflect.ValueOf(k.Value)).IsValid() {
				d.fail(k, kp, "duplicate key %q", k.Value)
				continue
			}
			e := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, e, kp)
			m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), e)
		}
		v.Set(m)
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.Tag == "!!binary" {
			d.fail(n, path, "expected a string, got %s", kindName(n))
			return
		}
		// Numbers and booleans written where a string belongs are accepted
		// as their text, as Kubernetes does for int-or-string style values,
		// except where a validator later rejects the content.
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
	case reflect.Int, reflect.Int32, reflect.Int64, reflect.Uint32:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!str") {
			d.fail(n, path, "expected an integer, got %s", kindName(n))
			return
		}
		bits := v.Type().Bits()
		if v.Kind() == reflect.Uint32 {
			u, err := strconv.ParseUint(n.Value, 10, bits)
			if err != nil {
				d.fail(n, path, "expected an integer, got %q", n.Value)
				return
			}
			v.SetUint(u)
			return
		}
		i, err := strconv.ParseInt(n.Value, 10, bits)
		if err != nil {
			d.fail(n, path, "expected an integer, got %q", n.Value)
			return
		}
		v.SetInt(i)
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

// yamlScalar is implemented by types that parse their own scalar text
// (for example enums with case rules).
type yamlScalar interface {
	decodeScalar(s string) error
}

// structField describes one JSON-tagged field.
type structField struct {
	index []int
	name  string
}

func fieldsOf(t reflect.Type) []structField {
	var out []structField
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(opts, "inline") || (f.Anonymous && name == "") {
			for _, sub := range fieldsOf(f.Type) {
				sub.index = append([]int{i}, sub.index...)
				out = append(out, sub)
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, structField{index: []int{i}, name: name})
	}
	return out
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected an object, got %s", kindName(n))
		return
	}
	fields := fieldsOf(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "object keys must be strings")
			continue
		}
		fp := joinPath(path, k.Value)
		if seen[k.Value] {
			d.fail(k, fp, "duplicate field")
			continue
		}
		seen[k.Value] = true
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
		d.decode(val, v.FieldByIndex(f.index), fp)
	}
}

// suggest proposes a known field name close to an unknown one.
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
