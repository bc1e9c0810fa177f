package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/policy"
	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
)

// Owners finds the controller of a pod of this node (QuarantineWatcher is
// one).
type Owners interface {
	// Owner returns the pod's top controller (a ReplicaSet's Deployment)
	// and its service account; ok is false for an unknown pod.
	Owner(namespace, pod string) (kind, name, serviceAccount string, ok bool)
}

// ClusterSinkConfig configures a ClusterSink.
type ClusterSinkConfig struct {
	Dynamic dynamic.Interface
	// Node is this node: every object written has spec.node = Node (the
	// kordon-node-scope admission policy refuses any other).
	Node string
	// Namespace holds the alerts of addresses that are no known pod (the
	// agent's own namespace).
	Namespace string
	// Owners resolves a pod's owner for the Quarantines it raises.
	Owners  Owners
	Logger  *slog.Logger
	Metrics prometheus.Registerer
}

// ClusterSink writes the node's alerts as EgressAlert objects (one per
// workload, kind and domain, counted) and raises a Quarantine for each
// alert whose action is quarantined. It is an alert.Sink on the node's
// durable feed: the feed's cursor, retries and backoff make the local log
// the buffer while the API server is unreachable, and LastAlertID on the
// object makes a retried alert count once.
type ClusterSink struct {
	cfg     ClusterSinkConfig
	writes  *prometheus.CounterVec
	errors  *prometheus.CounterVec
	retries int
}

var _ alert.Sink = (*ClusterSink)(nil)

// NewClusterSink checks cfg and registers the metrics.
func NewClusterSink(cfg ClusterSinkConfig) (*ClusterSink, error) {
	if cfg.Dynamic == nil || cfg.Node == "" || cfg.Namespace == "" {
		return nil, errors.New("kube: ClusterSinkConfig needs Dynamic, Node and Namespace")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &ClusterSink{cfg: cfg, retries: 5,
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "kube", Name: "state_writes_total",
			Help: "EgressAlert and Quarantine objects written by this node agent, by resource and operation (create, update, unchanged)."}, []string{"resource", "op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "kube", Name: "state_write_errors_total",
			Help: "Failed writes of EgressAlert and Quarantine objects (retried from the local alert log), by resource."}, []string{"resource"}),
	}
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{s.writes, s.errors} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("kube: metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Deliver implements alert.Sink.
func (s *ClusterSink) Deliver(ctx context.Context, a alert.Alert) error {
	if err := s.writeAlert(ctx, &a); err != nil {
		s.errors.WithLabelValues("egressalerts").Inc()
		return err
	}
	if a.Action != "quarantined" {
		return nil
	}
	if err := s.writeQuarantine(ctx, &a); err != nil {
		s.errors.WithLabelValues("quarantines").Inc()
		return err
	}
	return nil
}

func (s *ClusterSink) writeAlert(ctx context.Context, a *alert.Alert) error {
	ns := a.Namespace
	if ns == "" || a.Pod == "" {
		ns = s.cfg.Namespace
	}
	ri := s.cfg.Dynamic.Resource(EgressAlertGVR).Namespace(ns)
	name := AlertName(a)
	for range s.retries {
		cur, err := ri.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			spec := s.spec(a, policy.EgressAlertSpec{Count: 1, FirstSeen: a.Time.UTC(), LastSeen: a.Time.UTC()})
			u, err := toUnstructured(policy.KindEgressAlert, ns, name, map[string]string{LabelAlertKind: a.Kind}, spec)
			if err != nil {
				return err
			}
			_, err = ri.Create(ctx, u, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue // another write of the series won: count on it
			}
			if err != nil {
				return fmt.Errorf("kube: create EgressAlert %s/%s: %w", ns, name, err)
			}
			s.writes.WithLabelValues("egressalerts", "create").Inc()
			return nil
		}
		if err != nil {
			return fmt.Errorf("kube: get EgressAlert %s/%s: %w", ns, name, err)
		}
		var old policy.EgressAlertSpec
		if err := specOf(cur, &old); err != nil {
			return err
		}
		// Delivered before (the cursor was not saved, or the answer was
		// lost): do not count it twice. A node whose log was wiped starts
		// its ids again, so a later alert with a smaller id still counts.
		if a.ID <= old.LastAlertID && !a.Time.After(old.LastSeen) {
			s.writes.WithLabelValues("egressalerts", "unchanged").Inc()
			return nil
		}
		next := s.spec(a, old)
		next.Count = old.Count + 1
		if a.Time.Before(old.FirstSeen) {
			next.FirstSeen = a.Time.UTC()
		}
		if a.Time.After(old.LastSeen) {
			next.LastSeen = a.Time.UTC()
		}
		if err := setSpec(cur, next); err != nil {
			return err
		}
		_, err = ri.Update(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("kube: update EgressAlert %s/%s: %w", ns, name, err)
		}
		s.writes.WithLabelValues("egressalerts", "update").Inc()
		return nil
	}
	return fmt.Errorf("kube: EgressAlert %s/%s: still conflicting after %d attempts", ns, name, s.retries)
}

// spec is the latest occurrence a over the series fields of base.
func (s *ClusterSink) spec(a *alert.Alert, base policy.EgressAlertSpec) policy.EgressAlertSpec {
	return policy.EgressAlertSpec{
		Severity: a.Severity, Kind: a.Kind, Node: s.cfg.Node, Pod: a.Pod, ServiceAccount: a.ServiceAccount,
		SPIFFEID: a.SPIFFEID, ClientIP: a.ClientIP, Domain: a.Domain, Score: a.Score, Evidence: a.Evidence,
		Action: a.Action, Policy: a.Policy, Message: a.Message,
		Count: base.Count, FirstSeen: base.FirstSeen, LastSeen: base.LastSeen, LastAlertID: a.ID,
	}
}

// writeQuarantine raises the Quarantine of a's workload and domain (or
// address), selected by the pod's owner, else its service account. One
// exists per workload and domain: a second alert adds nothing.
func (s *ClusterSink) writeQuarantine(ctx context.Context, a *alert.Alert) error {
	if a.Pod == "" || a.Namespace == "" {
		return nil // no workload to select: the local quarantine holds
	}
	spec := policy.QuarantineSpec{Node: s.cfg.Node, Pod: a.Pod, Alert: AlertName(a),
		Reason: a.Kind + " to " + a.Domain + " (policy " + a.Policy + ")"}
	if ip, err := netip.ParseAddr(a.Domain); err == nil {
		spec.Addresses = []string{ip.String()}
	} else {
		spec.Domains = []string{a.Domain}
	}
	var workload string
	kind, name, sa, ok := "", "", a.ServiceAccount, false
	if s.cfg.Owners != nil {
		var osa string
		kind, name, osa, ok = s.cfg.Owners.Owner(a.Namespace, a.Pod)
		if ok && osa != "" {
			sa = osa
		}
	}
	if !ok {
		// The pod is gone (its alerts were buffered, or it was deleted
		// meanwhile): an earlier alert may have raised the quarantine of
		// its owner already, which the service account would widen.
		raised, err := s.raisedFor(ctx, a)
		if err != nil {
			return err
		}
		if raised {
			s.writes.WithLabelValues("quarantines", "unchanged").Inc()
			return nil
		}
	}
	switch {
	case ok && kind != "":
		spec.Owner = &policy.QuarantineOwner{Kind: kind, Name: name}
		workload = kind + "-" + name
	case sa != "":
		spec.ServiceAccount = sa
		workload = "sa-" + sa
	default:
		return nil
	}
	qname := QuarantineName(workload, a.Domain)
	u, err := toUnstructured(policy.KindQuarantine, a.Namespace, qname, nil, spec)
	if err != nil {
		return err
	}
	_, err = s.cfg.Dynamic.Resource(QuarantineGVR).Namespace(a.Namespace).Create(ctx, u, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		s.writes.WithLabelValues("quarantines", "unchanged").Inc()
		return nil
	}
	if err != nil {
		return fmt.Errorf("kube: create Quarantine %s/%s: %w", a.Namespace, qname, err)
	}
	s.writes.WithLabelValues("quarantines", "create").Inc()
	s.cfg.Logger.Info("quarantine raised in the cluster", "namespace", a.Namespace, "name", qname, "domain", a.Domain)
	return nil
}

// raisedFor reports whether a Quarantine raised for a's pod already
// blocks a's domain or address.
func (s *ClusterSink) raisedFor(ctx context.Context, a *alert.Alert) (bool, error) {
	l, err := s.cfg.Dynamic.Resource(QuarantineGVR).Namespace(a.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, fmt.Errorf("kube: list Quarantines %s: %w", a.Namespace, err)
	}
	for i := range l.Items {
		var q policy.QuarantineSpec
		if specOf(&l.Items[i], &q) != nil || q.Pod != a.Pod {
			continue
		}
		if slices.Contains(q.Domains, a.Domain) || slices.Contains(q.Addresses, a.Domain) {
			return true, nil
		}
	}
	return false, nil
}
