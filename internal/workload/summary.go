package workload

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// SummaryQuery is what a per-workload summary API is asked (the query-log
// and flow-log summaries the web console reads): the workloads of
// Namespace and Pod (empty matches any), with at most Top entries in each
// of their lists (0: all).
type SummaryQuery struct {
	Namespace, Pod string
	Top            int
}

// DefaultSummaryTop is Top when a request does not say.
const DefaultSummaryTop = 20

// ParseSummaryQuery reads ?namespace=&pod=&top=.
func ParseSummaryQuery(v url.Values) (SummaryQuery, error) {
	q := SummaryQuery{Namespace: v.Get("namespace"), Pod: v.Get("pod"), Top: DefaultSummaryTop}
	if s := v.Get("top"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return q, fmt.Errorf("top: want a non-negative integer, got %q", s)
		}
		q.Top = n
	}
	return q, nil
}

// Matches reports whether the workload namespace/pod is asked for.
func (q SummaryQuery) Matches(namespace, pod string) bool {
	return (q.Namespace == "" || q.Namespace == namespace) && (q.Pod == "" || q.Pod == pod)
}

// SummaryHandler serves GET path?namespace=&pod=&top= as
// {"workloads": list(query)}; a bad top is a 400.
func SummaryHandler[T any](path string, list func(SummaryQuery) []T) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
		q, err := ParseSummaryQuery(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		out := list(q)
		if out == nil {
			out = []T{}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"workloads": out})
	})
	return mux
}

// Subject names the workload one entry of a summary is about.
type Subject struct {
	// Workload is namespace/pod, or the client address of a client the
	// registry did not know.
	Workload  string `json:"workload"`
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	ClientIP  string `json:"clientIP"`
}

// NewSubject names the client ip, attributed to namespace/pod ("" when unknown).
func NewSubject(namespace, pod string, ip netip.Addr) Subject {
	s := Subject{Workload: ip.String(), Namespace: namespace, Pod: pod, ClientIP: ip.String()}
	if pod != "" {
		s.Workload = namespace + "/" + pod
	}
	return s
}

// SummaryMetrics are the counters of one log summary:
// kordon_<subsystem>_summary_untracked_total and
// kordon_<subsystem>_summary_invalid_lines_total.
type SummaryMetrics struct {
	// Untracked counts records not kept: workloads beyond the bound.
	Untracked prometheus.Counter
	// Invalid counts lines that are not records of the log.
	Invalid prometheus.Counter
}

// NewSummaryMetrics makes the counters of the summary of log ("query
// log") for subsystem and registers them with reg (nil: not registered).
func NewSummaryMetrics(subsystem, log string, reg prometheus.Registerer) (*SummaryMetrics, error) {
	m := &SummaryMetrics{
		Untracked: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kordon", Subsystem: subsystem, Name: "summary_untracked_total",
			Help: "Records of the " + log + " its summary did not keep: workloads beyond its bound."}),
		Invalid: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kordon", Subsystem: subsystem, Name: "summary_invalid_lines_total",
			Help: "Lines of the " + log + " its summary could not read."}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.Untracked, m.Invalid} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
