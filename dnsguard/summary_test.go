package dnsguard

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
)

// TestQuerySummaryReadsTheQueryLog feeds the summary the query log's own
// encoding, split at awkward places, and reads it back over HTTP.
func TestQuerySummaryReadsTheQueryLog(t *testing.T) {
	t.Parallel()
	s, err := NewQuerySummary(SummaryConfig{MaxDomains: 2, MaxNames: 5})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	worker := Client{IP: netip.MustParseAddr("127.0.0.13"), Namespace: "shop", Pod: "report-worker"}
	unknown := Client{IP: netip.MustParseAddr("127.0.0.99")}
	evs := []QueryEvent{
		{Time: t0, Client: worker, QName: "api.shop.example.", QType: "A", RCode: "NOERROR", Verdict: VerdictAllowed},
		{Time: t0.Add(time.Second), Client: worker, QName: "api.shop.example.", QType: "A", RCode: "NOERROR", Verdict: VerdictAllowed},
		{Time: t0, Client: worker, QName: "cdn.shopassets.example.", QType: "A", RCode: "NOERROR", Verdict: VerdictAudit, Policy: "shop/audit"},
		{Time: t0, Client: worker, QName: "www.shop.example.", QType: "A", RCode: "NOERROR", Verdict: VerdictAllowed},
		{Time: t0, Client: worker, QName: "third.example.", QType: "A", RCode: "NOERROR", Verdict: VerdictAllowed},
		{Time: t0, Client: worker, QName: "x1.telemetry-cdn.example.", QType: "A", RCode: "NXDOMAIN", Verdict: VerdictQuarantined, Policy: "quarantine"},
		{Time: t0, Client: worker, QName: "x2.telemetry-cdn.example.", QType: "A", RCode: "NXDOMAIN", Verdict: VerdictQuarantined, Policy: "quarantine"},
		{Time: t0, Client: worker, QName: "x3.telemetry-cdn.example.", QType: "A", RCode: "NXDOMAIN", Verdict: VerdictQuarantined, Policy: "quarantine"},
		{Time: t0, Client: worker, QName: "X1.Telemetry-CDN.example.", QType: "A", RCode: "NXDOMAIN", Verdict: VerdictQuarantined, Policy: "quarantine"},
		{Time: t0, Client: unknown, QName: "evil.example.", QType: "A", RCode: "NXDOMAIN", Verdict: VerdictBlocked, Policy: "blocklist"},
	}
	var log []byte
	for i := range evs {
		log = appendEvent(log, &evs[i])
	}
	log = append(log, "not json\n"...)
	for _, line := range bytes.Split(log, []byte("\n")) {
		s.AddLine(line)
	}
	got := s.Workloads(workload.SummaryQuery{Namespace: "shop"})
	want := []WorkloadSummary{{
		Subject: workload.Subject{Workload: "shop/report-worker", Namespace: "shop", Pod: "report-worker", ClientIP: "127.0.0.13"},
		Queries: 9, Untracked: 1,
		Resolved: []DomainCount{
			{Domain: "shop.example", Queries: 3, Names: 2, LastName: "www.shop.example.", Verdict: VerdictAllowed, LastSeen: t0.Add(time.Second)},
			{Domain: "shopassets.example", Queries: 1, Names: 1, LastName: "cdn.shopassets.example.", Verdict: VerdictAudit, Policy: "shop/audit", LastSeen: t0},
		},
		// MaxNames 5: the fourth distinct name is not remembered; domains
		// are case-folded, names are not.
		Blocked: []DomainCount{{Domain: "telemetry-cdn.example", Queries: 4, Names: 2, NamesCapped: true, LastName: "X1.Telemetry-CDN.example.", Verdict: VerdictQuarantined, Policy: "quarantine", LastSeen: t0}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("summary\n got %+v\nwant %+v", got, want)
	}
	if all := s.Workloads(workload.SummaryQuery{}); len(all) != 2 || all[0].Workload != "127.0.0.99" || all[0].Blocked[0].Policy != "blocklist" {
		t.Errorf("all workloads: %+v", all)
	}
	// Over HTTP: the same, as JSON; a bad top is the caller's error.
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	for _, c := range []struct {
		query string
		code  int
		body  string
	}{
		{"?pod=report-worker&top=1", 200, `"resolved":[{"domain":"shop.example","queries":3,"names":2,`},
		{"?top=x", 400, `top: want a non-negative integer, got "x"`},
	} {
		resp, err := http.Get(srv.URL + "/v1/dns/summary" + c.query)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || !strings.Contains(string(b), c.body) {
			t.Errorf("%s: %d %s, want %d with %s", c.query, resp.StatusCode, b, c.code, c.body)
		}
	}
}
