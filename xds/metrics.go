package xds

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	streams      prometheus.Gauge
	nodes        prometheus.Gauge
	builds       *prometheus.CounterVec
	buildSeconds prometheus.Histogram
	pushBatch    prometheus.Histogram
	acks         *prometheus.CounterVec
	nacks        *prometheus.CounterVec
	authFailures *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "kordon", "xds"
	m := &metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "streams",
			Help: "Open xDS streams."}),
		nodes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "connected_nodes",
			Help: "Nodes with at least one open xDS stream."}),
		builds: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "snapshot_builds_total",
			Help: "Per-node snapshot builds by result: pushed, unchanged, error."}, []string{"result"}),
		buildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "snapshot_build_seconds",
			Help: "Time to build, validate and set one node's snapshot.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9)}),
		pushBatch: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "push_batch_seconds",
			Help: "Time to rebuild every node affected by one debounced batch of changes.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 8)}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "acks_total",
			Help: "ACKs received by resource type."}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "nacks_total",
			Help: "NACKs received by resource type."}, []string{"type"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "auth_failures_total",
			Help: "Streams refused by reason: unauthenticated, forbidden_node, unknown_node, no_node."}, []string{"reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.streams, m.nodes, m.builds, m.buildSeconds, m.pushBatch, m.acks, m.nacks, m.authFailures} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
