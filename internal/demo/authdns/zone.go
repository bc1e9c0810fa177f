// Package authdns is a tiny authoritative DNS server: it answers from zones
// held in memory (A, AAAA, TXT, CNAME, MX and any other type miekg/dns can
// parse from zone-file syntax), synthesises answers from wildcards as RFC
// 4592 says, and answers NXDOMAIN for names that do not exist.
//
// kordon uses it as the loopback upstream of `kordon dev`, `make demo` and
// the tests, so that no DNS query ever leaves the machine. It is not a
// general-purpose name server: no DNSSEC, no zone transfers, no recursion.
package authdns

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/kordon-dev/kordon/policy"
	"github.com/miekg/dns"
)

// DefaultTTL is the TTL of records that do not set one.
const DefaultTTL = 60

// ZoneConfig is one zone as written in a config file.
type ZoneConfig struct {
	// Origin is the zone apex, for example "example.com".
	Origin string `yaml:"origin"`
	// TTL is the default TTL of the zone's records (DefaultTTL if 0).
	TTL uint32 `yaml:"ttl"`
	// Records are zone-file lines relative to Origin, for example
	// "api A 198.51.100.10", "@ MX 10 mail", "*.cdn A 198.51.100.20".
	Records []string `yaml:"records"`
}

// FileConfig is the content of a zone config file: a list of zones.
type FileConfig struct {
	Zones []ZoneConfig `yaml:"zones"`
}

// Zone is a parsed zone: records by owner name, with the names that exist
// (including empty non-terminals) for wildcard and NODATA decisions.
type Zone struct {
	origin string
	soa    *dns.SOA
	// rrs maps a lower-case owner name to its records.
	rrs map[string][]dns.RR
	// exists holds every owner name and every empty non-terminal between
	// an owner name and the apex.
	exists map[string]bool
}

// Origin is the zone's apex as a fully qualified lower-case name.
func (z *Zone) Origin() string { return z.origin }

// LoadConfig reads a YAML zone config file. Errors name file:line:col.
func LoadConfig(path string) ([]*Zone, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("authdns: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig decodes zone config content; file names the source in
// errors. Decoding is policy's strict decoder (unknown fields with "did
// you mean", duplicate keys and types, all with file:line:col).
func ParseConfig(file string, data []byte) ([]*Zone, error) {
	var cfg FileConfig
	pos, err := policy.Decode(file, data, &cfg)
	if err != nil {
		return nil, err
	}
	if len(cfg.Zones) == 0 {
		return nil, pos.Errorf("zones", "required: a list of zones")
	}
	var zones []*Zone
	var errs policy.ErrorList
	seen := map[string]bool{}
	for i, zc := range cfg.Zones {
		at := fmt.Sprintf("zones[%d]", i)
		z, err := NewZone(zc)
		if err != nil {
			var re *RecordError
			if errors.As(err, &re) {
				errs = append(errs, pos.Errorf(fmt.Sprintf("%s.records[%d]", at, re.Index), "%s", re.Msg))
			} else {
				errs = append(errs, pos.Errorf(at, "%v", err))
			}
			continue
		}
		if seen[z.origin] {
			errs = append(errs, pos.Errorf(at, "duplicate zone %s", z.origin))
			continue
		}
		seen[z.origin] = true
		zones = append(zones, z)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return zones, nil
}

// RecordError is an invalid record of a zone.
type RecordError struct {
	// Index is the record's position in ZoneConfig.Records.
	Index int
	// Msg says what is wrong.
	Msg string
}

func (e *RecordError) Error() string { return fmt.Sprintf("records[%d]: %s", e.Index, e.Msg) }

// NewZone parses a zone. Records must lie inside the origin; a SOA is
// synthesised when the records do not carry one.
func NewZone(cfg ZoneConfig) (*Zone, error) {
	if cfg.Origin == "" {
		return nil, errors.New("origin: required")
	}
	origin := dns.CanonicalName(cfg.Origin)
	if _, ok := dns.IsDomainName(origin); !ok {
		return nil, fmt.Errorf("origin: invalid domain name %q", cfg.Origin)
	}
	ttl := cfg.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	z := &Zone{origin: origin, rrs: map[string][]dns.RR{}, exists: map[string]bool{origin: true}}
	for i, line := range cfg.Records {
		if strings.TrimSpace(line) == "" {
			return nil, &RecordError{Index: i, Msg: "empty record"}
		}
		zp := dns.NewZoneParser(strings.NewReader(line), origin, "")
		zp.SetDefaultTTL(ttl)
		rr, ok := zp.Next()
		if err := zp.Err(); err != nil {
			msg, _, _ := strings.Cut(strings.TrimPrefix(err.Error(), "dns: "), " at line: ")
			return nil, &RecordError{Index: i, Msg: msg}
		}
		if !ok {
			return nil, &RecordError{Index: i, Msg: "no record"}
		}
		if _, more := zp.Next(); more {
			return nil, &RecordError{Index: i, Msg: "one record per entry"}
		}
		h := rr.Header()
		h.Name = dns.CanonicalName(h.Name)
		if !dns.IsSubDomain(origin, h.Name) {
			return nil, &RecordError{Index: i, Msg: fmt.Sprintf("%s is outside the zone %s", h.Name, origin)}
		}
		if soa, isSOA := rr.(*dns.SOA); isSOA {
			if h.Name != origin {
				return nil, &RecordError{Index: i, Msg: "SOA must be at the apex"}
			}
			z.soa = soa
			continue
		}
		z.rrs[h.Name] = append(z.rrs[h.Name], rr)
		for n := h.Name; n != origin; {
			z.exists[n] = true
			off, end := dns.NextLabel(n, 0)
			if end {
				break
			}
			n = n[off:]
		}
	}
	for name, set := range z.rrs {
		hasCNAME := false
		for _, rr := range set {
			if rr.Header().Rrtype == dns.TypeCNAME {
				hasCNAME = true
			}
		}
		if hasCNAME && len(set) > 1 {
			return nil, fmt.Errorf("%s: a CNAME cannot coexist with other records", name)
		}
	}
	if z.soa == nil {
		z.soa = &dns.SOA{
			Hdr:     dns.RR_Header{Name: origin, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
			Ns:      "ns." + origin,
			Mbox:    "hostmaster." + origin,
			Serial:  1,
			Refresh: 3600, Retry: 600, Expire: 86400,
			Minttl: ttl,
		}
	}
	return z, nil
}

// lookupResult is what a zone says about one question.
type lookupResult struct {
	rcode  int
	answer []dns.RR
	// authority is the SOA for negative answers.
	authority []dns.RR
}

// maxChase bounds CNAME chains inside one zone.
const maxChase = 8

// lookup answers qname/qtype from the zone. qname must be canonical and
// inside the zone.
func (z *Zone) lookup(qname string, qtype uint16) lookupResult {
	var answer []dns.RR
	name := qname
	for range maxChase {
		set, owner, found := z.find(name)
		if !found {
			if len(answer) > 0 {
				// A CNAME pointing at a name that does not exist.
				return lookupResult{rcode: dns.RcodeNameError, answer: answer, authority: []dns.RR{z.soa}}
			}
			return lookupResult{rcode: dns.RcodeNameError, authority: []dns.RR{z.soa}}
		}
		var match []dns.RR
		var cname *dns.CNAME
		for _, rr := range set {
			if qtype == dns.TypeSOA && name == z.origin {
				continue
			}
			switch {
			case rr.Header().Rrtype == qtype || qtype == dns.TypeANY:
				match = append(match, synth(rr, name, owner))
			case rr.Header().Rrtype == dns.TypeCNAME:
				cname = synth(rr, name, owner).(*dns.CNAME)
			}
		}
		if qtype == dns.TypeSOA && name == z.origin {
			match = append(match, z.soa)
		}
		if qtype == dns.TypeANY && len(match) > 0 {
			// No amplification: one record stands for the set (RFC 8482).
			match = match[:1]
		}
		if len(match) > 0 {
			return lookupResult{rcode: dns.RcodeSuccess, answer: append(answer, match...)}
		}
		if cname == nil {
			return lookupResult{rcode: dns.RcodeSuccess, answer: answer, authority: []dns.RR{z.soa}}
		}
		answer = append(answer, cname)
		target := dns.CanonicalName(cname.Target)
		if !dns.IsSubDomain(z.origin, target) {
			return lookupResult{rcode: dns.RcodeSuccess, answer: answer}
		}
		name = target
	}
	return lookupResult{rcode: dns.RcodeServerFailure}
}

// find returns the records owning name, the owner they come from (name
// itself, or the wildcard that synthesises it) and whether name exists.
func (z *Zone) find(name string) ([]dns.RR, string, bool) {
	if z.exists[name] {
		return z.rrs[name], name, true
	}
	// RFC 4592: find the closest encloser, then try its wildcard child.
	encloser := name
	for encloser != z.origin {
		off, end := dns.NextLabel(encloser, 0)
		if end {
			break
		}
		encloser = encloser[off:]
		if z.exists[encloser] {
			break
		}
	}
	wild := "*." + encloser
	if set, ok := z.rrs[wild]; ok {
		return set, wild, true
	}
	return nil, "", false
}

// synth returns rr owned by name (a copy when owner is a wildcard).
func synth(rr dns.RR, name, owner string) dns.RR {
	if name == owner && rr.Header().Name == name {
		return rr
	}
	c := dns.Copy(rr)
	c.Header().Name = name
	return c
}

// zoneSet finds the zone of a name (longest matching origin).
type zoneSet []*Zone

func newZoneSet(zones []*Zone) zoneSet {
	s := append(zoneSet(nil), zones...)
	sort.Slice(s, func(i, j int) bool { return dns.CountLabel(s[i].origin) > dns.CountLabel(s[j].origin) })
	return s
}

func (s zoneSet) zoneFor(name string) *Zone {
	for _, z := range s {
		if dns.IsSubDomain(z.origin, name) {
			return z
		}
	}
	return nil
}
