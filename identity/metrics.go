package identity

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// caMetrics are the CA's kordon_identity_* metrics (listed in README.md).
// They are created even without a registry, so the CA never checks for nil.
type caMetrics struct {
	signed     *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	caExpiry   *prometheus.GaugeVec
	svidExpiry prometheus.Gauge
	rotations  *prometheus.CounterVec
	// caTTL and svidTTL are the configured lifetimes, so that alerts can
	// tell a stalled rotation or renewal from a short lifetime.
	caTTL   prometheus.Gauge
	svidTTL prometheus.Gauge
}

func newCAMetrics(reg prometheus.Registerer, caTTL, svidTTL time.Duration) (*caMetrics, error) {
	m := &caMetrics{
		signed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kordon", Subsystem: "identity", Name: "svids_signed_total",
			Help: "SVID signing requests by kind (x509, jwt) and result (ok, rejected, error).",
		}, []string{"kind", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "kordon", Subsystem: "identity", Name: "svid_signing_duration_seconds",
			Help:    "Time to validate and sign one SVID, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 14),
		}, []string{"kind"}),
		caExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "kordon", Subsystem: "identity", Name: "ca_expiry_timestamp_seconds",
			Help: "NotAfter (Unix seconds) of the CA's authorities by status (active, prepared, retired: the latest-expiring one).",
		}, []string{"status"}),
		svidExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kordon", Subsystem: "identity", Name: "svid_expiry_timestamp_seconds",
			Help: "NotAfter (Unix seconds) of the last X.509-SVID signed.",
		}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kordon", Subsystem: "identity", Name: "ca_rotation_events_total",
			Help: "CA rotation events: prepared (next root published), activated (next root signing), pruned (a retired root left the bundle).",
		}, []string{"event"}),
		caTTL: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kordon", Subsystem: "identity", Name: "ca_ttl_seconds",
			Help: "Configured lifetime of each root (or intermediate) the CA makes.",
		}),
		svidTTL: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kordon", Subsystem: "identity", Name: "svid_ttl_seconds",
			Help: "Configured default X.509-SVID lifetime.",
		}),
	}
	m.caTTL.Set(caTTL.Seconds())
	m.svidTTL.Set(svidTTL.Seconds())
	if reg != nil {
		for _, c := range []prometheus.Collector{m.signed, m.latency, m.caExpiry, m.svidExpiry, m.rotations, m.caTTL, m.svidTTL} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	// Every series exists from the start, so rate() and absent() work.
	for _, k := range []string{"x509", "jwt"} {
		for _, r := range []string{"ok", "rejected", "error"} {
			m.signed.WithLabelValues(k, r)
		}
	}
	for _, e := range []string{"prepared", "activated", "pruned"} {
		m.rotations.WithLabelValues(e)
	}
	return m, nil
}

// observeSign records one signing request.
func (m *caMetrics) observeSign(kind string, start time.Time, err error) {
	m.latency.WithLabelValues(kind).Observe(time.Since(start).Seconds())
	var re *RejectError
	switch {
	case err == nil:
		m.signed.WithLabelValues(kind, "ok").Inc()
	case errors.As(err, &re):
		m.signed.WithLabelValues(kind, "rejected").Inc()
	default:
		m.signed.WithLabelValues(kind, "error").Inc()
	}
}

func (m *caMetrics) observeRotation(r Rotation) {
	if r.Prepared {
		m.rotations.WithLabelValues("prepared").Inc()
	}
	if r.Activated {
		m.rotations.WithLabelValues("activated").Inc()
	}
	if r.Pruned > 0 {
		m.rotations.WithLabelValues("pruned").Add(float64(r.Pruned))
	}
}

func (m *caMetrics) observeAuthorities(as []AuthorityInfo) {
	m.caExpiry.Reset()
	latest := map[AuthorityStatus]time.Time{}
	for _, a := range as {
		if t := a.Certificate.NotAfter; t.After(latest[a.Status]) {
			latest[a.Status] = t
		}
	}
	for s, t := range latest {
		m.caExpiry.WithLabelValues(string(s)).Set(float64(t.Unix()))
	}
}
