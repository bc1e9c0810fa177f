package flowlog

import (
	"bytes"
	"cmp"
	"encoding/json"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/prometheus/client_golang/prometheus"
)

// SummaryConfig bounds a Summary.
type SummaryConfig struct {
	// MaxWorkloads is how many client addresses are tracked (default
	// 4096); records of further ones are counted in
	// kordon_flowlog_summary_untracked_total only.
	MaxWorkloads int
	// MaxDestinations per workload (default 512); records for further
	// destinations are counted in the workload's untracked count.
	MaxDestinations int
	// MaxOpenFlows is how many long flows' last cumulative counters are
	// kept so that their periodic records add only what is new (default
	// 65,536); beyond it a flow's bytes are added by its final record.
	MaxOpenFlows int
	// Metrics registers kordon_flowlog_summary_*; nil skips them.
	Metrics prometheus.Registerer
}

// Summary reads the flow log and keeps, per workload, its destinations
// with bytes each way, flows and blocked attempts: what the web console
// shows. It reads the lines the flow log writes (AddLine; kordon feeds it
// from the writer given to Config.Log), on the log's writer goroutine, so
// it costs the event loop nothing. Lines that are not flow records are
// skipped and counted.
type Summary struct {
	cfg SummaryConfig

	mu        sync.Mutex
	workloads map[netip.Addr]*workloadFlows
	// open holds the cumulative counters of flows whose periodic (not
	// final) records were seen.
	open map[summaryFlow][2]uint64

	metrics *workload.SummaryMetrics
}

type summaryFlow struct {
	proto      string
	src, dst   netip.Addr
	sport, dpt uint16
}

type destKey struct {
	dst   netip.Addr
	port  uint16
	proto string
}

type workloadFlows struct {
	client    Client
	untracked int64
	dests     map[destKey]*Destination
}

// Destination is one destination of a workload in the summary.
type Destination struct {
	Dst   netip.Addr `json:"dst"`
	Port  uint16     `json:"port"`
	Proto string     `json:"proto"`
	// DNSName is the name whose answer gave the address, when known.
	DNSName  string `json:"dnsName,omitempty"`
	BytesOut uint64 `json:"bytesOut"`
	BytesIn  uint64 `json:"bytesIn"`
	// Flows counts connections seen (their final records).
	Flows int64 `json:"flows"`
	// Blocked counts blocked attempts; Reason is the latest one's.
	Blocked  int64     `json:"blocked"`
	Reason   string    `json:"reason,omitempty"`
	Verdict  string    `json:"verdict"`
	Policy   string    `json:"policy,omitempty"`
	LastSeen time.Time `json:"lastSeen"`
}

// WorkloadFlows is one workload's destinations, most bytes first.
type WorkloadFlows struct {
	workload.Subject
	// Untracked counts records for destinations beyond MaxDestinations.
	Untracked    int64         `json:"untracked,omitempty"`
	Destinations []Destination `json:"destinations"`
	// Attempts are the destinations with blocked attempts, most first.
	Attempts []Destination `json:"attempts"`
}

// NewSummary returns an empty summary.
func NewSummary(cfg SummaryConfig) (*Summary, error) {
	if cfg.MaxWorkloads <= 0 {
		cfg.MaxWorkloads = 4096
	}
	if cfg.MaxDestinations <= 0 {
		cfg.MaxDestinations = 512
	}
	if cfg.MaxOpenFlows <= 0 {
		cfg.MaxOpenFlows = 65536
	}
	m, err := workload.NewSummaryMetrics("flowlog", "flow log", cfg.Metrics)
	if err != nil {
		return nil, err
	}
	s := &Summary{cfg: cfg, workloads: map[netip.Addr]*workloadFlows{}, open: map[summaryFlow][2]uint64{}, metrics: m}
	return s, nil
}

// AddLine reads one line of the flow log.
func (s *Summary) AddLine(line []byte) {
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	var r Record
	if err := json.Unmarshal(line, &r); err != nil || !r.Client.IP.IsValid() || !r.Dst.IsValid() {
		s.metrics.Invalid.Inc()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.add(&r)
}

// add counts one record. Counters of periodic records are cumulative:
// only what grew since the flow's last record is added.
func (s *Summary) add(r *Record) {
	wf := s.workloads[r.Client.IP]
	if wf == nil {
		if len(s.workloads) >= s.cfg.MaxWorkloads {
			s.metrics.Untracked.Inc()
			return
		}
		wf = &workloadFlows{client: r.Client, dests: map[destKey]*Destination{}}
		s.workloads[r.Client.IP] = wf
	}
	dk := destKey{r.Dst, r.DPort, r.Proto}
	d := wf.dests[dk]
	if d == nil {
		if len(wf.dests) >= s.cfg.MaxDestinations {
			wf.untracked++
			return
		}
		d = &Destination{Dst: r.Dst, Port: r.DPort, Proto: r.Proto}
		wf.dests[dk] = d
	}
	if r.DNSName != "" {
		d.DNSName = r.DNSName
	}
	d.Verdict, d.Policy = r.Verdict, r.Policy
	if r.Time.After(d.LastSeen) {
		d.LastSeen = r.Time
	}
	if r.Verdict == VerdictBlocked {
		d.Blocked++
		d.Reason = r.Reason
		return
	}
	fk := summaryFlow{r.Proto, r.Src, r.Dst, r.SPort, r.DPort}
	last, known := s.open[fk]
	// Counters that went backwards (a reused 5-tuple) add nothing; the
	// new values become the flow's baseline below.
	var addOut, addIn uint64
	if r.BytesOut >= last[0] && r.BytesIn >= last[1] {
		addOut, addIn = r.BytesOut-last[0], r.BytesIn-last[1]
	}
	d.BytesOut += addOut
	d.BytesIn += addIn
	switch {
	case r.Final:
		delete(s.open, fk)
		d.Flows++
	case known || len(s.open) < s.cfg.MaxOpenFlows:
		s.open[fk] = [2]uint64{r.BytesOut, r.BytesIn}
	default:
		// Not remembered (so last was zero): the final record would add
		// these bytes again.
		d.BytesOut -= addOut
		d.BytesIn -= addIn
	}
}

// Workloads returns every workload q asks for, each with at most q.Top
// destinations per list.
func (s *Summary) Workloads(q workload.SummaryQuery) []WorkloadFlows {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []WorkloadFlows{}
	for ip, wf := range s.workloads {
		c := wf.client
		if !q.Matches(c.Namespace, c.Pod) {
			continue
		}
		var dests, attempts []Destination
		for _, d := range wf.dests {
			if d.Blocked > 0 {
				attempts = append(attempts, *d)
			}
			if d.Flows > 0 || d.BytesOut > 0 || d.BytesIn > 0 {
				dests = append(dests, *d)
			}
		}
		byKey := func(a, b Destination) int {
			if c := cmp.Compare(a.Dst.String(), b.Dst.String()); c != 0 {
				return c
			}
			return cmp.Compare(a.Port, b.Port)
		}
		slices.SortFunc(dests, func(a, b Destination) int {
			if c := cmp.Compare(b.BytesOut+b.BytesIn, a.BytesOut+a.BytesIn); c != 0 {
				return c
			}
			return byKey(a, b)
		})
		slices.SortFunc(attempts, func(a, b Destination) int {
			if c := cmp.Compare(b.Blocked, a.Blocked); c != 0 {
				return c
			}
			return byKey(a, b)
		})
		if q.Top > 0 {
			dests, attempts = dests[:min(q.Top, len(dests))], attempts[:min(q.Top, len(attempts))]
		}
		out = append(out, WorkloadFlows{Subject: workload.NewSubject(c.Namespace, c.Pod, ip),
			Untracked: wf.untracked, Destinations: nonNil(dests), Attempts: nonNil(attempts)})
	}
	slices.SortFunc(out, func(a, b WorkloadFlows) int { return cmp.Compare(a.Workload, b.Workload) })
	return out
}

func nonNil(d []Destination) []Destination {
	if d == nil {
		return []Destination{}
	}
	return d
}

// Handler serves
//
//	GET /v1/egress/flows/summary?namespace=&pod=&top=20   {"workloads": [WorkloadFlows...]}
func (s *Summary) Handler() http.Handler {
	return workload.SummaryHandler("/v1/egress/flows/summary", s.Workloads)
}
