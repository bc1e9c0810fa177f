package dnsguard

import (
	"bytes"
	"cmp"
	"encoding/json"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/prometheus/client_golang/prometheus"
)

// SummaryConfig bounds a QuerySummary.
type SummaryConfig struct {
	// MaxWorkloads is how many workloads are tracked (default 4096); the
	// queries of further ones are counted in
	// kordon_dnsguard_summary_untracked_total only.
	MaxWorkloads int
	// MaxDomains is how many registrable domains are kept per workload
	// and verdict class (default 256); queries for further ones are
	// counted in the workload's untracked count.
	MaxDomains int
	// MaxNames bounds the distinct query names remembered across the
	// whole summary to count each domain's names (default 100,000);
	// beyond it a domain's count stops growing and is marked capped.
	MaxNames int
	// Metrics registers kordon_dnsguard_summary_*; nil skips them.
	Metrics prometheus.Registerer
}

// QuerySummary reads the query log and keeps, per workload, the
// registrable domains it resolved and those it was refused, with query
// counts, how many distinct names under each (an exfiltration shows as
// hundreds of names under one domain) and the latest name: what the web
// console shows. It reads the lines the query log writes (AddLine; kordon
// feeds it from the writer given to Config.QueryLog), so it costs the
// query path nothing: the log's writer goroutine feeds it, and when it
// falls behind the log drops and counts records as it does for a slow
// file. Lines that are not query records are skipped and counted.
type QuerySummary struct {
	cfg SummaryConfig

	mu        sync.Mutex
	workloads map[string]*workloadQueries
	names     int // distinct names remembered, all domains

	metrics *workload.SummaryMetrics
}

// workloadQueries is one workload's part of the summary.
type workloadQueries struct {
	client    Client
	queries   int64
	untracked int64
	resolved  map[string]*domainQueries
	blocked   map[string]*domainQueries
}

type domainQueries struct {
	DomainCount
	names map[string]struct{}
}

// DomainCount is one registrable domain of a workload in the summary.
type DomainCount struct {
	Domain  string `json:"domain"`
	Queries int64  `json:"queries"`
	// Names is how many distinct query names under Domain were seen;
	// NamesCapped says the count stopped at SummaryConfig.MaxNames.
	Names       int  `json:"names"`
	NamesCapped bool `json:"namesCapped,omitempty"`
	// LastName is the latest query name.
	LastName string `json:"lastName"`
	// Verdict is the latest verdict (allowed, audit, blocked,
	// quarantined) and Policy the latest policy.
	Verdict  Verdict   `json:"verdict"`
	Policy   string    `json:"policy,omitempty"`
	LastSeen time.Time `json:"lastSeen"`
}

// WorkloadSummary is one workload's domains, most queried first.
type WorkloadSummary struct {
	workload.Subject
	Queries int64 `json:"queries"`
	// Untracked counts queries for domains beyond SummaryConfig.MaxDomains.
	Untracked int64         `json:"untracked,omitempty"`
	Resolved  []DomainCount `json:"resolved"`
	Blocked   []DomainCount `json:"blocked"`
}

// NewQuerySummary returns an empty summary.
func NewQuerySummary(cfg SummaryConfig) (*QuerySummary, error) {
	if cfg.MaxWorkloads <= 0 {
		cfg.MaxWorkloads = 4096
	}
	if cfg.MaxDomains <= 0 {
		cfg.MaxDomains = 256
	}
	if cfg.MaxNames <= 0 {
		cfg.MaxNames = 100000
	}
	m, err := workload.NewSummaryMetrics("dnsguard", "query log", cfg.Metrics)
	if err != nil {
		return nil, err
	}
	s := &QuerySummary{cfg: cfg, workloads: map[string]*workloadQueries{}, metrics: m}
	return s, nil
}

// summaryRecord is the part of a query-log record the summary reads.
type summaryRecord struct {
	Time    time.Time `json:"time"`
	Client  Client    `json:"client"`
	QName   string    `json:"qname"`
	Verdict Verdict   `json:"verdict"`
	Policy  string    `json:"policy"`
}

// AddLine reads one line of the query log.
func (s *QuerySummary) AddLine(line []byte) {
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	var r summaryRecord
	if err := json.Unmarshal(line, &r); err != nil || r.QName == "" || r.Verdict == "" {
		s.metrics.Invalid.Inc()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := workloadKey(&r.Client)
	wq := s.workloads[key]
	if wq == nil {
		if len(s.workloads) >= s.cfg.MaxWorkloads {
			s.metrics.Untracked.Inc()
			return
		}
		wq = &workloadQueries{client: r.Client, resolved: map[string]*domainQueries{}, blocked: map[string]*domainQueries{}}
		s.workloads[key] = wq
	}
	wq.queries++
	domains := wq.resolved
	if r.Verdict == VerdictBlocked || r.Verdict == VerdictQuarantined {
		domains = wq.blocked
	}
	dom := registrable(r.QName)
	dq := domains[dom]
	if dq == nil {
		if len(domains) >= s.cfg.MaxDomains {
			wq.untracked++
			return
		}
		dq = &domainQueries{DomainCount: DomainCount{Domain: dom}, names: map[string]struct{}{}}
		domains[dom] = dq
	}
	dq.Queries++
	if _, seen := dq.names[r.QName]; !seen {
		if s.names < s.cfg.MaxNames {
			dq.names[r.QName] = struct{}{}
			dq.Names++
			s.names++
		} else {
			dq.NamesCapped = true
		}
	}
	dq.LastName, dq.Verdict, dq.Policy = r.QName, r.Verdict, r.Policy
	if r.Time.After(dq.LastSeen) {
		dq.LastSeen = r.Time
	}
}

// Workloads returns the summary of every workload q asks for, each with
// at most q.Top domains per list, most queried first.
func (s *QuerySummary) Workloads(q workload.SummaryQuery) []WorkloadSummary {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []WorkloadSummary{}
	for _, wq := range s.workloads {
		if !q.Matches(wq.client.Namespace, wq.client.Pod) {
			continue
		}
		out = append(out, WorkloadSummary{
			Subject: workload.NewSubject(wq.client.Namespace, wq.client.Pod, wq.client.IP),
			Queries: wq.queries, Untracked: wq.untracked,
			Resolved: topDomains(wq.resolved, q.Top), Blocked: topDomains(wq.blocked, q.Top),
		})
	}
	slices.SortFunc(out, func(a, b WorkloadSummary) int { return cmp.Compare(a.Workload, b.Workload) })
	return out
}

func topDomains(m map[string]*domainQueries, top int) []DomainCount {
	out := make([]DomainCount, 0, len(m))
	for _, dq := range m {
		out = append(out, dq.DomainCount)
	}
	slices.SortFunc(out, func(a, b DomainCount) int {
		if c := cmp.Compare(b.Queries, a.Queries); c != 0 {
			return c
		}
		return cmp.Compare(a.Domain, b.Domain)
	})
	if top > 0 && len(out) > top {
		out = out[:top]
	}
	return out
}

// Handler serves
//
//	GET /v1/dns/summary?namespace=&pod=&top=20   {"workloads": [WorkloadSummary...]}
func (s *QuerySummary) Handler() http.Handler {
	return workload.SummaryHandler("/v1/dns/summary", s.Workloads)
}
