package manifests

import (
	"fmt"
	"strings"
)

// A path names a place in an object: keys separated by dots, and list
// items selected in brackets by a field ("containers[name=node]"), by
// their whole string value ("args[=--egress-firewall]") or by a prefix
// ("args[^--dns-listen=]").
type pathSeg struct {
	key string
	// sel is empty for a plain key, else "field=value", "=value" or "^prefix".
	sel string
}

func parsePath(p string) ([]pathSeg, error) {
	var segs []pathSeg
	for p != "" {
		i := strings.IndexAny(p, ".[")
		if i < 0 {
			segs = append(segs, pathSeg{key: p})
			break
		}
		seg := pathSeg{key: p[:i]}
		if p[i] == '[' {
			j := strings.IndexByte(p[i:], ']')
			if j < 0 {
				return nil, fmt.Errorf("path %q: unclosed [", p)
			}
			seg.sel = p[i+1 : i+j]
			p = p[i+j+1:]
		} else {
			p = p[i:]
		}
		segs = append(segs, seg)
		p = strings.TrimPrefix(p, ".")
	}
	return segs, nil
}

// place is a location in a tree: a map key or a list index.
type place struct {
	m   map[string]any
	key string
	// l[idx] is a list item; the list is the value of pm[pk].
	l   []any
	idx int
	pm  map[string]any
	pk  string
}

// insert puts before and after around the list item pl names (nil: nothing).
func (pl place) insert(before, after any) {
	l := append([]any{}, pl.l[:pl.idx]...)
	if before != nil {
		l = append(l, before)
	}
	l = append(l, pl.l[pl.idx])
	if after != nil {
		l = append(l, after)
	}
	pl.pm[pl.pk] = append(l, pl.l[pl.idx+1:]...)
}

func (pl place) get() any {
	if pl.m != nil {
		return pl.m[pl.key]
	}
	return pl.l[pl.idx]
}

func (pl place) set(v any) {
	if pl.m != nil {
		pl.m[pl.key] = v
	} else {
		pl.l[pl.idx] = v
	}
}

// find resolves path in obj. The last segment may name a key that does
// not exist yet (for inserts).
func find(obj map[string]any, path string) (place, error) {
	segs, err := parsePath(path)
	if err != nil {
		return place{}, err
	}
	var cur any = obj
	var pl place
	for n, s := range segs {
		m, ok := cur.(map[string]any)
		if !ok {
			return place{}, fmt.Errorf("path %q: %s is not a map", path, s.key)
		}
		pl = place{m: m, key: s.key}
		if s.sel != "" {
			l, ok := m[s.key].([]any)
			if !ok {
				return place{}, fmt.Errorf("path %q: %s is not a list", path, s.key)
			}
			i, err := selectItem(l, s.sel)
			if err != nil {
				return place{}, fmt.Errorf("path %q: %w", path, err)
			}
			pl = place{l: l, idx: i, pm: m, pk: s.key}
		} else if _, ok := m[s.key]; !ok && n < len(segs)-1 {
			return place{}, fmt.Errorf("path %q: no key %s", path, s.key)
		}
		cur = pl.get()
	}
	return pl, nil
}

// selectItem returns the index of the one item of l that sel selects.
func selectItem(l []any, sel string) (int, error) {
	match := func(v any) bool {
		switch {
		case strings.HasPrefix(sel, "="):
			return v == sel[1:]
		case strings.HasPrefix(sel, "^"):
			s, ok := v.(string)
			return ok && strings.HasPrefix(s, sel[1:])
		}
		field, val, _ := strings.Cut(sel, "=")
		m, ok := v.(map[string]any)
		return ok && m[field] == val
	}
	found := -1
	for i, v := range l {
		if match(v) {
			if found >= 0 {
				return 0, fmt.Errorf("[%s] selects more than one item", sel)
			}
			found = i
		}
	}
	if found < 0 {
		return 0, fmt.Errorf("[%s] selects no item", sel)
	}
	return found, nil
}
