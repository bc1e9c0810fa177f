// Package detect finds DNS tunneling and exfiltration in a stream of
// queries. It is pure: no I/O, no clock (time comes from the queries), and
// bounded memory whatever the traffic.
//
// State is kept per (client workload, registrable domain) key. A tunnel
// or an exfiltration channel has to move data through the names it asks
// for, so the detector measures how much *new* information a client
// pushes into one domain's subdomains (unique subdomain bytes per minute
// and per hour), how random those subdomains look (character classes,
// Shannon entropy, label and name lengths, raw 8-bit bytes), and what the
// queries ask for (TXT, NULL, CNAME, MX, ANY and private types, NXDOMAIN
// answers, rate, and polling periodicity). None of this depends on the
// tunnel's domain name, a tool's markers or one record type.
//
// Known-benign patterns that look like tunnels (reputation and DNSBL
// lookups, DKIM, CDN and cloud endpoints) come from a shipped,
// overridable allow-list (benign.txt).
package detect

import (
	"container/list"
	_ "embed"
	"hash/maphash"
	"math"
	"sort"
	"strings"
	"time"

	"golang.org/x/net/publicsuffix"
)

// Sensitivity scales the thresholds.
type Sensitivity string

// Sensitivities.
const (
	Low    Sensitivity = "Low"
	Medium Sensitivity = "Medium"
	High   Sensitivity = "High"
)

func (s Sensitivity) factor() float64 {
	switch s {
	case Low:
		return 1.6
	case High:
		return 0.6
	}
	return 1
}

// Kinds of detection.
const (
	KindTunneling    = "tunneling"
	KindExfiltration = "exfiltration"
)

// Query is one observed DNS query and its outcome.
type Query struct {
	Time time.Time
	// Client identifies the workload (namespace/pod, or the IP when unknown).
	Client string
	// QName as on the wire (miekg/dns presentation form: raw bytes are \DDD).
	QName string
	QType uint16
	// NXDomain is true when the answer was NXDOMAIN.
	NXDomain bool
}

// Evidence explains a detection.
type Evidence struct {
	Queries          int     `json:"queries"`
	UniqueSubdomains int     `json:"uniqueSubdomains"`
	WindowSeconds    float64 `json:"windowSeconds"`
	BytesPerMinute   float64 `json:"uniqueBytesPerMinute"`
	BytesLastHour    int     `json:"uniqueBytesLastHour"`
	// EncodedBytesLastHour is the information content of the new names
	// of the last hour, in bytes (4 bits a hex character, 5 base32, 6
	// base64, 8 raw; labels seen before count as references).
	EncodedBytesLastHour float64        `json:"encodedBytesLastHour"`
	UniqueNamesLastHour  int            `json:"uniqueNamesLastHour"`
	MeanEntropy          float64        `json:"meanEntropyBitsPerChar"`
	MeanSubdomainLen     float64        `json:"meanSubdomainLength"`
	MaxLabelLen          int            `json:"maxLabelLength"`
	Encoding             string         `json:"encoding"`
	QTypes               map[string]int `json:"qtypes"`
	NXDomainRatio        float64        `json:"nxdomainRatio"`
	QueriesPerSecond     float64        `json:"queriesPerSecond"`
	Periodic             bool           `json:"periodic,omitempty"`
	Samples              []string       `json:"samples"`
}

// Detection is a finding for one client and registrable domain.
type Detection struct {
	Client   string   `json:"client"`
	Domain   string   `json:"domain"`
	Kind     string   `json:"kind"`
	Score    float64  `json:"score"`
	Severity string   `json:"severity"`
	Evidence Evidence `json:"evidence"`
}

// Config configures a Detector.
type Config struct {
	// MaxKeys caps tracked (client, domain) pairs (default 50,000); the
	// least recently seen are evicted.
	MaxKeys int
	// Window is the short sliding window (default 60s).
	Window time.Duration
	// Benign lists domain suffixes never scored (default: the shipped list).
	Benign []string
	// ClusterDomain names in-cluster traffic, never scored (default cluster.local).
	ClusterDomain string
}

//go:embed benign.txt
var benignList string

// DefaultBenign returns the shipped allow-list.
func DefaultBenign() []string { return parseList(benignList) }

func parseList(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		line = strings.ToLower(strings.TrimSpace(line))
		if line != "" {
			out = append(out, strings.TrimPrefix(line, "*."))
		}
	}
	return out
}

// Detector scores queries. It is not safe for concurrent use: feed it
// from one goroutine (the Inspector does).
type Detector struct {
	cfg    Config
	benign map[string]bool
	seed   maphash.Seed
	lru    *list.List
	keys   map[string]*list.Element
	shared []sharedName // fixed size: sharedSlots
}

// New builds a Detector.
func New(cfg Config) *Detector {
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = 50000
	}
	if cfg.Window <= 0 {
		cfg.Window = time.Minute
	}
	if cfg.Benign == nil {
		cfg.Benign = DefaultBenign()
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = "cluster.local"
	}
	d := &Detector{cfg: cfg, benign: map[string]bool{}, seed: maphash.MakeSeed(), lru: list.New(), keys: map[string]*list.Element{},
		shared: make([]sharedName, sharedSlots)}
	for _, b := range cfg.Benign {
		d.benign[b] = true
	}
	return d
}

// Tracked is the number of (client, domain) pairs held.
func (d *Detector) Tracked() int { return len(d.keys) }

// Forget drops what was scored for client and domain (an operator lifted
// their quarantine: without this the next query, scored on the state that
// caused it, would quarantine them again at once).
func (d *Detector) Forget(client, domain string) {
	key := client + "\x00" + domain
	if el, ok := d.keys[key]; ok {
		d.lru.Remove(el)
		delete(d.keys, key)
	}
}

const (
	maxUnique  = 512 // unique subdomain hashes kept per key
	maxSamples = 5
	maxTimes   = 32
)

// state is one (client, domain) pair. Its size is bounded by the caps above.
type state struct {
	key, client, domain string
	start               time.Time
	last                time.Time
	queries             int
	nx                  int
	unique              map[uint64]struct{}
	uniqueBytes         int
	entropySum          float64
	subLenSum           int
	maxLabel            int
	classes             [classCount]int
	qtypes              map[uint16]int
	samples             []string
	times               []time.Time
	hour                hourly
}

func (d *Detector) isBenign(domain, name string) bool {
	if domain == d.cfg.ClusterDomain || strings.HasSuffix(name, "."+d.cfg.ClusterDomain) {
		return true
	}
	// Check every suffix of the name against the allow-list.
	for s := name; ; {
		if d.benign[s] {
			return true
		}
		i := strings.IndexByte(s, '.')
		if i < 0 {
			return false
		}
		s = s[i+1:]
	}
}

// Observe feeds one query; it returns a Detection when the pair's traffic
// crosses the thresholds for the given sensitivity (every time it does:
// deduplication is the caller's job).
func (d *Detector) Observe(q Query, sens Sensitivity) *Detection {
	orig := strings.TrimSuffix(q.QName, ".")
	name := asciiLower(orig)
	if name == "" {
		return nil
	}
	domain, sub := split(name)
	// Classify on the original case: mixed case is a base64 signal.
	origSub := orig[:len(sub)]
	if domain == "" {
		return nil
	}
	owner := maphash.String(d.seed, q.Client)*0x9e3779b97f4a7c15 ^ maphash.String(d.seed, domain)
	// Benign-listed names are remembered too: the same address looked up
	// under a listed DNSBL and then an unlisted one is a reuse.
	reused := d.reused(sub, owner, q.Time)
	if d.isBenign(domain, name) {
		return nil
	}
	st := d.get(q.Client, domain, q.Time)
	if q.Time.Sub(st.start) > d.cfg.Window {
		st.resetWindow(q.Time)
	}
	st.hour.advance(q.Time)
	st.last = q.Time
	st.queries++
	if q.NXDomain {
		st.nx++
	}
	if len(st.qtypes) < 16 || st.qtypes[q.QType] > 0 {
		st.qtypes[q.QType]++
	}
	if len(st.times) < maxTimes {
		st.times = append(st.times, q.Time)
	} else {
		copy(st.times, st.times[1:])
		st.times[maxTimes-1] = q.Time
	}
	if sub != "" {
		raw := unescape(origSub)
		h := maphash.String(d.seed, sub)
		if _, seen := st.unique[h]; !seen && len(st.unique) < maxUnique {
			st.unique[h] = struct{}{}
			st.uniqueBytes += len(raw)
			st.entropySum += entropy(raw)
			st.subLenSum += len(raw)
			class, longest := classifySub(origSub)
			st.classes[class]++
			st.maxLabel = max(st.maxLabel, longest)
			if len(st.samples) < maxSamples {
				st.samples = append(st.samples, name)
			}
		}
		if st.hour.newName(h) {
			bits := st.hour.nameBits(d.seed, origSub, sub)
			if reused {
				bits = 0
			}
			st.hour.add(bits, len(raw))
		}
	}
	return st.evaluate(sens.factor())
}

func (st *state) resetWindow(now time.Time) {
	st.start = now
	st.queries, st.nx, st.uniqueBytes, st.subLenSum, st.maxLabel = 0, 0, 0, 0, 0
	st.entropySum = 0
	st.classes = [classCount]int{}
	st.unique = map[uint64]struct{}{}
	st.qtypes = map[uint16]int{}
	st.samples = st.samples[:0]
	st.times = st.times[:0]
}

func (d *Detector) get(client, domain string, now time.Time) *state {
	key := client + "\x00" + domain
	if el, ok := d.keys[key]; ok {
		d.lru.MoveToFront(el)
		return el.Value.(*state)
	}
	if len(d.keys) >= d.cfg.MaxKeys {
		old := d.lru.Back()
		d.lru.Remove(old)
		delete(d.keys, old.Value.(*state).key)
	}
	st := &state{key: key, client: client, domain: domain, start: now,
		unique: map[uint64]struct{}{}, qtypes: map[uint16]int{}}
	d.keys[key] = d.lru.PushFront(st)
	return st
}

// asciiLower lower-cases ASCII letters only, keeping byte offsets stable
// (strings.ToLower rewrites invalid UTF-8, which DNS names may contain).
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 32
		}
	}
	return string(b)
}

// split returns the registrable domain (eTLD+1) and the part before it.
func split(name string) (domain, sub string) {
	d, err := publicsuffix.EffectiveTLDPlusOne(name)
	if err != nil {
		return "", ""
	}
	if len(name) > len(d) {
		sub = name[:len(name)-len(d)-1]
	}
	return d, sub
}

// unescape turns miekg/dns presentation escapes (\DDD, \.) into bytes.
func unescape(s string) string {
	if strings.IndexByte(s, '\\') < 0 {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && isDigit(s, i+1) && isDigit(s, i+2) && isDigit(s, i+3) {
			v := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0')
			b.WriteByte(byte(v))
			i += 3
			continue
		}
		if c == '\\' && i+1 < len(s) {
			b.WriteByte(s[i+1])
			i++
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func isDigit(s string, i int) bool { return i < len(s) && s[i] >= '0' && s[i] <= '9' }

// entropy is the Shannon entropy in bits per character of s without dots.
func entropy(s string) float64 { return shannon(s, false) }

// entropyFold is entropy(asciiLower(s)) without building the lower-cased copy.
func entropyFold(s string) float64 { return shannon(s, true) }

func shannon(s string, fold bool) float64 {
	var counts [256]int
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '.' {
			continue
		}
		if fold && c >= 'A' && c <= 'Z' {
			c += 32
		}
		counts[c]++
		n++
	}
	if n == 0 {
		return 0
	}
	var h float64
	for _, c := range counts {
		if c > 0 {
			p := float64(c) / float64(n)
			h -= p * math.Log2(p)
		}
	}
	return h
}

// Encoding classes of subdomain data.
const (
	classPlain = iota // words, short labels
	classHex
	classBase32
	classBase64
	classBinary // bytes >= 0x80 or control bytes (Base128, raw)
	classCount
)

var classNames = [classCount]string{"plain", "hex", "base32", "base64", "binary"}

// classifySub classifies a subdomain by its longest label: encoders fill
// long labels, while the fixed part of a zone (t.tunnel, cdn-metrics) and
// service prefixes (_dmarc, selector1._domainkey) are short. It also
// returns the length in bytes of that label.
func classifySub(sub string) (class, longestLen int) {
	longest := ""
	for rest := sub; ; {
		l, r, more := strings.Cut(rest, ".")
		if u := unescape(l); len(u) > len(longest) {
			longest = u
		}
		if !more {
			break
		}
		rest = r
	}
	return classify(longest), len(longest)
}

// classify guesses the encoding of one label's bytes.
func classify(s string) int {
	cc := countChars(s)
	lower, upper, digit, hyphen, high, total := cc.lower, cc.upper, cc.digit, cc.hyphen, cc.high, cc.total
	other := cc.other + cc.under
	switch {
	case total == 0:
		return classPlain
	case high > 0:
		return classBinary
	case hyphen > 0 && upper == 0 && other == 0:
		return classPlain // host names use hyphens; hex/base32/base64 encoders do not
	case total >= 16 && (upper > 0 && lower > 0 || other > 0 && (upper+lower) > 0):
		return classBase64
	case total >= 16 && lower+upper+digit == total && isHex(s):
		return classHex
	case total >= 16 && digit > 0 && lower+upper > 0 && hyphen == 0:
		return classBase32
	}
	return classPlain
}

// charClasses counts the kinds of bytes of a label (dots are skipped).
type charClasses struct{ lower, upper, digit, hyphen, under, other, high, total int }

func countChars(s string) (cc charClasses) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			continue
		case c >= 0x80 || c < 0x20:
			cc.high++
		case c >= 'a' && c <= 'z':
			cc.lower++
		case c >= 'A' && c <= 'Z':
			cc.upper++
		case c >= '0' && c <= '9':
			cc.digit++
		case c == '-':
			cc.hyphen++
		case c == '_':
			cc.under++
		default:
			cc.other++
		}
		cc.total++
	}
	return cc
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '.' && !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// isHexFold is isHex(asciiLower(s)) without building the lower-cased copy.
func isHexFold(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '.' && !(c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'f') {
			return false
		}
	}
	return true
}

// tunnel-capable record types: answers can carry data back.
func dataType(t uint16) bool {
	switch t {
	case 16, 10, 5, 15, 255, 99: // TXT, NULL, CNAME, MX, ANY, SPF
		return true
	}
	return t >= 65280 // private use
}

var typeNames = map[uint16]string{1: "A", 28: "AAAA", 16: "TXT", 10: "NULL", 5: "CNAME", 15: "MX", 255: "ANY", 2: "NS", 12: "PTR", 33: "SRV", 6: "SOA", 65: "HTTPS", 64: "SVCB"}

func typeName(t uint16) string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	if t >= 65280 {
		return "PRIVATE"
	}
	return "TYPE" + itoa(int(t))
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b [20]byte
	n := len(b)
	for i > 0 {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
	}
	return string(b[n:])
}

// Thresholds at Medium sensitivity; Low multiplies them by 1.6, High by 0.6.
const (
	minUnique      = 10    // unique subdomains in the window
	minMeanSubLen  = 22.0  // mean bytes of a unique subdomain
	minEntropy     = 3.2   // bits per character
	minBytesPerMin = 900.0 // unique subdomain bytes per minute
)

// evaluate scores the pair and returns a detection above threshold.
func (st *state) evaluate(f float64) *Detection {
	u := len(st.unique)
	if u == 0 {
		return nil
	}
	elapsed := st.last.Sub(st.start).Seconds()
	perMin := float64(st.uniqueBytes) / math.Max(elapsed, 10) * 60
	meanLen := float64(st.subLenSum) / float64(u)
	meanH := st.entropySum / float64(u)
	dominant := classPlain
	for c := range st.classes {
		if st.classes[c] > st.classes[dominant] {
			dominant = c
		}
	}
	// Most unique subdomains must look like encoded data; entropy alone
	// is unreliable on short strings and only adds to the score.
	encoded := dominant != classPlain && 2*(u-st.classes[classPlain]) >= u
	binary := st.classes[classBinary] > 0

	var score float64
	// Volume of new information pushed through one domain.
	score += math.Min(float64(u)/(minUnique*f), 2) * 0.25
	score += math.Min(perMin/(minBytesPerMin*f), 2) * 0.25
	// How much it looks like encoded data.
	score += math.Min(meanLen/(minMeanSubLen*f), 2) * 0.15
	if encoded {
		score += 0.2
	}
	if meanH >= minEntropy {
		score += 0.05
	}
	if binary {
		score += 0.3
	}
	if st.maxLabel >= 50 {
		score += 0.1
	}
	dataQ := 0
	for t, n := range st.qtypes {
		if dataType(t) {
			dataQ += n
		}
	}
	if float64(dataQ) > 0.5*float64(st.queries) {
		score += 0.1
	}
	nxRatio := float64(st.nx) / float64(st.queries)
	if nxRatio > 0.5 && st.queries >= 10 {
		score += 0.05
	}
	periodic := isPeriodic(st.times)
	if periodic {
		score += 0.05
	}

	fast := u >= int(minUnique*f) && meanLen >= minMeanSubLen*f && encoded && perMin >= minBytesPerMin*f
	// Raw or Base128 bytes in names are never benign: fewer are needed.
	rawBytes := binary && u >= int(math.Max(3, minUnique*f/3))
	// Low and slow: the information of the new names over the last hour
	// (1 KiB of encoded data at Medium), whatever their timing or type.
	hourBits, hourBytes, hourNames := st.hour.totals()
	slow := hourBits >= minHourlyBits*f && hourNames >= minHourlyNames
	if !(fast || rawBytes || slow) {
		return nil
	}
	if slow {
		// A channel past the hourly cap is at least medium, high at twice it.
		score = math.Max(score, 0.9+0.3*math.Min(hourBits/(minHourlyBits*f)-1, 1))
	}
	kind := KindExfiltration
	if float64(dataQ) > 0.5*float64(st.queries) || binary {
		kind = KindTunneling
	}
	sev := "medium"
	switch {
	case score >= 1.6:
		sev = "critical"
	case score >= 1.2:
		sev = "high"
	case score < 0.9:
		sev = "low"
	}
	qt := map[string]int{}
	for t, n := range st.qtypes {
		qt[typeName(t)] += n
	}
	samples := append([]string(nil), st.samples...)
	sort.Strings(samples)
	return &Detection{
		Client: st.client, Domain: st.domain, Kind: kind, Score: round(score), Severity: sev,
		Evidence: Evidence{
			Queries: st.queries, UniqueSubdomains: u, WindowSeconds: round(elapsed), BytesPerMinute: round(perMin),
			BytesLastHour: hourBytes, EncodedBytesLastHour: round(hourBits / 8), UniqueNamesLastHour: hourNames, MeanEntropy: round(meanH), MeanSubdomainLen: round(meanLen), MaxLabelLen: st.maxLabel,
			Encoding: classNames[dominant], QTypes: qt, NXDomainRatio: round(nxRatio),
			QueriesPerSecond: round(float64(st.queries) / math.Max(elapsed, 1)), Periodic: periodic, Samples: samples,
		},
	}
}

func round(v float64) float64 { return math.Round(v*100) / 100 }

// isPeriodic reports beacon-like polling: at least 8 intervals whose
// coefficient of variation is under 0.1.
func isPeriodic(ts []time.Time) bool {
	if len(ts) < 9 {
		return false
	}
	var sum, sq float64
	n := float64(len(ts) - 1)
	for i := 1; i < len(ts); i++ {
		d := ts[i].Sub(ts[i-1]).Seconds()
		sum += d
		sq += d * d
	}
	mean := sum / n
	if mean < 0.2 {
		return false
	}
	v := sq/n - mean*mean
	return math.Sqrt(math.Max(v, 0))/mean < 0.1
}
