package replay

import (
	"bytes"
	"compress/gzip"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/dnsguard/detect/internal/capture"
	"github.com/miekg/dns"
)

var t0 = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

var client = dnsguard.Client{IP: netip.MustParseAddr("127.0.0.10"), Namespace: "shop", Pod: "frontend", ServiceAccount: "frontend",
	SPIFFEID: "spiffe://cluster.local/ns/shop/sa/frontend", Node: "dev"}

// captures loads the real tunnel captures of the detector's test data
// (dns2tcp and iodine, taken through dnsguard's query log) as events at
// their recorded offsets from t0.
func captures(t *testing.T) map[string][]dnsguard.QueryEvent {
	t.Helper()
	caps, err := capture.Load("../testdata/capture-*.jsonl.gz")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]dnsguard.QueryEvent{}
	for _, c := range caps {
		for _, r := range c.Records {
			out[c.Name] = append(out[c.Name], event(t0.Add(time.Duration(r.T*float64(time.Second))), r.QName, r.QType, r.RCode))
		}
	}
	return out
}

// eachSession runs test on the captures and a slow session of the given
// hours, in parallel subtests.
func eachSession(t *testing.T, slowHours float64, test func(t *testing.T, evs []dnsguard.QueryEvent)) {
	t.Helper()
	sessions := captures(t)
	sessions["slow-base32-2KBh"] = slowSession("metrics-sync.example.net", 2048, slowHours)
	for name, evs := range sessions {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			test(t, evs)
		})
	}
}

func event(at time.Time, qname, qtype, rcode string) dnsguard.QueryEvent {
	if rcode == "" {
		rcode = "NOERROR"
	}
	return dnsguard.QueryEvent{Time: at, Client: client, QName: qname, QType: qtype, QTypeCode: dns.StringToType[qtype], RCode: rcode, Verdict: dnsguard.VerdictAllowed}
}

// slowSession leaks rate bytes an hour of random data in base32 A queries.
func slowSession(domain string, rate float64, hours float64) []dnsguard.QueryEvent {
	rng := rand.New(rand.NewPCG(1, 2))
	const chunk = 30
	gap := time.Duration(chunk / rate * float64(time.Hour))
	var evs []dnsguard.QueryEvent
	for at := t0; at.Before(t0.Add(time.Duration(hours * float64(time.Hour)))); at = at.Add(gap) {
		b := make([]byte, chunk)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		enc := strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString(b), "="))
		evs = append(evs, event(at, enc+"."+domain+".", "A", ""))
	}
	return evs
}

// queryLog writes events as the resolver's query log does (the encoder
// matches encoding/json, TestAppendEventMatchesEncodingJSON).
func queryLog(t *testing.T, evs []dnsguard.QueryEvent) []byte {
	t.Helper()
	var b bytes.Buffer
	for i := range evs {
		line, err := json.Marshal(&evs[i])
		if err != nil {
			t.Fatal(err)
		}
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

type file struct {
	name string
	data []byte
}

func replayAll(t *testing.T, cfg Config, files ...file) ([]alert.Alert, []Stats) {
	t.Helper()
	rp := New(cfg)
	var out []alert.Alert
	var stats []Stats
	for _, f := range files {
		st, err := rp.Read(f.name, bytes.NewReader(f.data), func(a alert.Alert) error { out = append(out, a); return nil })
		if err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		stats = append(stats, st)
	}
	return out, stats
}

// live runs events through the resolver's own inspector and feed.
func live(t *testing.T, evs []dnsguard.QueryEvent) []alert.Alert {
	t.Helper()
	feed, err := alert.NewFeed(alert.Config{Dir: t.TempDir(), Fsync: alert.FsyncInterval})
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	in, err := dnsguard.NewInspector(dnsguard.InspectorConfig{Feed: feed, QueueSize: len(evs) + 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range evs {
		in.Observe(&evs[i])
	}
	in.Close() // drains the queue
	return feed.List(alert.Filter{})
}

// TestReplayMatchesLiveInspector: the real tunnel captures and a slow
// session, written as query logs (split across two files) and replayed
// with their timestamps, give exactly the alerts the live inspector
// publishes to its feed for the same queries.
func TestReplayMatchesLiveInspector(t *testing.T) {
	t.Parallel()
	eachSession(t, 3, func(t *testing.T, evs []dnsguard.QueryEvent) {
		want := live(t, evs)
		if len(want) == 0 {
			t.Fatal("the live inspector raised nothing")
		}
		half := len(evs) / 2
		got, stats := replayAll(t, Config{}, file{"a.jsonl", queryLog(t, evs[:half])}, file{"b.jsonl", queryLog(t, evs[half:])})
		if stats[0].Records+stats[1].Records != len(evs) || stats[0].Skipped+stats[1].Skipped != 0 {
			t.Fatalf("stats %+v", stats)
		}
		if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
			t.Fatalf("replay:\n%s\nlive:\n%s", g, w)
		}
		t.Logf("%d alerts, the first at +%s: %s", len(got), got[0].Time.Sub(evs[0].Time), got[0].Message)
	})
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReplayCarriesStateAcrossFiles: a slow leak split across two files is
// caught where the two together cross the cap, earlier than the second
// file alone would be.
func TestReplayCarriesStateAcrossFiles(t *testing.T) {
	t.Parallel()
	evs := slowSession("metrics-sync.example.net", 2048, 2)
	var cut int
	for cut = range evs {
		if evs[cut].Time.Sub(t0) >= 25*time.Minute {
			break
		}
	}
	a, b := file{"first.jsonl", queryLog(t, evs[:cut])}, file{"second.jsonl", queryLog(t, evs[cut:])}
	if got, _ := replayAll(t, Config{}, a); len(got) != 0 {
		t.Fatalf("the first 25 minutes alone alerted: %v", got)
	}
	both, _ := replayAll(t, Config{}, a, b)
	alone, _ := replayAll(t, Config{}, b)
	if len(both) == 0 || len(alone) == 0 {
		t.Fatalf("both %d alerts, second alone %d", len(both), len(alone))
	}
	if !both[0].Time.Before(alone[0].Time) {
		t.Fatalf("carried state alerted at %s, the second file alone at %s", both[0].Time, alone[0].Time)
	}
	t.Logf("alert at +%s with state carried, +%s from the second file alone", both[0].Time.Sub(t0), alone[0].Time.Sub(t0))
}

// TestReplayGzip: compressed query logs and dnstap files replay as they
// are.
func TestReplayGzip(t *testing.T) {
	t.Parallel()
	evs := asUnknownClient(slowSession("metrics-sync.example.net", 2048, 2), "127.0.0.1")
	gz := func(b []byte) []byte {
		var out bytes.Buffer
		zw := gzip.NewWriter(&out)
		zw.Write(b)
		zw.Close()
		return out.Bytes()
	}
	want, _ := replayAll(t, Config{}, file{"q.jsonl", queryLog(t, evs)})
	for _, f := range []file{{"q.jsonl.gz", gz(queryLog(t, evs))}, {"q.dnstap.gz", gz(dnstapFile(t, evs))}} {
		got, stats := replayAll(t, Config{}, f)
		if stats[0].Records != len(evs) || len(want) == 0 || mustJSON(t, got) != mustJSON(t, want) {
			t.Errorf("%s: %+v, %d alerts, want %d", f.name, stats[0], len(got), len(want))
		}
	}
}

// TestReplayBadRecords: each bad line is reported with file and line and
// skipped; the lines after it are still read.
func TestReplayBadRecords(t *testing.T) {
	t.Parallel()
	good := string(queryLog(t, []dnsguard.QueryEvent{event(t0, "www.example.com.", "A", "")}))
	input := good +
		"garbage\n" +
		"\n" +
		`{"time":"yesterday","client":{"ip":"127.0.0.1"},"qname":"a.example.","qtype":"A"}` + "\n" +
		`{"time":"2026-11-22T10:00:01Z","client":{"ip":"127.0.0.1"},"qtype":"A"}` + "\n" +
		`{"time":"2026-11-22T10:00:01Z","client":{"ip":"127.0.0.1"},"qname":"a.example.","qtype":"BOGUS"}` + "\n" +
		`{"time":"2026-11-22T10:00:01Z","client":{"ip":"300.0.0.1"},"qname":"a.example.","qtype":"A"}` + "\n" +
		`{"time":"2026-11-22T10:00:01Z","qname":"a.example.","qtype":"A"}` + "\n" +
		`{"time":"2026-11-22T10:00:01Z","client":{"ip":"127.0.0.1"},"qname":42,"qtype":"A"}` + "\n" +
		`{"time":"2026-11-22T10:00:01Z","client":{"ip":"127.0.0.1"},"qname":"a.example.","qtype":"TYPE65399"} {}` + "\n" +
		good + good
	_, stats := replayAll(t, Config{}, file{"q.jsonl", []byte(input)})
	st := stats[0]
	want := []string{
		`q.jsonl:2: not a query log record: invalid character 'g' looking for beginning of value`,
		`q.jsonl:4: "time": "yesterday" is not an RFC 3339 time`,
		`q.jsonl:5: missing "qname"`,
		`q.jsonl:6: qtype "BOGUS": unknown record type`,
		`q.jsonl:7: client.ip: ParseAddr("300.0.0.1"): IPv4 field has value >255`,
		`q.jsonl:8: missing "client" (an ip or a pod)`,
		`q.jsonl:9: not a query log record: field "qname": number where a string belongs`,
		`q.jsonl:10: not a query log record: more than one JSON value on the line`,
	}
	var got []string
	for _, e := range st.Errors {
		got = append(got, e.Error())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if st.Format != FormatQueryLog || st.Records != 3 || st.Skipped != len(want) {
		t.Errorf("stats: %+v", st)
	}
	// Only the first errors are kept; every bad record is counted.
	_, stats = replayAll(t, Config{MaxErrors: 2}, file{"q.jsonl", []byte(input)})
	if len(stats[0].Errors) != 2 || stats[0].Skipped != len(want) {
		t.Errorf("MaxErrors 2: %d errors kept, %d skipped", len(stats[0].Errors), stats[0].Skipped)
	}
}

// TestReplayOverlongLine: a line past the 1 MiB limit is skipped and the
// next one read.
func TestReplayOverlongLine(t *testing.T) {
	t.Parallel()
	good := string(queryLog(t, []dnsguard.QueryEvent{event(t0, "www.example.com.", "A", "")}))
	input := good + `{"qname":"` + strings.Repeat("a", 2<<20) + "\"}\n" + good
	_, stats := replayAll(t, Config{}, file{"big.jsonl", []byte(input)})
	if st := stats[0]; st.Records != 2 || st.Skipped != 1 || st.Errors[0].Error() != "big.jsonl:2: line longer than 1048576 bytes" {
		t.Fatalf("stats %+v %v", st, st.Errors)
	}
}

func FuzzReadQueryLog(f *testing.F) {
	f.Add([]byte(`{"time":"2026-11-22T10:00:01Z","client":{"ip":"127.0.0.1"},"qname":"a.example.","qtype":"A"}` + "\n"))
	f.Add([]byte("\x00\x00\x00\x00\x00\x00\x00\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rp := New(Config{})
		_, _ = rp.Read("fuzz", bytes.NewReader(b), func(alert.Alert) error { return nil })
	})
}

func ExampleReplayer_Read() {
	rp := New(Config{})
	log := `{"time":"2026-11-22T10:00:00Z","client":{"ip":"127.0.0.1"},"qname":"www.example.com.","qtype":"A","rcode":"NOERROR","verdict":"allowed","latencySeconds":0.0001}
not json
`
	st, err := rp.Read("queries.jsonl", strings.NewReader(log), func(a alert.Alert) error { fmt.Println(a.Kind, a.Domain); return nil })
	fmt.Println(st.Records, st.Skipped, st.Errors[0], err)
	// Output: 1 1 queries.jsonl:2: not a query log record: invalid character 'o' in literal null (expecting 'u') <nil>
}
