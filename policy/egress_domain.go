package policy

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/idna"
)

// idnaProfile converts Unicode names to A-labels with the lookup rules
// browsers and resolvers use.
var idnaProfile = idna.New(idna.MapForLookup(), idna.Transitional(false), idna.BidiRule())

// NormalizeDomain returns the canonical form of a DNS name for matching:
// lower case, no trailing dot, Unicode labels converted to A-labels
// (xn--...). It rejects names that are not valid hostnames; underscores
// are allowed (SRV and DKIM names use them).
func NormalizeDomain(name string) (string, error) {
	name = strings.TrimSuffix(name, ".")
	if name == "" {
		return "", errors.New("empty domain")
	}
	ascii := true
	for i := 0; i < len(name); i++ {
		if name[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if !ascii {
		a, err := idnaProfile.ToASCII(name)
		if err != nil {
			return "", fmt.Errorf("invalid internationalized domain %q: %v", name, err)
		}
		name = a
	}
	name = strings.ToLower(name)
	if len(name) > 253 {
		return "", fmt.Errorf("domain %q is longer than 253 characters", name)
	}
	for _, l := range strings.Split(name, ".") {
		if l == "" {
			return "", fmt.Errorf("domain %q has an empty label", name)
		}
		if len(l) > 63 {
			return "", fmt.Errorf("domain %q has a label longer than 63 characters", name)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			ok := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || (c == '-' && i > 0 && i < len(l)-1)
			if !ok {
				return "", fmt.Errorf("domain %q has an invalid character %q", name, c)
			}
		}
	}
	return name, nil
}

// DomainPattern is one allow or deny entry of an EgressPolicy: an exact
// name, or a wildcard "*.example.com" that matches every name below
// example.com at any depth but never example.com itself. "**.example.com"
// (Cilium's any-depth form) is a synonym.
type DomainPattern struct {
	// Domain is the normalized name (for wildcards: the part after "*.").
	Domain string
	// Wildcard is true for "*.Domain".
	Wildcard bool
}

// String renders the pattern in its canonical form.
func (p DomainPattern) String() string {
	if p.Wildcard {
		return "*." + p.Domain
	}
	return p.Domain
}

// Match reports whether a normalized name matches the pattern.
func (p DomainPattern) Match(name string) bool {
	if p.Wildcard {
		return len(name) > len(p.Domain) && strings.HasSuffix(name, p.Domain) && name[len(name)-len(p.Domain)-1] == '.'
	}
	return name == p.Domain
}

// ParseDomainPattern parses an allow/deny entry.
func ParseDomainPattern(s string) (DomainPattern, error) {
	var p DomainPattern
	rest := s
	switch {
	case strings.HasPrefix(s, "**."):
		rest, p.Wildcard = s[3:], true
	case strings.HasPrefix(s, "*."):
		rest, p.Wildcard = s[2:], true
	}
	if strings.Contains(rest, "*") {
		return DomainPattern{}, fmt.Errorf("invalid pattern %q: '*' is allowed only as a whole leading label (*.example.com)", s)
	}
	d, err := NormalizeDomain(rest)
	if err != nil {
		return DomainPattern{}, fmt.Errorf("invalid pattern %q: %v", s, err)
	}
	if p.Wildcard && !strings.Contains(d, ".") {
		return DomainPattern{}, fmt.Errorf("invalid pattern %q: a wildcard must be below a domain with at least two labels, not a whole top-level domain", s)
	}
	p.Domain = d
	return p, nil
}

// DomainSet matches a name against many patterns in O(labels): exact
// names and wildcard suffixes are kept in two hash sets.
type DomainSet struct {
	exact    map[string]int // name -> index of the pattern
	wildcard map[string]int // suffix -> index of the pattern
	patterns []DomainPattern
}

// NewDomainSet builds a set from parsed patterns.
func NewDomainSet(patterns []DomainPattern) *DomainSet {
	s := &DomainSet{exact: map[string]int{}, wildcard: map[string]int{}, patterns: patterns}
	for i, p := range patterns {
		m := s.exact
		if p.Wildcard {
			m = s.wildcard
		}
		if _, dup := m[p.Domain]; !dup {
			m[p.Domain] = i
		}
	}
	return s
}

// Len is the number of patterns.
func (s *DomainSet) Len() int {
	if s == nil {
		return 0
	}
	return len(s.patterns)
}

// Match returns the first pattern matching a normalized name.
func (s *DomainSet) Match(name string) (DomainPattern, bool) {
	if s == nil || len(s.patterns) == 0 {
		return DomainPattern{}, false
	}
	if i, ok := s.exact[name]; ok {
		return s.patterns[i], true
	}
	if len(s.wildcard) == 0 {
		return DomainPattern{}, false
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			if j, ok := s.wildcard[name[i+1:]]; ok {
				return s.patterns[j], true
			}
		}
	}
	return DomainPattern{}, false
}
