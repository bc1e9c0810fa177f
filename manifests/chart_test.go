package manifests

import (
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/releaseutil"
	"sigs.k8s.io/yaml"
)

// helmTemplate is `helm template kordon manifests/charts/kordon -n
// kordon-system --set ...` with helm's own packages: the chart loaded from
// disk, the values coalesced and checked against values.schema.json, and
// every template rendered by helm's engine in strict mode (a missing
// value is an error). It returns the objects by "Kind/namespace/name".
func helmTemplate(t *testing.T, set map[string]any) (map[string]map[string]any, error) {
	t.Helper()
	return helmTemplateIn(t, Namespace, set)
}

// helmTemplateIn is helmTemplate with -n ns.
func helmTemplateIn(t *testing.T, ns string, set map[string]any) (map[string]map[string]any, error) {
	t.Helper()
	ch, err := loader.Load(ChartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ToRenderValues(ch, set, chartutil.ReleaseOptions{Name: "kordon", Namespace: ns, IsInstall: true}, nil)
	if err != nil {
		return nil, err
	}
	rendered, err := engine.Engine{Strict: true, LintMode: false}.Render(ch, vals)
	if err != nil {
		return nil, err
	}
	objs := map[string]map[string]any{}
	for name, text := range rendered {
		if strings.HasSuffix(name, "NOTES.txt") {
			continue
		}
		for _, doc := range releaseutil.SplitManifests(text) {
			var o map[string]any
			if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			if o == nil {
				continue
			}
			k := key(o)
			if objs[k] != nil {
				t.Fatalf("%s rendered twice", k)
			}
			objs[k] = o
		}
	}
	return objs, nil
}

func key(o map[string]any) string {
	md, _ := o["metadata"].(map[string]any)
	return fmt.Sprintf("%v/%v/%v", o["kind"], md["namespace"], md["name"])
}

func installYAML(t *testing.T) map[string]map[string]any {
	t.Helper()
	b, err := os.ReadFile("install.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]map[string]any{}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var o map[string]any
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatal(err)
		}
		if o != nil {
			objs[key(o)] = o
		}
	}
	return objs
}

func sameObjects(t *testing.T, got, want map[string]map[string]any) {
	t.Helper()
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if want[k] == nil {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case got[k] == nil:
			t.Errorf("%s: in install.yaml, not rendered by the chart", k)
		case want[k] == nil:
			t.Errorf("%s: rendered by the chart, not in install.yaml", k)
		case !reflect.DeepEqual(got[k], want[k]):
			g, _ := yaml.Marshal(got[k])
			w, _ := yaml.Marshal(want[k])
			t.Errorf("%s differs:\n--- chart\n%s\n--- install.yaml\n%s", k, g, w)
		}
	}
}

// TestChartDefaultsAreInstallYAML: `helm template` at the chart's
// defaults is install.yaml, object for object, except the Namespace,
// which `helm install --create-namespace` makes; with namespace.create
// it is install.yaml exactly.
func TestChartDefaultsAreInstallYAML(t *testing.T) {
	t.Parallel()
	want := installYAML(t)
	got, err := helmTemplate(t, map[string]any{"namespace": map[string]any{"create": true}})
	if err != nil {
		t.Fatal(err)
	}
	sameObjects(t, got, want)

	got, err = helmTemplate(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	delete(want, "Namespace/<nil>/"+Namespace)
	sameObjects(t, got, want)
}

// TestChartLint is `helm lint manifests/charts/kordon` (helm's pkg/lint:
// Chart.yaml, values against values.schema.json, every template rendered
// and parsed, Kubernetes names and selectors), at the defaults and with
// everything on. Nothing above INFO is allowed.
func TestChartLint(t *testing.T) {
	t.Parallel()
	for name, vals := range map[string]map[string]any{
		"defaults": nil,
		"everything on": {
			"namespace":  map[string]any{"create": true},
			"node":       map[string]any{"metricsPort": 9082, "dns": map[string]any{"rateLimit": 200}},
			"monitoring": map[string]any{"serviceMonitor": map[string]any{"enabled": true}, "podMonitor": map[string]any{"enabled": true}, "prometheusRule": map[string]any{"enabled": true}, "dashboard": map[string]any{"enabled": true}},
		},
	} {
		l := lint.All(ChartDir, vals, Namespace, false)
		for _, m := range l.Messages {
			if m.Severity > support.InfoSev {
				t.Errorf("%s: %v", name, m)
			} else {
				t.Logf("%s: %v", name, m)
			}
		}
	}
}

func container(t *testing.T, o map[string]any, name string) map[string]any {
	t.Helper()
	spec := o["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	for _, field := range []string{"containers", "initContainers"} {
		cs, _ := spec[field].([]any)
		for _, c := range cs {
			if c.(map[string]any)["name"] == name {
				return c.(map[string]any)
			}
		}
	}
	return nil
}

func strs(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, e := range l {
		out = append(out, fmt.Sprint(e))
	}
	return out
}

// TestChartValues renders the chart with values changed and checks that
// each lands where it should.
func TestChartValues(t *testing.T) {
	t.Parallel()
	const ds, dep = "DaemonSet/kordon-system/kordon-node", "Deployment/kordon-system/kordon-controller"
	objs, err := helmTemplate(t, map[string]any{
		"rootNamespace": "mesh-root",
		"image":         map[string]any{"repository": "registry.example/kordon", "tag": "v1.2.3", "pullPolicy": "IfNotPresent"},
		"controller":    map[string]any{"replicas": 3, "nodeSelector": map[string]any{"role": "infra"}, "priorityClassName": "system-cluster-critical"},
		"node": map[string]any{
			"dns":            map[string]any{"address": "169.254.0.53", "upstream": "10.0.0.10:53", "blockRcode": "REFUSED"},
			"egressFirewall": map[string]any{"podCIDR": "10.1.0.0/16", "serviceCIDR": "10.2.0.0/16", "extraInternalCIDRs": []any{"192.0.2.0/24"}, "ttlGrace": "2m"},
			"metricsPort":    9082,
			"detection":      map[string]any{"alertCooldown": "30m"},
		},
		"monitoring": map[string]any{
			"serviceMonitor": map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}},
			"podMonitor":     map[string]any{"enabled": true},
			"prometheusRule": map[string]any{"enabled": true},
			"dashboard":      map[string]any{"enabled": true},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if args := strs(container(t, objs[dep], "controller")["args"]); !strings.Contains(strings.Join(args, " "), "--root-namespace=mesh-root") {
		t.Errorf("controller args %v", args)
	}
	if got := objs[dep]["spec"].(map[string]any)["replicas"]; got != float64(3) {
		t.Errorf("replicas = %v", got)
	}
	pod := objs[dep]["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	if !reflect.DeepEqual(pod["nodeSelector"], map[string]any{"role": "infra"}) || pod["priorityClassName"] != "system-cluster-critical" {
		t.Errorf("controller pod spec: nodeSelector %v, priorityClassName %v", pod["nodeSelector"], pod["priorityClassName"])
	}
	for _, c := range []map[string]any{container(t, objs[dep], "controller"), container(t, objs[ds], "node"), container(t, objs[ds], "host-setup")} {
		if c["image"] != "registry.example/kordon:v1.2.3" || c["imagePullPolicy"] != "IfNotPresent" {
			t.Errorf("container %v: image %v, pull policy %v", c["name"], c["image"], c["imagePullPolicy"])
		}
	}
	node := container(t, objs[ds], "node")
	args := strings.Join(strs(node["args"]), " ")
	for _, want := range []string{"--dns-listen=169.254.0.53:53", "--block-rcode=REFUSED", "--egress-firewall", "--internal-cidr=$(POD_CIDR) --internal-cidr=$(SERVICE_CIDR)", "--egress-ttl-grace=2m", "--internal-cidr=192.0.2.0/24", "--metrics-listen=:9082", "--alert-cooldown=30m", "--root-namespace=mesh-root"} {
		if !strings.Contains(args, want) {
			t.Errorf("node args %q lack %q", args, want)
		}
	}
	env := map[string]string{}
	for _, e := range node["env"].([]any) {
		e := e.(map[string]any)
		env[fmt.Sprint(e["name"])] = fmt.Sprint(e["value"])
	}
	if env["UPSTREAM_DNS"] != "10.0.0.10:53" || env["POD_CIDR"] != "10.1.0.0/16" || env["SERVICE_CIDR"] != "10.2.0.0/16" {
		t.Errorf("node env %v", env)
	}
	sm := objs["ServiceMonitor/kordon-system/kordon-controller"]
	if sm == nil || sm["metadata"].(map[string]any)["labels"].(map[string]any)["release"] != "prom" {
		t.Errorf("ServiceMonitor %v", sm)
	}
	pm := objs["PodMonitor/kordon-system/kordon-node"]
	if pm == nil || !strings.Contains(fmt.Sprint(pm["spec"]), "replacement:$1:9082") {
		t.Errorf("PodMonitor %v", pm)
	}
	// The rules and the dashboard come out of helm's template engine as
	// they are in manifests/monitoring ({{ $labels.x }} and Grafana's
	// {{legend}} untouched).
	var rule map[string]any
	if err := yaml.Unmarshal(PrometheusRule, &rule); err != nil {
		t.Fatal(err)
	}
	if got := objs["PrometheusRule/kordon-system/kordon"]; got == nil || !reflect.DeepEqual(got["spec"], rule["spec"]) {
		t.Errorf("PrometheusRule spec differs from manifests/monitoring/prometheusrule.yaml")
	}
	cm := objs["ConfigMap/kordon-system/kordon-grafana-dashboard"]
	if cm == nil || cm["data"].(map[string]any)["kordon.json"] != string(Dashboard) {
		t.Errorf("dashboard ConfigMap differs from manifests/monitoring/kordon-dashboard.json")
	}

	// The egress firewall off: no firewall flags, no NET_ADMIN, no
	// privileged init container.
	objs, err = helmTemplate(t, map[string]any{"node": map[string]any{"egressFirewall": map[string]any{"enabled": false, "extraInternalCIDRs": []any{"192.0.2.0/24"}}}})
	if err != nil {
		t.Fatal(err)
	}
	node = container(t, objs[ds], "node")
	if s := fmt.Sprint(node["args"], node["env"], node["securityContext"]); strings.Contains(s, "egress") || strings.Contains(s, "internal-cidr") || strings.Contains(s, "CIDR") || strings.Contains(s, "NET_ADMIN") {
		t.Errorf("firewall off, node container still has it: %s", s)
	}
	if c := container(t, objs[ds], "host-setup"); c != nil {
		t.Errorf("firewall off, init container %v", c)
	}
}

// TestChartSchemaRefusesTypos: values.schema.json refuses a wrong type
// and an unknown key, as `helm install --set` would.
func TestChartSchemaRefusesTypos(t *testing.T) {
	t.Parallel()
	for name, set := range map[string]map[string]any{
		"wrong type":  {"controller": map[string]any{"replicas": "two"}},
		"unknown key": {"node": map[string]any{"egressFirewal": map[string]any{"enabled": false}}},
	} {
		if _, err := helmTemplate(t, set); err == nil {
			t.Errorf("%s: rendered", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// TestChartOtherNamespace: installed with -n security, every namespaced
// object is there and every reference (service addresses, flags, RBAC
// subjects, the node-scope policy's service account) follows; only the
// CRDs' documentation still says kordon-system.
func TestChartOtherNamespace(t *testing.T) {
	t.Parallel()
	objs, err := helmTemplateIn(t, "security", map[string]any{"namespace": map[string]any{"create": true}})
	if err != nil {
		t.Fatal(err)
	}
	if objs["Namespace/<nil>/security"] == nil {
		t.Error("no Namespace security")
	}
	for k, o := range objs {
		if o["kind"] == "CustomResourceDefinition" {
			continue
		}
		if b, _ := yaml.Marshal(o); strings.Contains(string(b), Namespace) {
			t.Errorf("%s still mentions %s:\n%s", k, Namespace, b)
		}
	}
	sa := fmt.Sprint(objs["ClusterRoleBinding/<nil>/kordon-node"]["subjects"])
	if !strings.Contains(sa, "namespace:security") {
		t.Errorf("kordon-node ClusterRoleBinding subjects %s", sa)
	}
}
