package flowlog

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the Logger's collectors (namespace kordon, subsystem
// egress); see README.md.
type metrics struct {
	flows         *prometheus.CounterVec
	records       prometheus.Counter
	dropped       prometheus.Counter
	alerts        *prometheus.CounterVec
	alertsDropped prometheus.Counter
	events        prometheus.Counter
	nflogPackets  prometheus.Counter
	overruns      prometheus.Counter
	nflogOverruns prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "egress", Name: name, Help: help})
	}
	m := &metrics{
		flows:         prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "egress", Name: "flows_total", Help: "Egress flows seen (blocked attempts included), by verdict."}, []string{"verdict"}),
		records:       counter("flowlog_records_total", "Flow log records written."),
		dropped:       counter("flowlog_dropped_total", "Flow log records dropped: queue full or write failed."),
		alerts:        prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "egress", Name: "alerts_total", Help: "Egress alerts raised (after the local cooldown), by kind."}, []string{"kind"}),
		alertsDropped: counter("alerts_dropped_total", "Egress alerts dropped because the alert queue was full."),
		events:        counter("conntrack_events_total", "Conntrack events received."),
		nflogPackets:  counter("nflog_packets_total", "Packets received from kordon's NFLOG group."),
		overruns:      counter("conntrack_overruns_total", "Conntrack event socket overruns (ENOBUFS: events lost, resynchronised by a Dump)."),
		nflogOverruns: counter("nflog_overruns_total", "NFLOG socket overruns (ENOBUFS: blocked-attempt packets lost)."),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.flows, m.records, m.dropped, m.alerts, m.alertsDropped, m.events, m.nflogPackets, m.overruns, m.nflogOverruns} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("flowlog: metrics: %w", err)
			}
		}
	}
	return m, nil
}
