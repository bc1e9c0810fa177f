package detect

import (
	"bufio"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/detect/internal/capture"
	"github.com/miekg/dns"
)

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

// session is one replayable stream of queries from one client.
type session struct {
	name    string
	queries []Query
}

// chunkLabels splits s into DNS labels of at most n characters.
func chunkLabels(s string, n int) string {
	var parts []string
	for len(s) > n {
		parts = append(parts, s[:n])
		s = s[n:]
	}
	if s != "" {
		parts = append(parts, s)
	}
	return strings.Join(parts, ".")
}

// escapeBinary renders raw bytes as miekg/dns presentation text.
func escapeBinary(b []byte) string {
	var sb strings.Builder
	for _, c := range b {
		switch {
		case c == '.' || c == '\\' || c == '"' || c == '(' || c == ')' || c == ';' || c == ' ' || c == '@' || c == '$':
			sb.WriteByte('\\')
			sb.WriteByte(c)
		case c < 0x21 || c > 0x7e:
			fmt.Fprintf(&sb, "\\%03d", c)
		default:
			sb.WriteByte(c)
		}
	}
	return sb.String()
}

// tunnel builds a synthetic tunnel session: n queries of encode(chunk) under
// domain with the given type, one every gap.
func tunnel(name, client, domain string, qtype uint16, gap time.Duration, n int, encode func([]byte) string) session {
	rng := rand.New(rand.NewPCG(uint64(len(name)), 7))
	s := session{name: name}
	for i := 0; i < n; i++ {
		data := make([]byte, 40+rng.IntN(60))
		for j := range data {
			data[j] = byte(rng.IntN(256))
		}
		s.queries = append(s.queries, Query{Time: t0.Add(time.Duration(i) * gap), Client: client, QName: encode(data) + "." + domain + ".", QType: qtype})
	}
	return s
}

var (
	b32 = func(b []byte) string {
		return chunkLabels(strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString(b), "=")), 60)
	}
	hexEnc = func(b []byte) string { return chunkLabels(hex.EncodeToString(b), 62) }
	// dns2tcp-like: base64 with + / = in 63-character labels.
	b64 = func(b []byte) string { return chunkLabels(base64.StdEncoding.EncodeToString(b), 63) }
)

func rawLabels(b []byte) string {
	var parts []string
	for len(b) > 50 {
		parts = append(parts, escapeBinary(b[:50]))
		b = b[50:]
	}
	parts = append(parts, escapeBinary(b))
	return strings.Join(parts, ".")
}

// syntheticTunnels covers the shapes of iodine, dnscat2, dns2tcp, dnstt
// and plain exfiltration, each with domains, types and encodings that no
// tool uses by default: detection must not depend on them.
func syntheticTunnels() []session {
	rawEnc := func(b []byte) string {
		for i := range b {
			b[i] |= 0x80
		}
		return rawLabels(b)
	}
	return []session{
		tunnel("base32-A-exfil", "shop/report-worker", "cdn-metrics.example.net", dns.TypeA, 100*time.Millisecond, 60, b32),
		tunnel("base32-TXT-dnstt-like", "shop/a", "t.attacker.example", dns.TypeTXT, 50*time.Millisecond, 60, b32),
		tunnel("hex-CNAME-dnscat-like", "shop/b", "innocent-looking.org", dns.TypeCNAME, 80*time.Millisecond, 60, hexEnc),
		tunnel("hex-MX", "shop/c", "mail-relay.co.uk", dns.TypeMX, 80*time.Millisecond, 60, hexEnc),
		tunnel("base64-TXT-dns2tcp-like", "shop/d", "tun.example.com", dns.TypeTXT, 30*time.Millisecond, 60, b64),
		tunnel("base64-A-no-markers", "shop/e", "static-assets.io", dns.TypeA, 30*time.Millisecond, 60, b64),
		tunnel("raw-NULL-iodine-like", "shop/f", "i.example.org", dns.TypeNULL, 20*time.Millisecond, 60, rawEnc),
		tunnel("raw-A-iodine-variant", "shop/g", "weather-api.net", dns.TypeA, 20*time.Millisecond, 60, rawEnc),
		tunnel("base32-private-type", "shop/h", "x.example.dev", 65399, 100*time.Millisecond, 60, b32),
		tunnel("hex-AAAA-slow-200ms", "shop/i", "updates.example.app", dns.TypeAAAA, 200*time.Millisecond, 60, hexEnc),
	}
}

// loadCaptures reads testdata/*.jsonl(.gz): captures of the real tools
// (one JSON object per query: t (seconds), qname, qtype).
func loadCaptures(t *testing.T) []session {
	t.Helper()
	caps, err := capture.Load("testdata/capture-*.jsonl.gz")
	if err != nil {
		t.Fatal(err)
	}
	var out []session
	for _, c := range caps {
		s := session{name: c.Name}
		for _, r := range c.Records {
			s.queries = append(s.queries, Query{Time: t0.Add(time.Duration(r.T * float64(time.Second))), Client: "capture", QName: r.QName, QType: dns.StringToType[r.QType], NXDomain: r.RCode == "NXDOMAIN"})
		}
		out = append(out, s)
	}
	return out
}

// TestDetectsTunnels: every tunnel session is detected within its first
// 50 queries and its first 5 seconds.
func TestDetectsTunnels(t *testing.T) {
	t.Parallel()
	sessions := append(syntheticTunnels(), loadCaptures(t)...)
	detected := 0
	for _, s := range sessions {
		d := New(Config{})
		var hit *Detection
		var at int
		for i, q := range s.queries {
			if det := d.Observe(q, Medium); det != nil {
				hit, at = det, i+1
				break
			}
		}
		if hit == nil {
			t.Errorf("%s: not detected in %d queries", s.name, len(s.queries))
			continue
		}
		// Time counts from the session's start, or from the end of the
		// last idle pause of 5 s or more before detection: the real
		// iodine client idles ~10 s after its version handshake, before
		// any data flows, and that idle time is not detection latency.
		start := s.queries[0].Time
		for i := 1; i < at; i++ {
			if s.queries[i].Time.Sub(s.queries[i-1].Time) >= 5*time.Second {
				start = s.queries[i].Time
			}
		}
		elapsed := s.queries[at-1].Time.Sub(start)
		if at > 50 || elapsed > 5*time.Second {
			t.Errorf("%s: detected only after %d queries / %s", s.name, at, elapsed)
			continue
		}
		detected++
		t.Logf("%-32s detected after %2d queries, %5.2fs: %s %s score %.2f encoding %s", s.name, at, elapsed.Seconds(), hit.Kind, hit.Severity, hit.Score, hit.Evidence.Encoding)
	}
	t.Logf("recall: %d/%d sessions", detected, len(sessions))
}

// benignCorpus builds realistic service and browsing traffic: the 500
// top sites with their usual hosts, CDN, cloud, mail (MX, DKIM, DMARC,
// SPF), reputation and DNSBL lookups, telemetry with identifiers,
// in-cluster names and long-but-normal names, from 30 workloads over an
// hour.
func benignCorpus(t *testing.T) []Query {
	t.Helper()
	f, err := os.Open("testdata/top-sites.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var sites []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
			sites = append(sites, strings.TrimPrefix(l, "www."))
		}
	}
	rng := rand.New(rand.NewPCG(42, 42))
	hexN := randHex(rng)
	uuid := func() string { return hexN(8) + "-" + hexN(4) + "-" + hexN(4) + "-" + hexN(4) + "-" + hexN(12) }
	var qs []Query
	now := t0
	add := func(client, name string, qt uint16, nx bool) {
		now = now.Add(time.Duration(5+rng.IntN(60)) * time.Millisecond)
		qs = append(qs, Query{Time: now, Client: client, QName: name + ".", QType: qt, NXDomain: nx})
	}
	for round := 0; round < 4; round++ {
		for c := 0; c < 30; c++ {
			client := fmt.Sprintf("shop/pod-%d", c)
			for k := 0; k < 40; k++ {
				site := sites[rng.IntN(len(sites))]
				for _, h := range []string{"", "www.", "api.", "static.", "img.", "cdn.", "login.", "m."} {
					add(client, h+site, dns.TypeA, false)
					add(client, h+site, dns.TypeAAAA, false)
				}
				add(client, site, dns.TypeHTTPS, false)
				// CDN asset hosts with short hashes, a few per site.
				add(client, hexN(12)+".cdn."+site, dns.TypeA, false)
				add(client, "d"+hexN(13)+".cloudfront.net", dns.TypeA, false)
				add(client, site+".edgekey.net", dns.TypeCNAME, false)
			}
			// Mail: MX, SPF, DKIM, DMARC, DNSBL and reputation lookups.
			for k := 0; k < 20; k++ {
				site := sites[rng.IntN(len(sites))]
				add(client, site, dns.TypeMX, false)
				add(client, site, dns.TypeTXT, false)
				add(client, fmt.Sprintf("selector%d._domainkey.%s", rng.IntN(3), site), dns.TypeTXT, false)
				add(client, "_dmarc."+site, dns.TypeTXT, false)
				add(client, fmt.Sprintf("%d.%d.%d.%d.zen.spamhaus.org", rng.IntN(256), rng.IntN(256), rng.IntN(256), rng.IntN(256)), dns.TypeA, true)
				add(client, "0.0.0.0.1.0.0.4e."+hexN(26)+".avts.mcafee.com", dns.TypeA, false)
				add(client, "_xmpp-client._tcp."+site, dns.TypeSRV, true)
			}
			// Telemetry and sessions with UUIDs, spread over the hour.
			for k := 0; k < 6; k++ {
				add(client, uuid()+".events.data.microsoft.com", dns.TypeA, false)
				add(client, "session-"+uuid()+".push.example-app.com", dns.TypeA, false)
				now = now.Add(20 * time.Second)
			}
			// In-cluster and long-but-normal names.
			add(client, "payments.shop.svc.cluster.local", dns.TypeA, false)
			add(client, "checkout-7f9c8d6b5-x2k4q.checkout.shop.svc.cluster.local", dns.TypeA, false)
			add(client, "this-is-a-very-long-but-perfectly-normal-hostname-for-the-reporting-service.internal.example.org", dns.TypeA, false)
			add(client, "ip-10-0-12-34.eu-west-1.compute.internal.example.com", dns.TypeA, false)
		}
	}
	return qs
}

// TestNoAlertsOnBenignCorpus: zero detections on realistic benign traffic,
// at every sensitivity.
func TestNoAlertsOnBenignCorpus(t *testing.T) {
	t.Parallel()
	qs := benignCorpus(t)
	for _, sens := range []Sensitivity{Low, Medium, High} {
		d := New(Config{})
		alerts := 0
		for _, q := range qs {
			if det := d.Observe(q, sens); det != nil {
				alerts++
				if alerts <= 3 {
					t.Errorf("%s: false positive on %s/%s: %+v", sens, det.Client, det.Domain, det.Evidence)
				}
			}
		}
		t.Logf("sensitivity %s: %d alerts on %d benign queries", sens, alerts, len(qs))
	}
}

// TestBoundedMemory: a million distinct domains never grow the state past
// the key cap.
func TestBoundedMemory(t *testing.T) {
	t.Parallel()
	d := New(Config{MaxKeys: 1000})
	for i := 0; i < 1_000_000; i++ {
		d.Observe(Query{Time: t0.Add(time.Duration(i) * time.Millisecond), Client: "c", QName: fmt.Sprintf("x%d.d%d.com.", i, i), QType: dns.TypeA}, Medium)
		if d.Tracked() > 1000 {
			t.Fatalf("tracked %d keys after %d domains", d.Tracked(), i+1)
		}
	}
	if d.lru.Len() != d.Tracked() {
		t.Fatal("LRU and index disagree")
	}
	// One domain with a million unique subdomains stays within its caps.
	d = New(Config{})
	for i := 0; i < 100_000; i++ {
		d.Observe(Query{Time: t0.Add(time.Duration(i) * time.Millisecond), Client: "c", QName: fmt.Sprintf("%032x.big.example.", i), QType: dns.TypeA}, Medium)
	}
	for _, el := range d.keys {
		st := el.Value.(*state)
		h := &st.hour
		if len(st.unique) > maxUnique || len(st.samples) > maxSamples || len(st.times) > maxTimes ||
			len(h.names[0]) > maxHourNames || len(h.names[1]) > maxHourNames || len(h.labels[0]) > maxHourLabels || len(h.labels[1]) > maxHourLabels {
			t.Fatalf("per-key state exceeded caps: %d unique, %d+%d hourly names, %d+%d labels", len(st.unique), len(h.names[0]), len(h.names[1]), len(h.labels[0]), len(h.labels[1]))
		}
	}
}

// TestSensitivity: a borderline channel is caught at High, not at Low.
func TestSensitivity(t *testing.T) {
	t.Parallel()
	s := tunnel("borderline", "c", "slowish.example", dns.TypeA, 3*time.Second, 12, func(b []byte) string { return hexEnc(b[:12]) })
	caught := map[Sensitivity]bool{}
	for _, sens := range []Sensitivity{Low, High} {
		d := New(Config{})
		for _, q := range s.queries {
			if d.Observe(q, sens) != nil {
				caught[sens] = true
			}
		}
	}
	if !caught[High] || caught[Low] {
		t.Fatalf("caught %v", caught)
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	cases := map[string]int{
		"www":                                  classPlain,
		"deadbeef00112233445566778899aabb":     classHex,
		"mzxw6ytboi2dsnzzgq3tmnbu":             classBase32,
		"aGVsbG8gV29ybGQhIFRoaXMgaXMgYmFzZTY0": classBase64,
		"ab\x90\xffcd":                         classBinary,
	}
	for in, want := range cases {
		if got := classify(in); got != want {
			t.Errorf("classify(%q) = %s, want %s", in, classNames[got], classNames[want])
		}
	}
	if got := unescape(`a\128b\.c`); got != "a\x80b.c" {
		t.Errorf("unescape: %q", got)
	}
}

func FuzzObserve(f *testing.F) {
	f.Add("a.b.example.com.", uint16(1))
	f.Add(`\200\201.x.org.`, uint16(10))
	f.Add("..", uint16(16))
	d := New(Config{MaxKeys: 100})
	f.Fuzz(func(t *testing.T, name string, qt uint16) {
		d.Observe(Query{Time: t0, Client: "c", QName: name, QType: qt}, High)
	})
}
