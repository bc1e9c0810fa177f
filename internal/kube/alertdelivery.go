package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// DeliveryConfigMap keeps, per sink, the id (resourceVersion) up to which
// the leader has delivered the cluster's alerts; the next leader resumes
// from it.
const DeliveryConfigMap = "kordon-alert-delivery"

// DeliverySink is one receiver of the cluster's alerts (a webhook, or
// Kubernetes Events).
type DeliverySink struct {
	// Name is the ConfigMap key of its position (letters, digits, '-', '.', '_').
	Name    string
	Deliver func(ctx context.Context, a alert.Alert) error
}

// AlertDeliveryConfig configures AlertDelivery.
type AlertDeliveryConfig struct {
	Client kubernetes.Interface
	// Namespace of the DeliveryConfigMap (kordon's).
	Namespace string
	Source    alert.Source
	Sinks     []DeliverySink
	// MinBackoff and MaxBackoff bound the retry delay after a failed
	// delivery (defaults 500ms and 1m).
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
	Metrics                prometheus.Registerer
}

// AlertDelivery delivers every change of an EgressAlert (a new series or
// a higher count) to each sink in id order, at least once across leader
// changes: a sink's position is saved in the DeliveryConfigMap after each
// batch, so a new leader redelivers at most the batch the old one was in.
// Redeliveries carry the same idempotency key (alert.WebhookID of the
// same object state; Events are named by it), which receivers dedupe on.
// A burst of occurrences between two looks is one delivery whose count
// covers them, as a Kubernetes Event series is.
type AlertDelivery struct {
	cfg       AlertDeliveryConfig
	delivered *prometheus.CounterVec
	pending   *prometheus.GaugeVec
}

// NewAlertDelivery checks cfg and registers the metrics.
func NewAlertDelivery(cfg AlertDeliveryConfig) (*AlertDelivery, error) {
	if cfg.Client == nil || cfg.Source == nil || cfg.Namespace == "" {
		return nil, errors.New("kube: AlertDeliveryConfig needs Client, Namespace and Source")
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	d := &AlertDelivery{cfg: cfg,
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "kube", Name: "alert_deliveries_total",
			Help: "Deliveries of cluster alerts by the leader, by sink and result."}, []string{"sink", "result"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "kordon", Subsystem: "kube", Name: "alert_delivery_pending",
			Help: "Cluster alert changes the leader has not yet delivered, by sink."}, []string{"sink"}),
	}
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{d.delivered, d.pending} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("kube: metrics: %w", err)
			}
		}
	}
	return d, nil
}

// Run delivers until ctx ends (the leader's term).
func (d *AlertDelivery) Run(ctx context.Context) error {
	if len(d.cfg.Sinks) == 0 {
		return nil
	}
	pos, err := d.positions(ctx)
	if err != nil {
		return err
	}
	errc := make(chan error, len(d.cfg.Sinks))
	for _, s := range d.cfg.Sinks {
		go func() { errc <- d.run(ctx, s, pos[s.Name]) }()
	}
	var first error
	for range d.cfg.Sinks {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// positions reads the ConfigMap, creating it when absent.
func (d *AlertDelivery) positions(ctx context.Context) (map[string]uint64, error) {
	cms := d.cfg.Client.CoreV1().ConfigMaps(d.cfg.Namespace)
	for {
		cm, err := cms.Get(ctx, DeliveryConfigMap, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: DeliveryConfigMap, Namespace: d.cfg.Namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "kordon"}}}, metav1.CreateOptions{})
			if err == nil || apierrors.IsAlreadyExists(err) {
				continue
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil
			}
			d.cfg.Logger.Warn("alert delivery positions not read", "error", err)
			select {
			case <-ctx.Done():
				return nil, nil
			case <-time.After(d.cfg.MinBackoff):
				continue
			}
		}
		out := map[string]uint64{}
		for k, v := range cm.Data {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("kube: configmap %s/%s: %s: %q is not an alert id", d.cfg.Namespace, DeliveryConfigMap, k, v)
			}
			out[k] = n
		}
		return out, nil
	}
}

func (d *AlertDelivery) save(ctx context.Context, sink string, pos uint64) error {
	patch, _ := json.Marshal(map[string]any{"data": map[string]string{sink: strconv.FormatUint(pos, 10)}})
	_, err := d.cfg.Client.CoreV1().ConfigMaps(d.cfg.Namespace).Patch(ctx, DeliveryConfigMap, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

func (d *AlertDelivery) run(ctx context.Context, s DeliverySink, pos uint64) error {
	wake, cancel := d.cfg.Source.Subscribe()
	defer cancel()
	backoff := d.cfg.MinBackoff
	saved := pos
	for ctx.Err() == nil {
		pending := d.cfg.Source.List(alert.Filter{After: pos})
		d.pending.WithLabelValues(s.Name).Set(float64(len(pending)))
		failed := false
		for _, a := range pending {
			if err := s.Deliver(ctx, a); err != nil {
				if ctx.Err() != nil {
					break
				}
				d.delivered.WithLabelValues(s.Name, "error").Inc()
				d.cfg.Logger.Debug("cluster alert delivery failed", "sink", s.Name, "alert_id", a.ID, "error", err)
				failed = true
				break
			}
			d.delivered.WithLabelValues(s.Name, "ok").Inc()
			pos = a.ID
			backoff = d.cfg.MinBackoff
		}
		if pos != saved && ctx.Err() == nil {
			if err := d.save(ctx, s.Name, pos); err != nil {
				d.cfg.Logger.Warn("alert delivery position not saved", "sink", s.Name, "error", err)
				failed = true
			} else {
				saved = pos
			}
		}
		if failed {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, d.cfg.MaxBackoff)
			continue
		}
		select {
		case <-ctx.Done():
		case _, ok := <-wake:
			if !ok {
				return nil
			}
		}
	}
	return nil
}

// AlertGCConfig configures AlertGC.
type AlertGCConfig struct {
	Clients *Clients
	View    *AlertView
	// Retention deletes a series whose last occurrence is older (default
	// 7 days); MaxPerNamespace keeps at most that many per namespace, the
	// most recent (default 1000). Interval is the pass period (default 1m).
	Retention       time.Duration
	MaxPerNamespace int
	Interval        time.Duration
	Now             func() time.Time
	Logger          *slog.Logger
	Metrics         prometheus.Registerer
}

// Defaults of AlertGCConfig.
const (
	DefaultAlertRetention     = 7 * 24 * time.Hour
	DefaultAlertsPerNamespace = 1000
	DefaultAlertGCInterval    = time.Minute
)

// AlertGC deletes expired EgressAlerts and keeps each namespace under its
// cap (there is no garbage collector for them in the API server); the
// leader runs it.
type AlertGC struct {
	cfg     AlertGCConfig
	deleted *prometheus.CounterVec
}

// NewAlertGC fills defaults and registers the metric.
func NewAlertGC(cfg AlertGCConfig) (*AlertGC, error) {
	if cfg.Clients == nil || cfg.View == nil {
		return nil, errors.New("kube: AlertGCConfig needs Clients and View")
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultAlertRetention
	}
	if cfg.MaxPerNamespace <= 0 {
		cfg.MaxPerNamespace = DefaultAlertsPerNamespace
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultAlertGCInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	g := &AlertGC{cfg: cfg, deleted: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "kube", Name: "alert_gc_deletions_total",
		Help: "EgressAlerts deleted by the leader, by reason (retention, cap)."}, []string{"reason"})}
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(g.deleted); err != nil {
			return nil, fmt.Errorf("kube: metrics: %w", err)
		}
	}
	return g, nil
}

// Run collects every Interval until ctx ends.
func (g *AlertGC) Run(ctx context.Context) error {
	for {
		g.Collect(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(g.cfg.Interval):
		}
	}
}

// Collect makes one pass and returns how many objects it deleted. A
// series written since the view saw it is left for the next pass (the
// delete is conditional on its resourceVersion).
func (g *AlertGC) Collect(ctx context.Context) int {
	byNS := map[string][]viewItem{}
	for _, it := range g.cfg.View.objects() {
		byNS[it.ns] = append(byNS[it.ns], it)
	}
	cutoff := g.cfg.Now().Add(-g.cfg.Retention)
	n := 0
	for ns, items := range byNS {
		sort.Slice(items, func(i, j int) bool {
			if !items[i].a.LastSeen.Equal(items[j].a.LastSeen) {
				return items[i].a.LastSeen.After(items[j].a.LastSeen)
			}
			return items[i].name < items[j].name
		})
		for i, it := range items {
			reason := ""
			switch {
			case it.a.LastSeen.Before(cutoff):
				reason = "retention"
			case i >= g.cfg.MaxPerNamespace:
				reason = "cap"
			default:
				continue
			}
			rv := it.rv
			err := g.cfg.Clients.Dynamic.Resource(EgressAlertGVR).Namespace(ns).Delete(ctx, it.name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
			if err != nil {
				if !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && ctx.Err() == nil {
					g.cfg.Logger.Warn("egress alert not collected", "namespace", ns, "name", it.name, "error", err)
				}
				continue
			}
			g.deleted.WithLabelValues(reason).Inc()
			n++
		}
	}
	return n
}
