package manifests

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// PrometheusRule is manifests/monitoring/prometheusrule.yaml: kordon's
// alerting rules for the Prometheus Operator.
//
//go:embed monitoring/prometheusrule.yaml
var PrometheusRule []byte

// Dashboard is manifests/monitoring/kordon-dashboard.json: kordon's
// Grafana dashboard.
//
//go:embed monitoring/kordon-dashboard.json
var Dashboard []byte

// monitoringObjects are the chart's monitoring objects (each behind a
// value that is off by default, so install.yaml has none of them): a
// ServiceMonitor for the controllers, a PodMonitor for the node agents,
// the PrometheusRule and the dashboard ConfigMap.
func monitoringObjects() ([]map[string]any, error) {
	var rule map[string]any
	if err := yaml.Unmarshal(PrometheusRule, &rule); err != nil {
		return nil, fmt.Errorf("manifests: monitoring/prometheusrule.yaml: %w", err)
	}
	var dash map[string]any
	if err := yaml.Unmarshal(Dashboard, &dash); err != nil {
		return nil, fmt.Errorf("manifests: monitoring/kordon-dashboard.json: %w", err)
	}
	ctrl := map[string]any{"app.kubernetes.io/name": "kordon-controller"}
	node := map[string]any{"app.kubernetes.io/name": "kordon-node"}
	return []map[string]any{
		{"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": meta("kordon-controller", true, ctrl), "spec": map[string]any{
			"selector":  map[string]any{"matchLabels": ctrl},
			"endpoints": []any{map[string]any{"port": "http", "path": "/metrics", "interval": "30s"}},
		}},
		// The node agents have no container ports (hostNetwork would make
		// them hostPorts): the target address is the pod IP (the node's)
		// and node.metricsPort.
		{"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": meta("kordon-node", true, node), "spec": map[string]any{
			"selector": map[string]any{"matchLabels": node},
			"podMetricsEndpoints": []any{map[string]any{"path": "/metrics", "interval": "30s", "relabelings": []any{
				map[string]any{"sourceLabels": []any{"__meta_kubernetes_pod_ip"}, "targetLabel": "__address__", "replacement": "$1:0", "action": "replace"},
				map[string]any{"sourceLabels": []any{"__meta_kubernetes_pod_node_name"}, "targetLabel": "node", "action": "replace"},
			}}},
		}},
		rule,
		{"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("kordon-grafana-dashboard", true, map[string]any{"grafana_dashboard": "1"}),
			"data": map[string]any{"kordon.json": string(Dashboard)}},
	}, nil
}

// DashboardQueries returns every PromQL expression of the Grafana
// dashboard (panel targets and template variable queries), with Grafana's
// variables replaced so that each is plain PromQL.
func DashboardQueries(dashboard []byte) ([]string, error) {
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(dashboard, &d); err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	grafana := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$instance", ".*")
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				return nil, fmt.Errorf("dashboard: panel %q: a target without expr", p.Title)
			}
			out = append(out, grafana.Replace(tg.Expr))
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(map[string]any)
		s, _ := q["query"].(string)
		// label_values(metric, label) is Grafana's, not PromQL: the
		// metric is the query.
		if m, ok := strings.CutPrefix(s, "label_values("); ok {
			s, _, _ = strings.Cut(m, ",")
		}
		out = append(out, s)
	}
	return out, nil
}

// RuleQueries returns the expression of every rule of PrometheusRule.
func RuleQueries() ([]string, error) {
	var pr struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert string `json:"alert"`
					Expr  string `json:"expr"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(PrometheusRule, &pr); err != nil {
		return nil, fmt.Errorf("manifests: monitoring/prometheusrule.yaml: %w", err)
	}
	var out []string
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Expr == "" {
				return nil, fmt.Errorf("manifests: monitoring/prometheusrule.yaml: rule %s has no expr", r.Alert)
			}
			out = append(out, r.Expr)
		}
	}
	return out, nil
}
