package authdns

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const testConfig = `zones:
- origin: shop.example
  ttl: 30
  records:
  - "@ A 198.51.100.1"
  - "@ MX 10 mail"
  - "api A 198.51.100.10"
  - "api AAAA 2001:db8::10"
  - "www CNAME api"
  - "out CNAME cdn.other.example."
  - "dangling CNAME nowhere"
  - "_dmarc TXT \"v=DMARC1; p=reject\""
  - "*.cdn A 198.51.100.20"
  - "x.deep.sub A 198.51.100.30"
- origin: exfil.example
  records:
  - "*.t TXT \"ok\""
  - "*.t A 203.0.113.7"
`

func startServer(t *testing.T, reg prometheus.Registerer) (string, *Server) {
	t.Helper()
	zones, err := ParseConfig("zones.yaml", []byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Zones: zones, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return addr.String(), s
}

func TestServeRealClient(t *testing.T) {
	addr, srv := startServer(t, prometheus.NewRegistry())
	tests := []struct {
		name      string
		qname     string
		qtype     uint16
		net       string
		wantRcode int
		want      []string // answer records in text form
		wantSOA   bool
	}{
		{name: "apex A", qname: "shop.example.", qtype: dns.TypeA, wantRcode: dns.RcodeSuccess, want: []string{"shop.example.\t30\tIN\tA\t198.51.100.1"}},
		{name: "apex MX", qname: "shop.example.", qtype: dns.TypeMX, wantRcode: dns.RcodeSuccess, want: []string{"shop.example.\t30\tIN\tMX\t10 mail.shop.example."}},
		{name: "A", qname: "api.shop.example.", qtype: dns.TypeA, wantRcode: dns.RcodeSuccess, want: []string{"api.shop.example.\t30\tIN\tA\t198.51.100.10"}},
		{name: "AAAA over TCP", qname: "api.shop.example.", qtype: dns.TypeAAAA, net: "tcp", wantRcode: dns.RcodeSuccess, want: []string{"api.shop.example.\t30\tIN\tAAAA\t2001:db8::10"}},
		{name: "case preserved", qname: "ApI.ShOp.example.", qtype: dns.TypeA, wantRcode: dns.RcodeSuccess, want: []string{"ApI.ShOp.example.\t30\tIN\tA\t198.51.100.10"}},
		{name: "CNAME chased in zone", qname: "www.shop.example.", qtype: dns.TypeA, wantRcode: dns.RcodeSuccess, want: []string{"www.shop.example.\t30\tIN\tCNAME\tapi.shop.example.", "api.shop.example.\t30\tIN\tA\t198.51.100.10"}},
		{name: "CNAME out of zone", qname: "out.shop.example.", qtype: dns.TypeA, wantRcode: dns.RcodeSuccess, want: []string{"out.shop.example.\t30\tIN\tCNAME\tcdn.other.example."}},
		{name: "dangling CNAME", qname: "dangling.shop.example.", qtype: dns.TypeA, wantRcode: dns.RcodeNameError, want: []string{"dangling.shop.example.\t30\tIN\tCNAME\tnowhere.shop.example."}, wantSOA: true},
		{name: "TXT", qname: "_dmarc.shop.example.", qtype: dns.TypeTXT, wantRcode: dns.RcodeSuccess, want: []string{"_dmarc.shop.example.\t30\tIN\tTXT\t\"v=DMARC1; p=reject\""}},
		{name: "NODATA", qname: "api.shop.example.", qtype: dns.TypeTXT, wantRcode: dns.RcodeSuccess, wantSOA: true},
		{name: "NXDOMAIN", qname: "nope.shop.example.", qtype: dns.TypeA, wantRcode: dns.RcodeNameError, wantSOA: true},
		{name: "wildcard one label", qname: "img.cdn.shop.example.", qtype: dns.TypeA, wantRcode: dns.RcodeSuccess, want: []string{"img.cdn.shop.example.\t30\tIN\tA\t198.51.100.20"}},
		{name: "wildcard two labels", qname: "a.b.cdn.shop.example.", qtype: dns.TypeA, wantRcode: dns.RcodeSuccess, want: []string{"a.b.cdn.shop.example.\t30\tIN\tA\t198.51.100.20"}},
		{name: "wildcard not at its own apex", qname: "cdn.shop.example.", qtype: dns.TypeA, wantRcode: dns.RcodeSuccess, wantSOA: true},
		{name: "empty non-terminal is NODATA", qname: "deep.sub.shop.example.", qtype: dns.TypeA, wantRcode: dns.RcodeSuccess, wantSOA: true},
		{name: "below a leaf is NXDOMAIN", qname: "y.x.deep.sub.shop.example.", qtype: dns.TypeA, wantRcode: dns.RcodeNameError, wantSOA: true},
		{name: "wildcard TXT default TTL", qname: "mzxw6ytb.0.t.exfil.example.", qtype: dns.TypeTXT, wantRcode: dns.RcodeSuccess, want: []string{"mzxw6ytb.0.t.exfil.example.\t60\tIN\tTXT\t\"ok\""}},
		{name: "outside every zone", qname: "example.org.", qtype: dns.TypeA, wantRcode: dns.RcodeRefused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := &dns.Client{Net: tc.net, Timeout: 5 * time.Second}
			m := new(dns.Msg)
			m.SetQuestion(tc.qname, tc.qtype)
			r, _, err := c.Exchange(m, addr)
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != tc.wantRcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.wantRcode])
			}
			var got []string
			for _, rr := range r.Answer {
				got = append(got, rr.String())
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("answer:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			hasSOA := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == dns.TypeSOA
			if hasSOA != tc.wantSOA {
				t.Errorf("authority %v, want SOA: %v", r.Ns, tc.wantSOA)
			}
			if tc.wantRcode != dns.RcodeRefused && !r.Authoritative {
				t.Error("AA not set")
			}
		})
	}
	t.Cleanup(func() {
		if got := testutil.ToFloat64(srv.queries.WithLabelValues("NXDOMAIN")); got != 3 {
			t.Errorf("kordon_authdns_queries_total{rcode=NXDOMAIN} = %v, want 3", got)
		}
	})
}

func TestMalformedAndOddQueries(t *testing.T) {
	addr, _ := startServer(t, nil)
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Garbage is dropped by miekg/dns; the server must keep answering.
	if _, err := conn.Write([]byte{0x12, 0x34, 0xff}); err != nil {
		t.Fatal(err)
	}
	c := &dns.Client{Timeout: 5 * time.Second}
	two := new(dns.Msg)
	two.SetQuestion("api.shop.example.", dns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	r, _, err := c.Exchange(two, addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: rcode %s, want FORMERR", dns.RcodeToString[r.Rcode])
	}
	upd := new(dns.Msg)
	upd.SetUpdate("shop.example.")
	r, _, err = c.Exchange(upd, addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("update: rcode %s, want NOTIMP", dns.RcodeToString[r.Rcode])
	}
	anyq := new(dns.Msg)
	anyq.SetQuestion("api.shop.example.", dns.TypeANY)
	r, _, err = c.Exchange(anyq, addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Answer) != 1 {
		t.Errorf("ANY answered with %d records, want 1", len(r.Answer))
	}
}

func TestParseConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{name: "bad record", in: "zones:\n- origin: a.example\n  records:\n  - \"api A 1.2.3\"\n", want: "z.yaml:4:5: zones[0].records[0]: bad A A: \"1.2.3\""},
		{name: "outside zone", in: "zones:\n- origin: a.example\n  records:\n  - \"ok A 1.2.3.4\"\n  - \"b.example. A 1.2.3.4\"\n", want: "z.yaml:5:5: zones[0].records[1]: b.example. is outside the zone a.example."},
		{name: "unknown field", in: "zones:\n- origin: a.example\n  record: []\n", want: "z.yaml:3:3: zones[0].record: unknown field (did you mean \"records\"?)"},
		{name: "no zones", in: "zone: []\n", want: "z.yaml:1:1: zone: unknown field (did you mean \"zones\"?)"},
		{name: "empty", in: "", want: "z.yaml:1:1: zones: required: a list of zones"},
		{name: "duplicate key", in: "zones:\n- origin: a.example\n  ttl: 5\n  ttl: 6\n", want: "z.yaml:4:3: zones[0].ttl: duplicate key \"ttl\" (first at 3:3)"},
		{name: "ttl not a number", in: "zones:\n- origin: a.example\n  ttl: 1h\n", want: "z.yaml:3:8: zones[0].ttl: expected a non-negative integer, got \"1h\""},
		{name: "missing origin", in: "zones:\n- records: []\n", want: "z.yaml:2:3: zones[0]: origin: required"},
		{name: "duplicate zone", in: "zones:\n- origin: a.example\n- origin: A.example.\n", want: "z.yaml:3:3: zones[1]: duplicate zone a.example."},
		{name: "CNAME and A", in: "zones:\n- origin: a.example\n  records: [\"x CNAME y\", \"x A 1.2.3.4\"]\n", want: "z.yaml:2:3: zones[0]: x.a.example.: a CNAME cannot coexist with other records"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseConfig("z.yaml", []byte(tc.in))
			if err == nil {
				t.Fatal("no error")
			}
			if err.Error() != tc.want {
				t.Errorf("error:\n%s\nwant:\n%s", err, tc.want)
			}
		})
	}
}

func FuzzServe(f *testing.F) {
	zones, err := ParseConfig("zones.yaml", []byte(testConfig))
	if err != nil {
		f.Fatal(err)
	}
	s, err := New(Config{Zones: zones})
	if err != nil {
		f.Fatal(err)
	}
	for _, q := range []string{"api.shop.example.", "a.b.cdn.shop.example.", "x.t.exfil.example.", "www.shop.example."} {
		m := new(dns.Msg)
		m.SetQuestion(q, dns.TypeA)
		b, _ := m.Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := new(dns.Msg)
		if err := r.Unpack(b); err != nil {
			return
		}
		m := s.answer(r)
		if _, err := m.Pack(); err != nil {
			t.Fatalf("unpackable answer: %v", err)
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(testConfig))
	f.Add([]byte("zones:\n- origin: a.example\n  records: [\"x CNAME y\"]\n"))
	f.Add([]byte("zones: [{origin: '*', records: ['@ A 1.2.3.4']}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		zones, err := ParseConfig("f.yaml", b)
		if err != nil {
			return
		}
		for _, z := range zones {
			// Every name a zone holds must be answerable.
			for name := range z.exists {
				for _, qt := range []uint16{dns.TypeA, dns.TypeTXT, dns.TypeANY} {
					z.lookup(name, qt)
				}
			}
		}
	})
}
