package dnsguard

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"
	"time"
)

func TestAppendEventMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	evs := []QueryEvent{
		{Time: time.Date(2026, 11, 22, 12, 0, 0, 123456789, time.UTC), Client: Client{IP: netip.MustParseAddr("127.0.0.10"), Namespace: "shop", Pod: "frontend", ServiceAccount: "frontend", SPIFFEID: "spiffe://cluster.local/ns/shop/sa/frontend", Node: "dev"},
			QName: "img.cdn.example.", QType: "A", RCode: "NOERROR", Verdict: VerdictAllowed, Policy: "shop/frontend-egress", Upstream: "127.0.0.1:53", Cached: true, Latency: 0.000108335,
			Answers: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}},
		{Time: time.Unix(0, 0).UTC(), QName: `a\200"b<c>&\\.example.`, QType: "TYPE65399", RCode: "NXDOMAIN", Verdict: VerdictBlocked, Latency: 3e-8},
		{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)), Client: Client{IP: netip.MustParseAddr("::1")}, QName: "\xff\x00\u2028.", QType: "NULL", Latency: 2.5},
	}
	for i := range evs {
		var want bytes.Buffer
		if err := json.NewEncoder(&want).Encode(&evs[i]); err != nil {
			t.Fatal(err)
		}
		got := appendEvent(nil, &evs[i])
		if string(got) != want.String() {
			t.Errorf("event %d:\n got %s\nwant %s", i, got, want.String())
		}
	}
}

func FuzzAppendEvent(f *testing.F) {
	f.Add("a.example.", "NS", 0.25)
	f.Fuzz(func(t *testing.T, qname, policy string, latency float64) {
		ev := QueryEvent{Time: time.Unix(1, 2).UTC(), QName: qname, Policy: policy, Latency: latency, Client: Client{IP: netip.MustParseAddr("127.0.0.1")}}
		var want bytes.Buffer
		if err := json.NewEncoder(&want).Encode(&ev); err != nil {
			return // NaN/Inf: encoding/json refuses; we write 0
		}
		if got := appendEvent(nil, &ev); string(got) != want.String() {
			t.Fatalf("\n got %s\nwant %s", got, want.String())
		}
	})
}
