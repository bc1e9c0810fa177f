package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/manifests"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// TestStateColumnsAreTheCRDs checks the CLI's table columns against the
// CRDs' additionalPrinterColumns (priority 1 only with -o wide), so
// kordon alerts and kubectl get egressalerts print the same columns.
func TestStateColumnsAreTheCRDs(t *testing.T) {
	t.Parallel()
	crds, err := manifests.CRDs("../../policy/types.go")
	if err != nil {
		t.Fatal(err)
	}
	for kind, sk := range map[string]stateKind{"EgressAlert": egressAlertKind, "Quarantine": quarantineKind} {
		var want []string
		for _, c := range crds {
			spec := c["spec"].(map[string]any)
			if spec["names"].(map[string]any)["kind"] != kind {
				continue
			}
			for _, col := range spec["versions"].([]any)[0].(map[string]any)["additionalPrinterColumns"].([]any) {
				m := col.(map[string]any)
				name := strings.ToUpper(m["name"].(string))
				if p, _ := m["priority"].(int); p > 0 {
					name += " (wide)"
				}
				want = append(want, name)
			}
		}
		var got []string
		for _, c := range sk.columns {
			name := c.name
			if c.wide {
				name += " (wide)"
			}
			got = append(got, name)
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s columns:\n got %v\nwant %v (the CRD's)", kind, got, want)
		}
	}
}

func stateObject(kind, ns, name string, created time.Time, spec map[string]any) unstructured.Unstructured {
	u := unstructured.Unstructured{Object: map[string]any{"apiVersion": "security.kordon.dev/v1", "kind": kind, "spec": spec}}
	u.SetNamespace(ns)
	u.SetName(name)
	u.SetCreationTimestamp(metav1.NewTime(created))
	u.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: "kordon-node", Operation: metav1.ManagedFieldsOperationUpdate}})
	return u
}

func TestStatePrinter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC)
	alerts := []unstructured.Unstructured{
		stateObject("EgressAlert", "shop", "exfiltration-report-worker-1-3f2a9c01de", now.Add(-3*time.Hour), map[string]any{
			"kind": "exfiltration", "severity": "high", "pod": "report-worker-1", "domain": "evil.example", "count": int64(12),
			"lastSeen": now.Add(-90 * time.Second).Format(time.RFC3339), "action": "quarantined", "node": "node-a"}),
		stateObject("EgressAlert", "web", "blocked-10.0.0.9-0011223344", now.Add(-49*time.Hour), map[string]any{
			"kind": "blocked", "severity": "low", "domain": "ads.example", "count": int64(1), "action": "blocked", "node": "node-b"}),
	}
	quars := []unstructured.Unstructured{
		stateObject("Quarantine", "shop", "report-worker-9a8b7c6d5e", now.Add(-5*time.Minute), map[string]any{
			"owner": map[string]any{"kind": "Deployment", "name": "report-worker"}, "domains": []any{"evil.example", "evil2.example"},
			"addresses": []any{"192.0.2.7"}, "node": "node-a", "reason": "exfiltration over DNS"}),
		stateObject("Quarantine", "shop", "billing", now.Add(-time.Minute), map[string]any{"serviceAccount": "billing", "domains": []any{"tunnel.example"}}),
	}
	for _, c := range []struct {
		name   string
		kind   stateKind
		items  []unstructured.Unstructured
		format string
		all    bool
		want   string
	}{
		{name: "alerts table", kind: egressAlertKind, items: alerts[:1], format: "table", want: `
NAME                                     KIND          SEVERITY  POD              DOMAIN        COUNT  LAST SEEN  AGE
exfiltration-report-worker-1-3f2a9c01de  exfiltration  high      report-worker-1  evil.example  12     90s        3h
`},
		{name: "alerts all namespaces wide", kind: egressAlertKind, items: alerts, format: "wide", all: true, want: `
NAMESPACE  NAME                                     KIND          SEVERITY  POD              DOMAIN        COUNT  LAST SEEN  ACTION       NODE    AGE
shop       exfiltration-report-worker-1-3f2a9c01de  exfiltration  high      report-worker-1  evil.example  12     90s        quarantined  node-a  3h
web        blocked-10.0.0.9-0011223344              blocked       low       <none>           ads.example   1      <unknown>  blocked      node-b  2d1h
`},
		{name: "quarantines table", kind: quarantineKind, items: quars, format: "table", want: `
NAME                      OWNER KIND  OWNER          SERVICE ACCOUNT  DOMAINS                     AGE
report-worker-9a8b7c6d5e  Deployment  report-worker  <none>           evil.example,evil2.example  5m
billing                   <none>      <none>         billing          tunnel.example              60s
`},
		{name: "quarantines wide", kind: quarantineKind, items: quars[:1], format: "wide", want: `
NAME                      OWNER KIND  OWNER          SERVICE ACCOUNT  DOMAINS                     ADDRESSES  NODE    REASON                 AGE
report-worker-9a8b7c6d5e  Deployment  report-worker  <none>           evil.example,evil2.example  192.0.2.7  node-a  exfiltration over DNS  5m
`},
		{name: "quarantines json without managedFields", kind: quarantineKind, items: quars[1:], format: "json", want: `
{
  "apiVersion": "v1",
  "items": [
    {
      "apiVersion": "security.kordon.dev/v1",
      "kind": "Quarantine",
      "metadata": {
        "creationTimestamp": "2026-12-01T22:59:00Z",
        "name": "billing",
        "namespace": "shop"
      },
      "spec": {
        "domains": [
          "tunnel.example"
        ],
        "serviceAccount": "billing"
      }
    }
  ],
  "kind": "List"
}
`},
		{name: "alerts yaml", kind: egressAlertKind, items: alerts[1:], format: "yaml", want: `
apiVersion: v1
items:
- apiVersion: security.kordon.dev/v1
  kind: EgressAlert
  metadata:
    creationTimestamp: "2026-11-29T22:00:00Z"
    name: blocked-10.0.0.9-0011223344
    namespace: web
  spec:
    action: blocked
    count: 1
    domain: ads.example
    kind: blocked
    node: node-b
    severity: low
kind: List
`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var b bytes.Buffer
			p := newStatePrinter(&b, c.kind, c.format, c.all, func() time.Time { return now })
			if err := p.list(c.items); err != nil {
				t.Fatal(err)
			}
			if got := b.String(); got != strings.TrimPrefix(c.want, "\n") {
				t.Errorf("got:\n%s\nwant:\n%s", got, strings.TrimPrefix(c.want, "\n"))
			}
			if len(c.items[0].GetManagedFields()) == 0 {
				t.Error("printing changed the object")
			}
		})
	}
}

// TestStatePrinterWatch: a watch prints the header once, and YAML
// documents separated by ---.
func TestStatePrinterWatch(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC)
	a := stateObject("EgressAlert", "shop", "exfiltration-report-worker-1", now, map[string]any{"kind": "exfiltration", "count": int64(12), "pod": "report-worker-1"})
	later := stateObject("EgressAlert", "shop", "late", now, map[string]any{"kind": "tunneling", "count": int64(2)})
	var b bytes.Buffer
	p := newStatePrinter(&b, egressAlertKind, "table", false, func() time.Time { return now })
	for _, u := range []*unstructured.Unstructured{&a, &later, &later} {
		if err := p.object(u); err != nil {
			t.Fatal(err)
		}
		if err := p.tw.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	want := `NAME                          KIND          SEVERITY  POD              DOMAIN  COUNT  LAST SEEN  AGE
exfiltration-report-worker-1  exfiltration  <none>    report-worker-1  <none>  12     <unknown>  0s
late                          tunneling     <none>    <none>           <none>  2      <unknown>  0s
late                          tunneling     <none>    <none>           <none>  2      <unknown>  0s
`
	if b.String() != want {
		t.Errorf("table watch, each row flushed alone:\n%s\nwant (aligned with the header):\n%s", b.String(), want)
	}
	b.Reset()
	p = newStatePrinter(&b, egressAlertKind, "yaml", false, func() time.Time { return now })
	for range 2 {
		if err := p.object(&a); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Count(b.String(), "---\n") != 2 || strings.Count(b.String(), "kind: EgressAlert") != 2 || strings.Contains(b.String(), "managedFields") {
		t.Errorf("yaml watch:\n%s", b.String())
	}
}

// TestPluginName: run as kubectl-kordon, the commands are named
// "kubectl kordon" in help; run as kordon, unchanged.
func TestPluginName(t *testing.T) {
	t.Parallel()
	for argv0, want := range map[string]string{
		"/usr/local/bin/kubectl-kordon": "kubectl kordon quarantine list",
		"kubectl-kordon":                "kubectl kordon quarantine list",
		"/usr/local/bin/kordon":         "kordon quarantine list",
	} {
		root := newRootCmd()
		pluginName(root, argv0)
		c, _, err := root.Find([]string{"quarantine", "list"})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.CommandPath(); got != want {
			t.Errorf("%s: command path %q, want %q", argv0, got, want)
		}
	}
}

// TestClusterFlagErrors: bad flag combinations fail before any request.
func TestClusterFlagErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		want string
	}{
		{args: []string{"alerts", "-o", "name", "--kubeconfig", "/nonexistent"}, want: `-o "name": want one of table, wide, json, yaml`},
		{args: []string{"alerts", "-A", "-n", "x"}, want: "-A and -n are exclusive"},
		{args: []string{"alerts", "--server", "http://127.0.0.1:1", "-A"}, want: "--context, -A and --watch read the cluster: not with --server (use --follow)"},
		{args: []string{"alerts", "--since", "1h"}, want: "--since and --limit apply to an alert feed (--server); the cluster keeps one EgressAlert per series (see LAST SEEN)"},
		{args: []string{"quarantine", "list", "--kubeconfig", "/nonexistent"}, want: "kube: kubeconfig: stat /nonexistent: no such file or directory"},
		{args: []string{"quarantine", "lift"}, want: "requires at least 1 arg(s), only received 0"},
	} {
		root := newRootCmd()
		root.SetArgs(c.args)
		root.SetOut(new(bytes.Buffer))
		root.SetErr(new(bytes.Buffer))
		if err := root.Execute(); err == nil || err.Error() != c.want {
			t.Errorf("%v: error %v, want %q", c.args, err, c.want)
		}
	}
}

// TestAPIExit: errors from the API server print as kubectl's and exit
// 3 (NotFound) or 4 (Forbidden, Unauthorized); others are returned.
func TestAPIExit(t *testing.T) {
	t.Parallel()
	gr := schema.GroupResource{Group: "security.kordon.dev", Resource: "quarantines"}
	for _, c := range []struct {
		name   string
		err    error
		code   int
		stderr string
	}{
		{name: "not found", err: fmt.Errorf("kube: delete: %w", apierrors.NewNotFound(gr, "q")), code: exitNotFound,
			stderr: `kordon: Error from server (NotFound): quarantines.security.kordon.dev "q" not found` + "\n"},
		{name: "forbidden", err: apierrors.NewForbidden(gr, "q", errors.New(`User "bob" cannot delete resource "quarantines"`)), code: exitForbidden,
			stderr: `kordon: Error from server (Forbidden): quarantines.security.kordon.dev "q" is forbidden: User "bob" cannot delete resource "quarantines"` + "\n"},
		{name: "unauthorized", err: apierrors.NewUnauthorized("Unauthorized"), code: exitForbidden,
			stderr: "kordon: Error from server (Unauthorized): Unauthorized\n"},
		{name: "conflict", err: apierrors.NewConflict(gr, "q", errors.New("changed")), code: 1,
			stderr: `kordon: Error from server (Conflict): Operation cannot be fulfilled on quarantines.security.kordon.dev "q": changed` + "\n"},
		{name: "not from the server", err: errors.New("dial tcp: refused"), code: -1},
	} {
		var stderr bytes.Buffer
		cmd := newRootCmd()
		cmd.SetErr(&stderr)
		err := apiExit(cmd, c.err)
		var ee exitError
		switch {
		case c.code < 0:
			if err != c.err || stderr.Len() != 0 {
				t.Errorf("%s: %v, printed %q; want the error returned", c.name, err, stderr.String())
			}
		case !errors.As(err, &ee) || ee.code != c.code || stderr.String() != c.stderr:
			t.Errorf("%s: %v, printed %q; want exit %d and %q", c.name, err, stderr.String(), c.code, c.stderr)
		}
	}
}
