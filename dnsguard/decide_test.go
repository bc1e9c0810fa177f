package dnsguard

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/kordon-dev/kordon/policy"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// quarantineInspector quarantines one name for one pod.
type quarantineInspector struct {
	pod, name string
}

func (q quarantineInspector) Quarantined(c *Client, qname string) (string, bool) {
	if c.Pod == q.pod && qname == q.name {
		return "quarantined by the detector (test)", true
	}
	return "", false
}

func (quarantineInspector) Observe(*QueryEvent) {}

// outcome is what a path decided for a query, as the client and the query
// log see it.
type outcome struct {
	verdict Verdict
	policy  string
	ede     int // -1: none
	edeText string
	rcode   int
}

func outcomeOf(t *testing.T, r *dns.Msg, ev QueryEvent) outcome {
	t.Helper()
	o := outcome{verdict: ev.Verdict, policy: ev.Policy, ede: -1, rcode: r.Rcode}
	if e := ede(r); e != nil {
		o.ede, o.edeText = int(e.InfoCode), e.ExtraText
	}
	if ev.RCode != dns.RcodeToString[r.Rcode] {
		t.Errorf("query log rcode %s, reply %s", ev.RCode, dns.RcodeToString[r.Rcode])
	}
	return o
}

// decisionCase is one verdict of the decision function.
type decisionCase struct {
	name   string
	from   string
	qname  string
	qtype  uint16
	noEDNS bool // a 512-byte client
	mutate func(*Config)
	// drain empties the client's rate-limit bucket first.
	drain bool
	want  outcome
	// fast: an answer the fast path gives itself (counted as a fast hit
	// or fast miss); the others are handed to the full path.
	fast bool
}

const rateBurst = 10

func decisionCases() []decisionCase {
	blocklist, _, _ := ParseBlocklist(strings.NewReader("0.0.0.0 ads.cdn.example\n"))
	custom, _, _ := ParseBlocklist(strings.NewReader("0.0.0.0 doh.corp.example\n"))
	const frontend, checkout, batch, unknown = "127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.99"
	doh := outcome{verdict: VerdictBlocked, policy: "doh-list", ede: int(dns.ExtendedErrorCodeBlocked), edeText: "well-known DNS-over-HTTPS resolver (doh list): use the cluster resolver", rcode: dns.RcodeNameError}
	return []decisionCase{
		{name: "allowed", from: frontend, qname: "img.cdn.example.", fast: true,
			want: outcome{verdict: VerdictAllowed, policy: "shop/frontend-egress", ede: -1, rcode: dns.RcodeSuccess}},
		{name: "denied by policy", from: frontend, qname: "bad.cdn.example.",
			want: outcome{verdict: VerdictBlocked, policy: "shop/frontend-egress", ede: int(dns.ExtendedErrorCodeBlocked), edeText: "denied by EgressPolicy shop/frontend-egress (bad.cdn.example)", rcode: dns.RcodeNameError}},
		{name: "not in allow list", from: frontend, qname: "google.com.",
			want: outcome{verdict: VerdictBlocked, policy: "shop/frontend-egress", ede: int(dns.ExtendedErrorCodeProhibited), edeText: "not allowed by EgressPolicy shop/frontend-egress", rcode: dns.RcodeNameError}},
		{name: "audit", from: checkout, qname: "google.com.", fast: true,
			want: outcome{verdict: VerdictAudit, policy: "shop/checkout-egress", ede: -1, rcode: dns.RcodeSuccess}},
		{name: "mesh-wide blocklist", from: frontend, qname: "ads.cdn.example.", mutate: func(c *Config) { c.Blocklist = blocklist },
			want: outcome{verdict: VerdictBlocked, policy: "blocklist", ede: int(dns.ExtendedErrorCodeBlocked), edeText: "blocked by mesh-wide deny list (ads.cdn.example)", rcode: dns.RcodeNameError}},
		{name: "quarantine", from: frontend, qname: "img.cdn.example.", mutate: func(c *Config) { c.Inspector = quarantineInspector{pod: "frontend", name: "img.cdn.example"} },
			want: outcome{verdict: VerdictQuarantined, policy: "shop/frontend-egress", ede: int(dns.ExtendedErrorCodeBlocked), edeText: "quarantined by the detector (test)", rcode: dns.RcodeNameError}},
		{name: "unknown client allow", from: unknown, qname: "google.com.", fast: true,
			want: outcome{verdict: VerdictAllowed, ede: -1, rcode: dns.RcodeSuccess}},
		{name: "unknown client deny", from: unknown, qname: "google.com.", mutate: func(c *Config) { c.UnknownClients = UnknownDeny },
			want: outcome{verdict: VerdictBlocked, policy: "unknown-client", ede: int(dns.ExtendedErrorCodeProhibited), edeText: "unknown client: only in-cluster names may be resolved", rcode: dns.RcodeNameError}},
		{name: "unknown client deny in-cluster", from: unknown, qname: "kube-dns.kube-system.svc.cluster.local.", fast: true, mutate: func(c *Config) { c.UnknownClients = UnknownDeny },
			want: outcome{verdict: VerdictAllowed, ede: -1, rcode: dns.RcodeSuccess}},
		{name: "unknown client refuse", from: unknown, qname: "google.com.", mutate: func(c *Config) { c.UnknownClients = UnknownRefuse },
			want: outcome{verdict: VerdictBlocked, policy: "unknown-client", ede: -1, rcode: dns.RcodeRefused}},
		// Workloads whose egress firewall mode is Enforce may not resolve
		// well-known DoH resolvers, even where their policy allows every
		// name (batch: allowCIDRs only); the others are not affected.
		{name: "doh list", from: batch, qname: "Dns.Google.", want: doh},
		{name: "doh list over an allow list", from: frontend, qname: "cloudflare-dns.com.", want: doh},
		{name: "doh list exact names only", from: batch, qname: "x.dns.google.", fast: true,
			want: outcome{verdict: VerdictAllowed, ede: -1, rcode: dns.RcodeSuccess}},
		{name: "doh list audit workload", from: checkout, qname: "dns.google.", fast: true,
			want: outcome{verdict: VerdictAudit, policy: "shop/checkout-egress", ede: -1, rcode: dns.RcodeSuccess}},
		{name: "doh list unknown client", from: unknown, qname: "dns.google.", fast: true,
			want: outcome{verdict: VerdictAllowed, ede: -1, rcode: dns.RcodeSuccess}},
		{name: "doh list empty", from: batch, qname: "dns.google.", fast: true, mutate: func(c *Config) { c.DoHList = &Blocklist{} },
			want: outcome{verdict: VerdictAllowed, ede: -1, rcode: dns.RcodeSuccess}},
		{name: "doh list overridden", from: batch, qname: "doh.corp.example.", mutate: func(c *Config) { c.DoHList = custom },
			want: doh},
		{name: "rate-limited", from: frontend, qname: "img.cdn.example.", drain: true,
			want: outcome{verdict: VerdictBlocked, policy: "rate-limit", ede: -1, rcode: dns.RcodeRefused}},
		// A cached answer too big for a 512-byte client: the fast path
		// hands it over to be truncated (it once took two tokens).
		{name: "truncated cached answer", from: frontend, qname: "big.example.", qtype: dns.TypeTXT, noEDNS: true,
			want: outcome{verdict: VerdictAllowed, policy: "shop/frontend-egress", ede: -1, rcode: dns.RcodeSuccess}},
	}
}

// decisionPaths are the ways a query can be answered.
var decisionPaths = []string{"full", "fast hit", "fast miss"}

// TestOneDecisionEveryPath runs every verdict through the full path
// (ServeDNS), the fast path's cache hit and its cache miss, and checks
// that each decides the same and takes exactly one rate-limit token.
func TestOneDecisionEveryPath(t *testing.T) {
	t.Parallel()
	for _, tc := range decisionCases() {
		for _, path := range decisionPaths {
			for _, withFW := range []bool{false, true} {
				name := tc.name + "/" + path
				if withFW {
					name += "/firewall"
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					runDecisionCase(t, tc, path, withFW)
				})
			}
		}
	}
}

// runDecisionCase runs tc on path; withFW adds a Firewall that admits
// everything (the decisions must not change), and checks that it is asked
// exactly for allowed or audited answers with addresses.
func runDecisionCase(t *testing.T, tc decisionCase, path string, withFW bool) {
	fw := &fakeFirewall{}
	h := newHarness(t, func(c *Config) {
		c.RateLimit, c.RateBurst = 1, rateBurst // the clock is frozen: no refill
		if withFW {
			c.Firewall = fw
		}
		if tc.mutate != nil {
			tc.mutate(c)
		}
	})
	qtype := tc.qtype
	if qtype == 0 {
		qtype = dns.TypeA
	}
	mk := func() *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(tc.qname, qtype)
		if !tc.noEDNS {
			m.SetEdns0(1232, false)
		}
		return m
	}
	ip := netip.MustParseAddr(tc.from)
	if tc.drain {
		for i := 0; i < rateBurst; i++ {
			h.srv.limiter.allow(ip, h.clock.Now())
		}
	}
	if path == "fast hit" {
		primeCache(t, h, tc.qname, qtype)
	}
	hits, misses := testutil.ToFloat64(h.srv.metrics.fastAnswers), testutil.ToFloat64(h.srv.metrics.fastMisses)
	var r *dns.Msg
	if path == "full" {
		rec := &recorder{remote: &net.UDPAddr{IP: net.ParseIP(tc.from), Port: 40000}}
		h.srv.ServeDNS(rec, mk())
		r = rec.msg
	} else {
		r = h.exchange(t, tc.from, mk(), "udp")
	}
	got := outcomeOf(t, r, h.logEvents(t, 1)[0])
	if got != tc.want {
		t.Errorf("decided %+v\nwant    %+v", got, tc.want)
	}
	if tc.name == "truncated cached answer" && !r.Truncated {
		t.Errorf("want a truncated answer, got\n%s", r)
	}
	if withFW {
		wantAdmits := 0
		if (tc.want.verdict == VerdictAllowed || tc.want.verdict == VerdictAudit) && len(r.Answer) > 0 && qtype == dns.TypeA {
			wantAdmits = 1
		}
		if n := len(fw.Calls()); n != wantAdmits {
			t.Errorf("%d Admit calls, want %d", n, wantAdmits)
		}
	}
	// Exactly one token, whatever paths the query crossed.
	wantTokens := float64(rateBurst - 1)
	if tc.drain {
		wantTokens = 0
	}
	if got := tokens(h.srv.limiter, ip); got != wantTokens {
		t.Errorf("rate-limit bucket has %v tokens, want %v (one per query)", got, wantTokens)
	}
	// The path was the one under test.
	dHits, dMisses := testutil.ToFloat64(h.srv.metrics.fastAnswers)-hits, testutil.ToFloat64(h.srv.metrics.fastMisses)-misses
	switch {
	case path == "fast hit" && tc.fast && dHits != 1,
		path == "fast miss" && tc.fast && dMisses != 1,
		path == "full" && dHits+dMisses != 0,
		!tc.fast && dHits+dMisses != 0:
		t.Errorf("fast hits +%v, fast misses +%v on path %q", dHits, dMisses, path)
	}
}

// primeCache stores the fake upstream's answer for name, as a full-path
// lookup would, without asking the server (so no token and no log).
func primeCache(t *testing.T, h *harness, name string, qtype uint16) {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	rec := &recorder{remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}} // TCP: never truncated
	h.up.serve(rec, q)
	h.srv.cache.put(cacheKey{name: policy.CanonicalName(name), qtype: qtype, qclass: dns.ClassINET}, rec.msg, h.clock.Now())
}

// tokens is the client's rate-limit bucket level.
func tokens(r *rateLimiter, ip netip.Addr) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b, ok := r.buckets[ip]; ok {
		return b.tokens
	}
	return -1
}

// TestDefaultDoHList: the built-in list parses without a skipped line,
// holds exact names only (no subtrees), and has the well-known resolvers.
func TestDefaultDoHList(t *testing.T) {
	t.Parallel()
	_, st, err := ParseBlocklist(strings.NewReader(dohHosts))
	if err != nil || st.Skipped != 0 || st.Subtree != 0 {
		t.Fatalf("doh-hosts.txt: %+v, %v", st, err)
	}
	if entries := strings.Count(dohHosts, "\n0.0.0.0 "); entries != st.Exact {
		t.Errorf("%d entries, %d distinct names", entries, st.Exact)
	}
	l := DefaultDoHList()
	for _, name := range strings.Fields(`dns.google dns64.dns.google cloudflare-dns.com mozilla.cloudflare-dns.com
		one.one.one.one 1dot1dot1dot1.cloudflare-dns.com security.cloudflare-dns.com family.cloudflare-dns.com
		dns.quad9.net dns9.quad9.net dns10.quad9.net dns11.quad9.net doh.opendns.com doh.familyshield.opendns.com
		dns.adguard.com dns.adguard-dns.com unfiltered.adguard-dns.com family.adguard-dns.com doh.cleanbrowsing.org
		dns.nextdns.io doh.dns.sb dns.twnic.tw doh.mullvad.net dns.mullvad.net adblock.dns.mullvad.net
		dns.controld.com freedns.controld.com doh.libredns.gr ordns.he.net dns.alidns.com doh.pub dns.pub doh.360.cn
		dns.digitale-gesellschaft.ch doh.ffmuc.net dns.switch.ch dns0.eu zero.dns0.eu kids.dns0.eu open.dns0.eu
		doh.applied-privacy.net resolver2.dns.watch dns.brahma.world`) {
		if _, ok := l.Match(name); !ok {
			t.Errorf("%s is not on the default DoH list", name)
		}
	}
	for _, name := range []string{"google", "x.dns.google", "quad9.net", "example.com"} {
		if _, ok := l.Match(name); ok {
			t.Errorf("%s is on the default DoH list", name)
		}
	}
}
