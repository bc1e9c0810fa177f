package flowlog

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
)

// TestSummaryReadsTheFlowLog feeds the summary records in the flow log's
// own encoding (a long flow's periodic records carry cumulative counters)
// split across writes, and reads it back over HTTP.
func TestSummaryReadsTheFlowLog(t *testing.T) {
	t.Parallel()
	s, err := NewSummary(SummaryConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := Client{IP: netip.MustParseAddr("10.0.0.5"), Namespace: "shop", Pod: "frontend"}
	api, raw := netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("198.51.100.7")
	rec := func(sport uint16, dst netip.Addr, out, in uint64, final bool, verdict string) Record {
		return Record{Time: t0, Client: c, Proto: "tcp", Src: c.IP, SPort: sport, Dst: dst, DPort: 443,
			BytesOut: out, BytesIn: in, Verdict: verdict, Final: final, DNSName: map[netip.Addr]string{api: "api.shop.example"}[dst]}
	}
	blocked := rec(40003, raw, 0, 0, true, VerdictBlocked)
	blocked.Reason = "policy"
	var ch chunk
	for _, r := range []Record{
		rec(40001, api, 100, 1000, false, VerdictAllowed), // long flow, periodic
		rec(40001, api, 300, 5000, false, VerdictAllowed), // cumulative
		rec(40001, api, 400, 6000, true, VerdictAllowed),  // final
		rec(40002, api, 50, 60, true, VerdictAllowed),     // a short one
		rec(40004, raw, 10, 0, true, VerdictAudit),
		blocked, blocked,
	} {
		ch.add(&r)
	}
	ch.b = append(ch.b, "{}\n"...)
	for _, line := range bytes.Split(ch.b, []byte("\n")) {
		s.AddLine(line)
	}
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/v1/egress/flows/summary?namespace=shop&pod=frontend")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Workloads []WorkloadFlows `json:"workloads"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	rawDest := Destination{Dst: raw, Port: 443, Proto: "tcp", BytesOut: 10, Flows: 1, Blocked: 2, Reason: "policy", Verdict: VerdictBlocked, LastSeen: t0}
	want := []WorkloadFlows{{
		Subject: workload.Subject{Workload: "shop/frontend", Namespace: "shop", Pod: "frontend", ClientIP: "10.0.0.5"},
		Destinations: []Destination{
			{Dst: api, Port: 443, Proto: "tcp", DNSName: "api.shop.example", BytesOut: 450, BytesIn: 6060, Flows: 2, Verdict: VerdictAllowed, LastSeen: t0},
			rawDest,
		},
		Attempts: []Destination{rawDest},
	}}
	if !reflect.DeepEqual(got.Workloads, want) {
		t.Errorf("summary\n got %+v\nwant %+v", got.Workloads, want)
	}
	if n := len(s.Workloads(workload.SummaryQuery{Namespace: "other"})); n != 0 {
		t.Errorf("namespace other: %d workloads", n)
	}
}

// TestSummaryOpenFlowsFull: with the open-flow table full, a flow already
// in it still adds each periodic record's growth, a flow not in it adds its
// bytes with its final record only, and counters that go backwards never
// wrap the totals.
func TestSummaryOpenFlowsFull(t *testing.T) {
	t.Parallel()
	s, err := NewSummary(SummaryConfig{MaxOpenFlows: 1})
	if err != nil {
		t.Fatal(err)
	}
	c := Client{IP: netip.MustParseAddr("10.0.0.5"), Namespace: "shop", Pod: "frontend"}
	dst := netip.MustParseAddr("203.0.113.10")
	bytesOut := func() (out, in uint64) {
		t.Helper()
		w := s.Workloads(workload.SummaryQuery{})
		if len(w) != 1 {
			t.Fatalf("%d workloads", len(w))
		}
		for _, d := range w[0].Destinations {
			out, in = out+d.BytesOut, in+d.BytesIn
		}
		return out, in
	}
	steps := []struct {
		name          string
		sport         uint16
		out, in       uint64
		final         bool
		wantOut, want uint64
	}{
		{name: "first flow remembered", sport: 1, out: 100, in: 1000, wantOut: 100, want: 1000},
		{name: "second flow not remembered", sport: 2, out: 7, in: 70, wantOut: 100, want: 1000},
		{name: "known flow grows with table full", sport: 1, out: 300, in: 5000, wantOut: 300, want: 5000},
		{name: "known flow counters go backwards", sport: 1, out: 10, in: 20, wantOut: 300, want: 5000},
		{name: "known flow grows from new baseline", sport: 1, out: 15, in: 30, wantOut: 305, want: 5010},
		{name: "second flow's final adds all", sport: 2, out: 9, in: 90, final: true, wantOut: 314, want: 5100},
	}
	for _, st := range steps {
		s.add(&Record{Client: c, Proto: "tcp", Src: c.IP, SPort: st.sport, Dst: dst, DPort: 443,
			BytesOut: st.out, BytesIn: st.in, Verdict: VerdictAllowed, Final: st.final})
		if out, in := bytesOut(); out != st.wantOut || in != st.want {
			t.Fatalf("%s: bytes out/in %d/%d, want %d/%d", st.name, out, in, st.wantOut, st.want)
		}
	}
}
