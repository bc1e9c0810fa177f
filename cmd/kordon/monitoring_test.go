package main

import (
	"context"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/egress"
	"github.com/kordon-dev/kordon/egress/flowlog"
	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/internal/netns"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/manifests"
	"github.com/kordon-dev/kordon/xds"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// collectorRecorder registers on a real registry and remembers every
// collector, so that the names of vectors without a child yet (which
// Gather leaves out) are known too.
type collectorRecorder struct {
	reg *prometheus.Registry
	cs  []prometheus.Collector
}

func (r *collectorRecorder) Register(c prometheus.Collector) error {
	if err := r.reg.Register(c); err != nil {
		return err
	}
	r.cs = append(r.cs, c)
	return nil
}

func (r *collectorRecorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *collectorRecorder) Unregister(c prometheus.Collector) bool { return r.reg.Unregister(c) }

var descRE = regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}\}$`)

// series are the series names the registered collectors expose (a
// histogram's _bucket, _sum and _count) with their label names.
func (r *collectorRecorder) series() map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, c := range r.cs {
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		// (prometheus.Histogram and prometheus.Summary are the same
		// interface; kordon has no summaries.)
		suffixes := []string{""}
		switch c.(type) {
		case prometheus.Histogram, *prometheus.HistogramVec:
			suffixes = []string{"_bucket", "_sum", "_count"}
		}
		for d := range ch {
			m := descRE.FindStringSubmatch(d.String())
			if m == nil {
				continue
			}
			for _, s := range suffixes {
				labels := map[string]bool{}
				for _, l := range strings.Split(m[2], ",") {
					if l != "" {
						labels[l] = true
					}
				}
				if s == "_bucket" {
					labels["le"] = true
				}
				out[m[1]+s] = labels
			}
		}
	}
	return out
}

// kordonRegistries builds the components the controller and the node
// agent build, with their real constructors and the registerer the
// commands give them, and returns the series they expose.
func kordonRegistries(t *testing.T) map[string]map[string]bool {
	t.Helper()
	rec := &collectorRecorder{reg: prometheus.NewRegistry()}
	dir := t.TempDir()
	ctx := context.Background()

	feed, err := alert.NewFeed(alert.Config{Dir: filepath.Join(dir, "alerts"), Metrics: rec,
		Webhooks: []alert.WebhookConfig{{Name: "controller", URL: "http://127.0.0.1:1/v1/alerts"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { feed.Close() })
	insp, err := dnsguard.NewInspector(dnsguard.InspectorConfig{Feed: feed, StateDir: dir, BlockedAlerts: true, Metrics: rec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { insp.Close() })
	srv, err := dnsguard.New(dnsguard.Config{Registry: workload.NewRegistry(), Upstreams: []string{"127.0.0.1:1"}, Metrics: rec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if _, err := identity.New(ctx, identity.Config{TrustDomain: "cluster.local", Store: &identity.FileStore{Path: filepath.Join(dir, "ca.json")}, Metrics: rec}); err != nil {
		t.Fatal(err)
	}
	if _, err := xds.New(xds.Config{Registry: workload.NewRegistry(), TrustDomain: "cluster.local", AllowUnauthenticated: true, Metrics: rec}); err != nil {
		t.Fatal(err)
	}
	// Clients that are never used: the constructors only register metrics.
	cfg := &rest.Config{Host: "http://127.0.0.1:1"}
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.NewAlertDelivery(kube.AlertDeliveryConfig{Client: kc, Namespace: "kordon-system", Source: feed, Metrics: rec}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.NewClusterSink(kube.ClusterSinkConfig{Dynamic: dc, Node: "node-a", Namespace: "kordon-system", Metrics: rec}); err != nil {
		t.Fatal(err)
	}

	// The egress firewall and the flow log program a network namespace
	// of their own.
	netns.RequireRoot(t)
	ns := netns.New(t, "kmon")
	fd := ns.Fd(t)
	reg := workload.NewRegistry()
	fw, err := egress.New(egress.Config{NetNSFd: fd, Registry: reg, Metrics: rec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fw.Close() })
	fl, err := flowlog.New(flowlog.Config{NetNSFd: fd, Registry: reg, Names: fw, Metrics: rec})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fl.Close() })
	return rec.series()
}

var (
	kordonMetric = regexp.MustCompile(`\bkordon_[a-z0-9_]*[a-z0-9]\b`)
	// selector is a metric with label matchers: kordon_x{a="b",c=~"d"}.
	selector = regexp.MustCompile(`\b(kordon_[a-z0-9_]*[a-z0-9])\{([^}]*)\}`)
	matcher  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)`)
	byClause = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// targetLabels are added by Prometheus (job, instance) or by the chart's
// PodMonitor (node), not by kordon.
var targetLabels = map[string]bool{"job": true, "instance": true, "node": true}

// TestMonitoringMetricsExist: every kordon metric that the monitoring
// pack's alerting rules and Grafana dashboard query (manifests/monitoring)
// is exposed by kordon's own components, with the labels the queries
// match on and aggregate by, so no panel stays empty and no alert can
// never fire because of a misspelt or renamed metric or label.
func TestMonitoringMetricsExist(t *testing.T) {
	have := kordonRegistries(t)
	rules, err := manifests.RuleQueries()
	if err != nil {
		t.Fatal(err)
	}
	dash, err := manifests.DashboardQueries(manifests.Dashboard)
	if err != nil {
		t.Fatal(err)
	}
	used := map[string][]string{}
	for what, qs := range map[string][]string{"prometheusrule.yaml": rules, "kordon-dashboard.json": dash} {
		for _, q := range qs {
			// The labels of every metric the query reads.
			labels := map[string]bool{}
			for _, m := range kordonMetric.FindAllString(q, -1) {
				used[m] = append(used[m], what)
				for l := range have[m] {
					labels[l] = true
				}
			}
			for _, sel := range selector.FindAllStringSubmatch(q, -1) {
				for _, mt := range matcher.FindAllStringSubmatch(sel[2], -1) {
					if l := mt[1]; !targetLabels[l] && have[sel[1]] != nil && !have[sel[1]][l] {
						t.Errorf("%s: %s has no label %s (query %q)", what, sel[1], l, q)
					}
				}
			}
			for _, by := range byClause.FindAllStringSubmatch(q, -1) {
				for _, l := range strings.Split(by[1], ",") {
					if l = strings.TrimSpace(l); l != "" && !targetLabels[l] && !labels[l] {
						t.Errorf("%s: no metric of the query has label %s (query %q)", what, l, q)
					}
				}
			}
		}
	}
	if len(used) < 30 {
		t.Fatalf("only %d kordon metrics found in the monitoring pack", len(used))
	}
	var names []string
	for m := range used {
		names = append(names, m)
	}
	sort.Strings(names)
	for _, m := range names {
		if have[m] == nil {
			t.Errorf("%s (queried by %s) is exposed by no kordon component", m, strings.Join(used[m], ", "))
		}
	}
	t.Logf("%d metrics queried by the monitoring pack, all among the %d series kordon exposes, with their labels", len(names), len(have))
}
