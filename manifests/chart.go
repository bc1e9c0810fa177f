package manifests

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// ChartDir is where the Helm chart is written, relative to manifests/.
const ChartDir = "charts/kordon"

// chartValue is one entry of the chart's values.yaml.
type chartValue struct {
	path string
	doc  string
	// def is the default; nil means it is read from the install objects
	// at the place the value's edits point to, so install.yaml stays the
	// one source of the defaults.
	def any
	// optional values belong to objects that may not exist (another part
	// of the install adds them); without the object, the value is left out.
	optional bool
}

type editOp int

const (
	// opSet makes the value at path configurable.
	opSet editOp = iota
	// opArg makes the middle of the string at path (prefix+X+suffix) configurable.
	opArg
	// opInsert adds key to the map at path, left out while the value is empty.
	opInsert
	// opWhen keeps the list item at path only while the value is true.
	opWhen
	// opRange adds, after the list item at path, one item per element of the value.
	opRange
	// opWith adds, after the list item at path, an item while the value is not empty.
	opWith
	// opKeys adds the keys of the value (a map) to the map at path.
	opKeys
)

// edit puts one value into an object of the install.
type edit struct {
	obj   string // "Kind/name"
	path  string
	op    editOp
	value string
	// prefix and suffix (opArg) surround the value in the string.
	prefix, suffix string
	// key (opInsert) is the new key.
	key string
	// format (opRange, opWith) of each item, e.g. "--internal-cidr=%v";
	// cond guards the items.
	format, cond string
}

// objectWhen keeps whole objects only while a value is true.
type objectWhen struct {
	// sel is "Kind/name", or "Kind/*" for every object of a kind.
	sel   string
	value string
}

func values(v string) string { return ".Values." + v }

func objKey(o map[string]any) string {
	md, _ := o["metadata"].(map[string]any)
	return fmt.Sprintf("%v/%v", o["kind"], md["name"])
}

func selects(sel string, o map[string]any) bool {
	kind, name, _ := strings.Cut(sel, "/")
	return o["kind"] == kind && (name == "*" || objKey(o) == sel)
}

func isEmpty(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Map, reflect.Slice, reflect.String:
		return rv.Len() == 0
	}
	return rv.IsZero()
}

func isBlock(v any) bool {
	switch v.(type) {
	case map[string]any, []any:
		return true
	}
	return false
}

// chartTemplate is one rendered template file.
type chartTemplate struct {
	name string
	text string
}

// chartSpec is everything the chart is made of.
type chartSpec struct {
	values   []chartValue
	sections map[string]string
	edits    []edit
	when     []objectWhen
}

// build applies the spec to objs (not modified) and returns the template
// files and the values with their defaults.
func (s chartSpec) build(objs []map[string]any) ([]chartTemplate, []chartValue, error) {
	declared := map[string]*chartValue{}
	vals := make([]chartValue, len(s.values))
	copy(vals, s.values)
	for i := range vals {
		declared[vals[i].path] = &vals[i]
	}
	used := map[string]bool{}
	byKey := map[string]map[string]any{}
	trees := make([]map[string]any, len(objs))
	for i, o := range objs {
		trees[i] = deepCopy(o).(map[string]any)
		byKey[objKey(trees[i])] = trees[i]
	}
	setDefault := func(name string, v any) error {
		cv := declared[name]
		if cv == nil {
			return fmt.Errorf("value %s is not declared", name)
		}
		used[name] = true
		if cv.def == nil {
			cv.def = v
		} else if s, ok := v.(string); ok && fmt.Sprint(cv.def) == s {
			// A number inside a string (a port in an address).
		} else if !reflect.DeepEqual(normalize(cv.def), normalize(v)) {
			return fmt.Errorf("value %s: default %v here, %v elsewhere", name, v, cv.def)
		}
		return nil
	}
	for _, e := range s.edits {
		o := byKey[e.obj]
		if o == nil {
			if declared[e.value] != nil && declared[e.value].optional {
				continue
			}
			return nil, nil, fmt.Errorf("manifests: chart value %s: no object %s", e.value, e.obj)
		}
		if err := applyEdit(o, e, setDefault, declared); err != nil {
			return nil, nil, fmt.Errorf("manifests: chart value %s in %s: %w", e.value, e.obj, err)
		}
	}
	var tpls []chartTemplate
	names := map[string]bool{}
	for _, o := range trees {
		name := fmt.Sprintf("templates/%s-%v.yaml", strings.ToLower(fmt.Sprint(o["kind"])), o["metadata"].(map[string]any)["name"])
		var conds []string
		for _, w := range s.when {
			if selects(w.sel, o) {
				if err := setDefault(w.value, declared[w.value].def); err != nil {
					return nil, nil, err
				}
				conds = append(conds, values(w.value))
			}
		}
		if o["kind"] != "CustomResourceDefinition" {
			if substitute(o) {
				repo, tag := splitImage(Image)
				if err := setDefault("image.repository", repo); err != nil {
					return nil, nil, err
				}
				if err := setDefault("image.tag", tag); err != nil {
					return nil, nil, err
				}
			}
		} else {
			escapeTemplates(o)
		}
		text, err := renderTemplate(o)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", objKey(o), err)
		}
		switch len(conds) {
		case 0:
		case 1:
			text = "{{- if " + conds[0] + " }}\n" + text + "{{- end }}\n"
		default:
			text = "{{- if and " + strings.Join(conds, " ") + " }}\n" + text + "{{- end }}\n"
		}
		if names[name] {
			return nil, nil, fmt.Errorf("manifests: chart: two objects named %s", name)
		}
		names[name] = true
		tpls = append(tpls, chartTemplate{name: name, text: text})
	}
	var out []chartValue
	for _, v := range vals {
		if !used[v.path] {
			if v.optional {
				continue
			}
			return nil, nil, fmt.Errorf("manifests: chart value %s is used nowhere", v.path)
		}
		out = append(out, v)
	}
	sort.Slice(tpls, func(i, j int) bool { return tpls[i].name < tpls[j].name })
	return tpls, out, nil
}

// normalize makes numbers comparable whatever their Go type.
func normalize(v any) any {
	b, _ := json.Marshal(v)
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

func applyEdit(o map[string]any, e edit, setDefault func(string, any) error, declared map[string]*chartValue) error {
	pl, err := find(o, e.path)
	if err != nil {
		return err
	}
	expr := values(e.value)
	switch e.op {
	case opSet:
		cur := pl.get()
		if cur == nil {
			return fmt.Errorf("%s: nothing to set", e.path)
		}
		if err := setDefault(e.value, cur); err != nil {
			return err
		}
		if isBlock(cur) {
			pl.set(&point{kind: pBlock, expr: expr})
		} else {
			pl.set(&point{kind: pScalar, parts: []part{{expr: expr}}})
		}
	case opArg:
		cur, ok := pl.get().(string)
		if !ok || !strings.HasPrefix(cur, e.prefix) || !strings.HasSuffix(cur, e.suffix) || len(cur) < len(e.prefix)+len(e.suffix) {
			return fmt.Errorf("%s: %v is not %s...%s", e.path, pl.get(), e.prefix, e.suffix)
		}
		if err := setDefault(e.value, cur[len(e.prefix):len(cur)-len(e.suffix)]); err != nil {
			return err
		}
		pl.set(&point{kind: pScalar, parts: []part{{lit: e.prefix}, {expr: expr}, {lit: e.suffix}}})
	case opInsert:
		m, ok := pl.get().(map[string]any)
		if !ok {
			return fmt.Errorf("%s is not a map", e.path)
		}
		if _, ok := m[e.key]; ok {
			return fmt.Errorf("%s.%s exists: use a set", e.path, e.key)
		}
		def := declared[e.value]
		if def == nil || !isEmpty(def.def) {
			return fmt.Errorf("an inserted value needs an empty default, so install.yaml has no %s", e.key)
		}
		if err := setDefault(e.value, def.def); err != nil {
			return err
		}
		kind := pScalar
		if isBlock(def.def) {
			kind = pBlock
		}
		m[e.key] = &point{kind: kind, expr: expr, parts: []part{{expr: expr}}, omit: true}
	case opWhen:
		if pl.l == nil {
			return fmt.Errorf("%s is not a list item", e.path)
		}
		def := declared[e.value]
		if def == nil || def.def != true {
			return fmt.Errorf("a condition on an install object needs the default true")
		}
		if err := setDefault(e.value, true); err != nil {
			return err
		}
		pl.insert(&point{kind: pIf, expr: expr}, &point{kind: pEnd})
	case opRange, opWith:
		if pl.l == nil {
			return fmt.Errorf("%s is not a list item", e.path)
		}
		def := declared[e.value]
		if def == nil || !isEmpty(def.def) {
			return fmt.Errorf("an added item needs an empty default, so install.yaml has none")
		}
		if err := setDefault(e.value, def.def); err != nil {
			return err
		}
		kind := pRange
		if e.op == opWith {
			kind = pWith
		}
		cond := ""
		if e.cond != "" {
			cond = values(e.cond)
		}
		pl.insert(nil, &point{kind: kind, expr: expr, format: e.format, cond: cond})
	case opKeys:
		m, ok := pl.get().(map[string]any)
		if !ok {
			return fmt.Errorf("%s is not a map", e.path)
		}
		def := declared[e.value]
		if def == nil || !isEmpty(def.def) {
			return fmt.Errorf("added keys need an empty default")
		}
		if err := setDefault(e.value, def.def); err != nil {
			return err
		}
		m["\x00keys:"+e.value] = &point{kind: pKeys, expr: expr}
	}
	return nil
}

// substitute makes every mention of the install namespace the release's
// namespace and the install image the configured one, and escapes
// strings that look like templates (alert annotations, dashboard legends).
// It reports whether o uses the image.
func substitute(o map[string]any) (image bool) {
	walkStrings(o, func(s string) any {
		if s == Image {
			image = true
			return &point{kind: pScalar, parts: []part{{expr: values("image.repository")}, {lit: ":"}, {expr: values("image.tag")}}}
		}
		if strings.Contains(s, Namespace) {
			var parts []part
			for i, piece := range strings.Split(s, Namespace) {
				if i > 0 {
					parts = append(parts, part{expr: ".Release.Namespace"})
				}
				if piece != "" {
					parts = append(parts, part{lit: piece})
				}
			}
			return &point{kind: pScalar, parts: parts}
		}
		return escape(s)
	})
	return image
}

func escapeTemplates(o map[string]any) { walkStrings(o, escape) }

// escape keeps a string with template delimiters a literal.
func escape(s string) any {
	if strings.Contains(s, "{{") || strings.Contains(s, "}}") {
		return &point{kind: pScalar, parts: []part{{lit: s}}}
	}
	return s
}

// walkStrings replaces each string value of v (not keys) by f's result.
func walkStrings(v any, f func(string) any) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if s, ok := e.(string); ok {
				v[k] = f(s)
			} else {
				walkStrings(e, f)
			}
		}
	case []any:
		for i, e := range v {
			if s, ok := e.(string); ok {
				v[i] = f(s)
			} else {
				walkStrings(e, f)
			}
		}
	}
}

func splitImage(img string) (repo, tag string) {
	i := strings.LastIndexByte(img, ':')
	return img[:i], img[i+1:]
}

func deepCopy(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = deepCopy(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = deepCopy(e)
		}
		return out
	}
	return v
}

// valuesYAML renders values.yaml: the values nested by path, each with
// its doc comment, in declaration order.
func valuesYAML(vals []chartValue, sections map[string]string) ([]byte, error) {
	var b strings.Builder
	b.WriteString("# Generated by `go run ./manifests/gen` from manifests/*.go. DO NOT EDIT.\n")
	b.WriteString("# Defaults render exactly manifests/install.yaml (with namespace.create=true).\n")
	open := []string{}
	for _, v := range vals {
		segs := strings.Split(v.path, ".")
		// Close sections that this path leaves, open the ones it enters.
		common := 0
		for common < len(open) && common < len(segs)-1 && open[common] == segs[common] {
			common++
		}
		open = open[:common]
		for i := common; i < len(segs)-1; i++ {
			ind := strings.Repeat("  ", i)
			if i == 0 {
				b.WriteString("\n")
			}
			if doc := sections[strings.Join(segs[:i+1], ".")]; doc != "" {
				writeComment(&b, ind, doc)
			}
			fmt.Fprintf(&b, "%s%s:\n", ind, segs[i])
			open = append(open, segs[i])
		}
		ind := strings.Repeat("  ", len(segs)-1)
		writeComment(&b, ind, v.doc)
		y, err := yaml.Marshal(map[string]any{segs[len(segs)-1]: v.def})
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(y), "\n"), "\n") {
			b.WriteString(ind + line + "\n")
		}
	}
	return []byte(b.String()), nil
}

func writeComment(b *strings.Builder, ind, doc string) {
	for _, line := range wrap(doc, 76-len(ind)) {
		b.WriteString(ind + "# " + line + "\n")
	}
}

func wrap(s string, width int) []string {
	var lines []string
	cur := ""
	for _, w := range strings.Fields(s) {
		if cur != "" && len(cur)+1+len(w) > width {
			lines = append(lines, cur)
			cur = w
			continue
		}
		if cur != "" {
			cur += " "
		}
		cur += w
	}
	if cur != "" {
		lines = append(lines, cur)
	}
	return lines
}

// valuesSchema is values.schema.json: every value's type, and no unknown
// keys in the chart's own sections (a typo in --set fails the install).
func valuesSchema(vals []chartValue) ([]byte, error) {
	// global is what a parent chart passes to its subcharts.
	root := map[string]any{"$schema": "https://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": false,
		"properties": map[string]any{"global": map[string]any{"type": "object"}}}
	for _, v := range vals {
		segs := strings.Split(v.path, ".")
		cur := root
		for _, s := range segs[:len(segs)-1] {
			props := cur["properties"].(map[string]any)
			next, ok := props[s].(map[string]any)
			if !ok {
				next = map[string]any{"type": "object", "additionalProperties": false, "properties": map[string]any{}}
				props[s] = next
			}
			cur = next
		}
		leaf := map[string]any{"description": v.doc}
		switch d := normalize(v.def).(type) {
		case bool:
			leaf["type"] = "boolean"
		case float64:
			if d == float64(int64(d)) {
				leaf["type"] = []any{"integer", "number"}
			} else {
				leaf["type"] = "number"
			}
		case string:
			leaf["type"] = "string"
		case []any:
			leaf["type"] = "array"
		case map[string]any:
			leaf["type"] = "object"
		}
		cur["properties"].(map[string]any)[segs[len(segs)-1]] = leaf
	}
	b, err := json.MarshalIndent(root, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
