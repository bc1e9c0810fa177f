package egress

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	elements    *prometheus.GaugeVec
	programming prometheus.Histogram
	errors      prometheus.Counter
	grants      prometheus.Counter
	timeouts    prometheus.Counter
	dropped     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		elements: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "kordon", Subsystem: "egress", Name: "set_elements",
			Help: "Elements in each nftables set of the egress table, as programmed by this agent.",
		}, []string{"set"}),
		programming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "kordon", Subsystem: "egress", Name: "programming_seconds",
			Help:    "Time to write one batch of set changes to the kernel.",
			Buckets: prometheus.ExponentialBuckets(25e-6, 2, 16),
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "kordon", Subsystem: "egress", Name: "program_errors_total",
			Help: "Batches the kernel refused.",
		}),
		grants: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "kordon", Subsystem: "egress", Name: "grants_total",
			Help: "Grants passed to Admit.",
		}),
		timeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "kordon", Subsystem: "egress", Name: "admit_timeouts_total",
			Help: "Admit calls that gave up after AdmitTimeout.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "kordon", Subsystem: "egress", Name: "elements_dropped_total",
			Help: "Grant elements not programmed because their source address holds the maximum (65,536).",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.elements, m.programming, m.errors, m.grants, m.timeouts, m.dropped} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// updateGauges sets kordon_egress_set_elements.
func (f *Firewall) updateGauges() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updateGaugesLocked()
}

func (f *Firewall) updateGaugesLocked() {
	counts := map[string]int{}
	for name := range f.sets {
		counts[name] = 0
	}
	for name, m := range f.static {
		counts[name] = len(m)
	}
	for _, t := range f.tsets {
		counts[t.s.Name] = t.n
	}
	for name, n := range counts {
		f.m.elements.WithLabelValues(name).Set(float64(n))
	}
}
