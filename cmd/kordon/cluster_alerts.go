package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
)

// clusterAlertFlags configure the controller's side of alerts and
// quarantines as cluster state.
type clusterAlertFlags struct {
	source                string
	retention, gcInterval time.Duration
	perNamespace          int
	webhooks              []string
	webhookSecretFile     string
	events                bool
}

func (c *clusterAlertFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&c.source, "alerts-from", "cluster", "what /v1/alerts serves: cluster (the EgressAlerts node agents write; every replica answers the same) or local (this replica's --alerts-dir feed, which node agents POST to)")
	fl.DurationVar(&c.retention, "alert-retention", kube.DefaultAlertRetention, "the leader deletes an EgressAlert whose last occurrence is older")
	fl.IntVar(&c.perNamespace, "alerts-per-namespace", kube.DefaultAlertsPerNamespace, "the leader keeps at most this many EgressAlerts per namespace (the most recent)")
	fl.DurationVar(&c.gcInterval, "alert-gc-interval", kube.DefaultAlertGCInterval, "how often the leader collects EgressAlerts")
	fl.StringArrayVar(&c.webhooks, "alert-webhook", nil, "NAME=URL: the leader POSTs every cluster alert change there (repeatable; at least once across leader changes)")
	fl.StringVar(&c.webhookSecretFile, "alert-webhook-secret-file", "", "file holding the Standard Webhooks secret (whsec_...) that signs --alert-webhook deliveries")
	fl.BoolVar(&c.events, "alert-events", true, "the leader records each cluster alert as a Warning Event on the offending pod")
}

// wireClusterAlerts builds /v1/alerts (served by wireFeedAPI): the cluster's EgressAlerts on
// every replica (the view is a part), delivered and collected by the
// leader (a leader part); or, with --alerts-from local, this replica's
// feed.
func (c *controller) wireClusterAlerts(context.Context) error {
	syslogs, err := c.f.syslog.deliverySinks(c.f.podName, &c.closers)
	if err != nil {
		return err
	}
	h, ca, err := c.f.alerts.start(c.clients, c.f.namespace, c.feed, c.reg, c.log, syslogs...)
	if err != nil {
		return err
	}
	c.alerts = h
	if ca != nil {
		c.parts.AddFunc("egress alert view", ca.view.Run)
		// Two leader parts, so that an error of either ends the term (the
		// replica releases the Lease and exits) instead of a leader that
		// no longer delivers.
		c.leaderParts.AddFunc("alert delivery", ca.whenSynced(ca.delivery.Run))
		c.leaderParts.AddFunc("alert collection", ca.whenSynced(ca.gc.Run))
	}
	return nil
}

// clusterAlerts is the controller's alert feed from the cluster: every
// replica serves it, the leader delivers and collects.
type clusterAlerts struct {
	view     *kube.AlertView
	delivery *kube.AlertDelivery
	gc       *kube.AlertGC
}

// start builds the EgressAlert view (when --alerts-from cluster) and
// returns the /v1/alerts handler; the clusterAlerts is nil in local mode.
func (c *clusterAlertFlags) start(clients *kube.Clients, namespace string, feed *alert.Feed, reg prometheus.Registerer, log *slog.Logger, extra ...kube.DeliverySink) (http.Handler, *clusterAlerts, error) {
	switch c.source {
	case "local":
		return feed.Handler(), nil, nil
	case "cluster":
	default:
		return nil, nil, fmt.Errorf("--alerts-from: want cluster or local, got %q", c.source)
	}
	secret := ""
	if c.webhookSecretFile != "" {
		b, err := os.ReadFile(c.webhookSecretFile)
		if err != nil {
			return nil, nil, fmt.Errorf("--alert-webhook-secret-file: %w", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	var sinks []kube.DeliverySink
	for i, w := range c.webhooks {
		name, url, ok := strings.Cut(w, "=")
		if !ok || name == "" || url == "" {
			return nil, nil, fmt.Errorf("--alert-webhook[%d]: want NAME=URL, got %q", i, w)
		}
		cfg := alert.WebhookConfig{Name: name, URL: url, Secret: secret}
		sinks = append(sinks, kube.DeliverySink{Name: "webhook." + name, Deliver: func(ctx context.Context, a alert.Alert) error {
			return alert.Post(ctx, cfg, a, time.Now())
		}})
	}
	sinks = append(sinks, extra...)
	if c.events {
		ev := &kube.EventSink{Client: clients.Kube, Component: "kordon-controller"}
		sinks = append(sinks, kube.DeliverySink{Name: "events", Deliver: ev.Deliver})
	}
	ca := &clusterAlerts{view: kube.NewAlertView(clients, log)}
	var err error
	if ca.delivery, err = kube.NewAlertDelivery(kube.AlertDeliveryConfig{Client: clients.Kube, Namespace: namespace, Source: ca.view, Sinks: sinks, Logger: log, Metrics: reg}); err != nil {
		return nil, nil, err
	}
	if ca.gc, err = kube.NewAlertGC(kube.AlertGCConfig{Clients: clients, View: ca.view, Retention: c.retention, MaxPerNamespace: c.perNamespace,
		Interval: c.gcInterval, Logger: log, Metrics: reg}); err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /v1/alerts", alert.ListHandler(ca.view, time.Now))
	mux.HandleFunc("POST /v1/alerts", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "this controller serves the cluster's EgressAlerts (--alerts-from cluster): node agents write them (kordon node --cluster-alerts)", http.StatusGone)
	})
	return mux, ca, nil
}

// whenSynced runs f once the alert view has synced (it reads the view),
// until lctx ends.
func (ca *clusterAlerts) whenSynced(f func(context.Context) error) func(context.Context) error {
	return func(lctx context.Context) error {
		select {
		case <-ca.view.Synced():
			return f(lctx)
		case <-lctx.Done():
			return nil
		}
	}
}

// registerClusterFlags adds the node agent's cluster-state flags.
func (f *nodeFlags) registerClusterFlags(fl *pflag.FlagSet) {
	fl.DurationVar(&f.alertCooldown, "alert-cooldown", alert.DefaultCooldown, "repeats of an alert (workload, kind, domain) within this time are not recorded again")
	fl.BoolVar(&f.clusterAlerts, "cluster-alerts", true, "write alerts and quarantines as EgressAlert and Quarantine objects (buffered in the local log while the API server is unreachable) and enforce every Quarantine on this node's pods; the controller's leader then sends Events")
}

// alertHooks are the receivers of the node's local alert log: with
// --cluster-alerts the sink writing EgressAlerts and Quarantines (the log
// is its buffer), else Kubernetes Events; and --controller-http.
func (n *nodeAgent) alertHooks(ctx context.Context) ([]alert.WebhookConfig, error) {
	var hooks []alert.WebhookConfig
	if n.f.clusterAlerts {
		st, err := newNodeClusterState(n.clients, n.f.df.node, n.f.wl.namespace, n.reg, n.log)
		if err != nil {
			return nil, err
		}
		n.state = st
		hooks = append(hooks, alert.WebhookConfig{Name: "cluster", Sink: st.sink})
	} else {
		hooks = append(hooks, alert.WebhookConfig{Name: "events", Sink: &kube.EventSink{Client: n.clients.Kube, Node: n.f.df.node}})
	}
	if n.f.controllerHTTP != "" {
		hooks = append(hooks, n.f.wl.controllerHook(ctx, n.clients, n.f.controllerHTTP))
	}
	return hooks, nil
}

// wireQuarantines enforces every Quarantine of the cluster on this node's
// pods (--cluster-alerts); the agent is ready once the first set applies.
func (n *nodeAgent) wireQuarantines(context.Context) error {
	if n.state == nil {
		return nil
	}
	var fw addrQuarantiner
	if n.stack != nil {
		fw = n.stack.fw
	}
	n.state.watcher.Apply = quarantineApplier(n.insp, fw)
	synced := make(chan struct{})
	n.readyAfter = append(n.readyAfter, synced)
	n.parts.AddFunc("quarantines", func(ctx context.Context) error { return n.state.watcher.Run(ctx, synced) })
	return nil
}

// nodeClusterState is the node agent's side: the sink writing its alerts
// and quarantines to the API, and the watcher enforcing every Quarantine
// on its pods.
type nodeClusterState struct {
	watcher *kube.QuarantineWatcher
	sink    *kube.ClusterSink
}

func newNodeClusterState(clients *kube.Clients, node, namespace string, reg prometheus.Registerer, log *slog.Logger) (*nodeClusterState, error) {
	w := &kube.QuarantineWatcher{Clients: clients, Node: node, Logger: log}
	sink, err := kube.NewClusterSink(kube.ClusterSinkConfig{Dynamic: clients.Dynamic, Node: node, Namespace: namespace, Owners: w, Logger: log, Metrics: reg})
	if err != nil {
		return nil, err
	}
	return &nodeClusterState{watcher: w, sink: sink}, nil
}

// quarantineApplier hands the watcher's sets to dnsguard and (when on)
// the egress firewall, each of which replaces what the cluster held.
func quarantineApplier(insp *dnsguard.DetectionInspector, fw addrQuarantiner) func([]kube.QuarantinedPod) error {
	return func(pods []kube.QuarantinedPod) error {
		var dns []dnsguard.ClusterQuarantine
		var addrs [][2]netip.Addr
		for _, p := range pods {
			for d, q := range p.Domains {
				dns = append(dns, dnsguard.ClusterQuarantine{Namespace: p.Namespace, Pod: p.Pod, Domain: d, Name: q})
			}
			for dst := range p.Addresses {
				for _, ip := range p.IPs {
					addrs = append(addrs, [2]netip.Addr{ip, dst})
				}
			}
		}
		err := insp.SetClusterQuarantines(dns)
		if fw != nil {
			err = errors.Join(err, fw.SetClusterQuarantines(addrs))
		}
		return err
	}
}

// addrQuarantiner is the egress firewall's quarantine of destination
// addresses per workload address, as the cluster holds them.
type addrQuarantiner interface {
	SetClusterQuarantines(qs [][2]netip.Addr) error
}
