package manifests

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// A point is a configurable place in an object of the chart: while the
// objects are marshalled it stands as a token (a plain YAML scalar), and
// the token's line is then rewritten into Helm template syntax. The same
// object trees, without points, are install.yaml.
type point struct {
	kind pointKind
	// parts of a scalar: literal strings and template expressions, joined.
	parts []part
	// expr of a block, an if, a range or a with (e.g. ".Values.node.resources").
	expr string
	// omit: a key whose value is empty is left out (with instead of a plain value).
	omit bool
	// format of each item a range or with emits (e.g. "--internal-cidr=%v").
	format string
	// cond, when set, guards a range or with item.
	cond string
}

type pointKind int

const (
	// pScalar is a string, number or bool, rendered with toJson.
	pScalar pointKind = iota
	// pBlock is a map or list, rendered with toYaml.
	pBlock
	// pIf and pEnd are list items that open and close a condition around
	// the items between them.
	pIf
	pEnd
	// pRange is a list item that expands to one item per element of expr.
	pRange
	// pWith is a list item present only when expr is not empty.
	pWith
	// pKeys is a map entry that expands to the keys of the map expr.
	pKeys
)

// part is a literal (expr empty) or a template expression.
type part struct{ lit, expr string }

// MarshalJSON makes a point marshal as its token until render replaces it.
func (p *point) MarshalJSON() ([]byte, error) {
	return nil, fmt.Errorf("manifests: point marshalled outside chart rendering")
}

// tokenPrefix starts every token: a plain YAML scalar that no object uses.
const tokenPrefix = "KORDON_CHART_POINT_"

var tokenLine = regexp.MustCompile(`^( *)((?:- )*)(?:([^ :'"][^:]*): )?` + tokenPrefix + `(\d+)$`)

// renderTemplate marshals obj and turns each point's token line into
// template syntax.
func renderTemplate(obj any) (string, error) {
	var pts []*point
	tree := tokenize(obj, &pts)
	y, err := yaml.Marshal(tree)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSuffix(string(y), "\n"), "\n") {
		if strings.Contains(line, tokenPrefix+"KEY") {
			// A pKeys entry marshals as "TOKEN_KEYn: null".
			m := regexp.MustCompile(`^( *)` + tokenPrefix + `KEY(\d+): null$`).FindStringSubmatch(line)
			if m == nil {
				return "", fmt.Errorf("manifests: chart: cannot place %q", line)
			}
			id, _ := strconv.Atoi(m[2])
			fmt.Fprintf(&b, "{{- with %s }}\n{{- toYaml . | nindent %d }}\n{{- end }}\n", pts[id].expr, len(m[1]))
			continue
		}
		if !strings.Contains(line, tokenPrefix) {
			b.WriteString(line + "\n")
			continue
		}
		m := tokenLine.FindStringSubmatch(line)
		if m == nil {
			return "", fmt.Errorf("manifests: chart: cannot place %q", line)
		}
		indent, dashes, key := m[1], m[2], m[3]
		id, _ := strconv.Atoi(m[4])
		p := pts[id]
		col := len(indent) + len(dashes)
		lead := indent + dashes
		if key != "" {
			lead += key + ":"
		}
		switch p.kind {
		case pScalar:
			switch {
			case p.omit && (key == "" || dashes != ""):
				return "", fmt.Errorf("manifests: chart: an omitted scalar must be a map key: %q", line)
			case p.omit:
				fmt.Fprintf(&b, "{{- with %s }}\n%s {{ toJson . }}\n{{- end }}\n", p.scalarExpr(), lead)
			case key == "":
				fmt.Fprintf(&b, "%s{{ %s | toJson }}\n", lead, p.scalarExpr())
			default:
				fmt.Fprintf(&b, "%s {{ %s | toJson }}\n", lead, p.scalarExpr())
			}
		case pBlock:
			if key == "" {
				return "", fmt.Errorf("manifests: chart: a block must be a map key: %q", line)
			}
			if p.omit {
				if dashes != "" {
					return "", fmt.Errorf("manifests: chart: an omitted block cannot start a list item: %q", line)
				}
				fmt.Fprintf(&b, "{{- with %s }}\n%s\n{{- toYaml . | nindent %d }}\n{{- end }}\n", p.expr, lead, col+2)
			} else {
				fmt.Fprintf(&b, "%s\n{{- toYaml %s | nindent %d }}\n", lead, p.expr, col+2)
			}
		case pIf, pEnd, pRange, pWith:
			if key != "" || dashes != "- " {
				return "", fmt.Errorf("manifests: chart: a conditional must be a list item: %q", line)
			}
			switch p.kind {
			case pIf:
				fmt.Fprintf(&b, "{{- if %s }}\n", p.expr)
			case pEnd:
				b.WriteString("{{- end }}\n")
			default:
				if p.cond != "" {
					fmt.Fprintf(&b, "{{- if %s }}\n", p.cond)
				}
				verb := "range"
				if p.kind == pWith {
					verb = "with"
				}
				fmt.Fprintf(&b, "{{- %s %s }}\n%s{{ printf %q . | toJson }}\n{{- end }}\n", verb, p.expr, lead, p.format)
				if p.cond != "" {
					b.WriteString("{{- end }}\n")
				}
			}
		default:
			return "", fmt.Errorf("manifests: chart: unknown point kind %d", p.kind)
		}
	}
	return b.String(), nil
}

// scalarExpr is the template expression of a scalar point.
func (p *point) scalarExpr() string {
	if len(p.parts) == 1 {
		if p.parts[0].expr != "" {
			return p.parts[0].expr
		}
		return strconv.Quote(p.parts[0].lit)
	}
	var format strings.Builder
	var args []string
	for _, pt := range p.parts {
		if pt.expr == "" {
			format.WriteString(strings.ReplaceAll(pt.lit, "%", "%%"))
			continue
		}
		format.WriteString("%v")
		args = append(args, pt.expr)
	}
	return "(printf " + strconv.Quote(format.String()) + " " + strings.Join(args, " ") + ")"
}

// tokenize copies v with every point replaced by its token, appending
// the points to pts in token order.
func tokenize(v any, pts *[]*point) any {
	switch v := v.(type) {
	case *point:
		*pts = append(*pts, v)
		return tokenPrefix + strconv.Itoa(len(*pts)-1)
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			if p, ok := e.(*point); ok && p.kind == pKeys {
				*pts = append(*pts, p)
				out[tokenPrefix+"KEY"+strconv.Itoa(len(*pts)-1)] = nil
				continue
			}
			out[k] = tokenize(e, pts)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = tokenize(e, pts)
		}
		return out
	}
	return v
}
