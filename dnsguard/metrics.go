package dnsguard

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are dnsguard's Prometheus collectors (namespace kordon,
// subsystem dnsguard). They are registered on the Registerer of Config.
type metrics struct {
	queries          *prometheus.CounterVec
	duration         prometheus.Histogram
	cacheHits        prometheus.Counter
	cacheMisses      prometheus.Counter
	cacheStale       prometheus.Counter
	upstreamHealthy  *prometheus.GaugeVec
	upstreamRequests *prometheus.CounterVec
	logDropped       prometheus.Counter
	tapDropped       prometheus.Counter
	tapMessages      prometheus.Counter
	tapConnected     prometheus.Gauge
	rateLimited      prometheus.Counter
	fastAnswers      prometheus.Counter
	fastMisses       prometheus.Counter
	admitErrors      prometheus.Counter
	admitSeconds     prometheus.Histogram
	// queryChildren caches queries_total children by verdict and rcode:
	// the label lookup is too slow for every query. A struct key under a
	// read lock costs no allocation (a concatenated string key did).
	queryMu       sync.RWMutex
	queryChildren map[queryKey]prometheus.Counter
}

type queryKey struct {
	verdict Verdict
	rcode   string
}

// countQuery increments queries_total{verdict,rcode}.
func (m *metrics) countQuery(verdict Verdict, rcode string) {
	m.countQueries(queryKey{verdict, rcode}, 1)
}

// countQueries adds n to queries_total{verdict,rcode}.
func (m *metrics) countQueries(k queryKey, n int) {
	m.queryMu.RLock()
	c, ok := m.queryChildren[k]
	m.queryMu.RUnlock()
	if !ok {
		m.queryMu.Lock()
		if c, ok = m.queryChildren[k]; !ok {
			if m.queryChildren == nil {
				m.queryChildren = map[queryKey]prometheus.Counter{}
			}
			c = m.queries.WithLabelValues(string(k.verdict), k.rcode)
			m.queryChildren[k] = c
		}
		m.queryMu.Unlock()
	}
	c.Add(float64(n))
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "kordon", "dnsguard"
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "queries_total",
			Help: "DNS queries answered, by verdict (allowed, blocked, audit, quarantined) and response code."}, []string{"verdict", "rcode"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "request_duration_seconds",
			Help: "Time to answer a query.", Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
		cacheHits:   prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "cache_hits_total", Help: "Answers served from the cache."}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "cache_misses_total", Help: "Queries forwarded because the cache had no fresh answer."}),
		cacheStale:  prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "cache_stale_served_total", Help: "Expired answers served because every upstream failed (RFC 8767)."}),
		upstreamHealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "upstream_healthy",
			Help: "1 if the upstream is in service, 0 after consecutive failures."}, []string{"upstream"}),
		upstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "upstream_requests_total",
			Help: "Queries sent upstream, by upstream and result (ok, error)."}, []string{"upstream", "result"}),
		logDropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "querylog_dropped_total", Help: "Query log records dropped because the writer fell behind."}),
		tapDropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "dnstap_dropped_total",
			Help: "Queries whose dnstap messages were dropped: the queue was full or the collector unreachable."}),
		tapMessages:  prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "dnstap_messages_total", Help: "dnstap messages written to the collector."}),
		tapConnected: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "dnstap_connected", Help: "1 while a dnstap Frame Streams session is up."}),
		rateLimited:  prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "ratelimited_total", Help: "Queries refused by the per-client rate limit."}),
		fastAnswers:  prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "fast_path_answers_total", Help: "UDP cache hits answered from wire bytes without a full parse."}),
		fastMisses: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "fast_path_forwarded_total",
			Help: "UDP cache misses forwarded and answered from wire bytes (the rest of the misses went through the full path)."}),
		admitErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "firewall_admit_errors_total",
			Help: "Firewall Admit calls that failed (their answers became SERVFAIL)."}),
		admitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "firewall_admit_seconds",
			Help: "Time the firewall took to admit one batch of answers.", Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.queries, m.duration, m.cacheHits, m.cacheMisses, m.cacheStale, m.upstreamHealthy, m.upstreamRequests, m.logDropped, m.tapDropped, m.tapMessages, m.tapConnected, m.rateLimited, m.fastAnswers, m.fastMisses, m.admitErrors, m.admitSeconds} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
