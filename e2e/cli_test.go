package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/kube"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	sigyaml "sigs.k8s.io/yaml"
)

// createState creates an EgressAlert or Quarantine from YAML.
func createState(t *testing.T, gvr schema.GroupVersionResource, ns, doc string) {
	t.Helper()
	obj := map[string]any{}
	if err := yamlToMap(doc, &obj); err != nil {
		t.Fatal(err)
	}
	if _, err := clients.Dynamic.Resource(gvr).Namespace(ns).Create(context.Background(), &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create %s %s: %v", gvr.Resource, ns, err)
	}
}

func egressAlertYAML(name, pod, domain string, count int) string {
	now := time.Now().UTC().Format(time.RFC3339)
	return fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: EgressAlert
metadata: {name: %s}
spec: {severity: high, kind: exfiltration, node: node-a, pod: %s, domain: %s, action: quarantined, count: %d, firstSeen: %q, lastSeen: %q, message: high-entropy labels}
`, name, pod, domain, count, now, now)
}

// cliKubeconfig writes a kubeconfig with contexts a (current, namespace
// nsA), b (namespace nsB) and nobody (a service account with no RBAC).
func cliKubeconfig(t *testing.T, nsA, nsB, nobodyToken string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: %q}}, {name: nobody, user: {token: %q}}, {name: bogus, user: {token: not-a-token}}]
contexts:
- {name: a, context: {cluster: e2e, user: admin, namespace: %s}}
- {name: b, context: {cluster: e2e, user: admin, namespace: %s}}
- {name: nobody, context: {cluster: e2e, user: nobody, namespace: %s}}
- {name: bogus, context: {cluster: e2e, user: bogus}}
current-context: a
`, cluster.URL, cluster.AdminToken, nobodyToken, nsA, nsB, nsA)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runCLI runs bin with args and returns stdout, stderr and the exit code.
func runCLI(t *testing.T, env []string, bin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), env...)
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	}
	t.Fatalf("%s %v: %v", bin, args, err)
	return "", "", -1
}

// TestCLIReadsCluster runs the real binary, as kordon and as the kubectl
// plugin kubectl-kordon, against EgressAlerts and Quarantines in two
// namespaces: kubectl's -n, -A, --context, every -o, a watch that prints
// an object created after it started, quarantine lift, and the errors
// (NotFound, Forbidden) with their exit codes.
func TestCLIReadsCluster(t *testing.T) {
	bin := buildKordon(t)
	ctx := context.Background()
	nsA, nsB := newNamespace(t), newNamespace(t)
	createState(t, kube.EgressAlertGVR, nsA, egressAlertYAML("exfiltration-report-worker-1", "report-worker-1", "evil.example", 12))
	createState(t, kube.EgressAlertGVR, nsB, egressAlertYAML("exfiltration-billing-0", "billing-0", "tunnel.example", 3))
	createState(t, kube.QuarantineGVR, nsA, `apiVersion: security.kordon.dev/v1
kind: Quarantine
metadata: {name: report-worker-evil}
spec: {owner: {kind: Deployment, name: report-worker}, domains: [evil.example], addresses: [192.0.2.7], node: node-a, reason: exfiltration over DNS}
`)
	createState(t, kube.QuarantineGVR, nsB, `apiVersion: security.kordon.dev/v1
kind: Quarantine
metadata: {name: billing-tunnel}
spec: {serviceAccount: billing, domains: [tunnel.example], reason: tunneling}
`)
	// A service account without any RBAC: its token authenticates, but
	// may read nothing of kordon's.
	if _, err := clients.Kube.CoreV1().ServiceAccounts(nsA).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "nobody"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := clients.Kube.CoreV1().ServiceAccounts(nsA).CreateToken(ctx, "nobody", &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kc := cliKubeconfig(t, nsA, nsB, tr.Status.Token)
	run := func(args ...string) (string, string, int) {
		t.Helper()
		return runCLI(t, nil, bin, append(args, "--kubeconfig", kc)...)
	}
	mustRun := func(args ...string) string {
		t.Helper()
		out, errOut, code := run(args...)
		if code != 0 {
			t.Fatalf("kordon %v: exit %d\n%s%s", args, code, out, errOut)
		}
		t.Logf("$ kordon %s\n%s", strings.Join(args, " "), out)
		return out
	}

	// The context's namespace, -n, --context.
	for _, c := range []struct {
		name string
		args []string
		want string
		not  string
	}{
		{name: "context namespace", args: []string{"alerts"}, want: "report-worker-1", not: "billing-0"},
		{name: "-n", args: []string{"alerts", "-n", nsB}, want: "billing-0", not: "report-worker-1"},
		{name: "--context", args: []string{"alerts", "--context", "b"}, want: "billing-0", not: "report-worker-1"},
		{name: "quarantine -n", args: []string{"quarantine", "list", "-n", nsB}, want: "billing-tunnel", not: "report-worker-evil"},
		{name: "quarantine context", args: []string{"quarantine", "list"}, want: "report-worker-evil", not: "billing-tunnel"},
	} {
		out := mustRun(c.args...)
		if !strings.Contains(out, c.want) || strings.Contains(out, c.not) || strings.Contains(out, "NAMESPACE") {
			t.Errorf("%s: want %s without %s and no NAMESPACE column:\n%s", c.name, c.want, c.not, out)
		}
	}
	out := mustRun("alerts", "-n", nsA)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "NAME KIND SEVERITY POD DOMAIN COUNT LAST SEEN AGE" ||
		strings.Join(strings.Fields(lines[1])[:6], " ") != "exfiltration-report-worker-1 exfiltration high report-worker-1 evil.example 12" {
		t.Errorf("alerts table:\n%s", out)
	}
	out = mustRun("alerts", "-n", nsA, "-o", "wide")
	if h := strings.Join(strings.Fields(strings.SplitN(out, "\n", 2)[0]), " "); h != "NAME KIND SEVERITY POD DOMAIN COUNT LAST SEEN ACTION NODE AGE" ||
		!strings.Contains(out, "quarantined") || !strings.Contains(out, "node-a") {
		t.Errorf("alerts -o wide:\n%s", out)
	}
	out = mustRun("quarantine", "list", "-A", "-o", "wide")
	if !strings.HasPrefix(strings.Join(strings.Fields(out), " "), "NAMESPACE NAME OWNER KIND OWNER SERVICE ACCOUNT DOMAINS ADDRESSES NODE REASON AGE") ||
		!strings.Contains(out, "192.0.2.7") || !strings.Contains(out, "billing-tunnel") {
		t.Errorf("quarantine list -A -o wide:\n%s", out)
	}

	// -A, as kordon and as the kubectl plugin (argv[0] kubectl-kordon).
	all := mustRun("alerts", "-A")
	for _, want := range []string{"NAMESPACE", nsA, nsB, "report-worker-1", "billing-0"} {
		if !strings.Contains(all, want) {
			t.Errorf("alerts -A lacks %s:\n%s", want, all)
		}
	}
	pluginDir := t.TempDir()
	plugin := filepath.Join(pluginDir, "kubectl-kordon")
	if err := os.Symlink(bin, plugin); err != nil {
		t.Fatal(err)
	}
	if pout, perr, code := runCLI(t, nil, plugin, "alerts", "-A", "--kubeconfig", kc); code != 0 || !sameRows(pout, all) {
		t.Errorf("kubectl-kordon alerts -A: exit %d\n%s%s\nwant the rows of kordon alerts -A:\n%s", code, pout, perr, all)
	}
	if help, _, _ := runCLI(t, nil, plugin, "quarantine", "--help"); !strings.Contains(help, "kubectl kordon quarantine [command]") {
		t.Errorf("kubectl-kordon --help does not name itself kubectl kordon:\n%s", help)
	}
	if kubectl, err := exec.LookPath("kubectl"); err != nil {
		t.Log("kubectl not on PATH: plugin discovery through kubectl not run")
	} else {
		env := []string{"PATH=" + pluginDir + string(os.PathListSeparator) + os.Getenv("PATH"), "KUBECONFIG=" + kc}
		kout, kerr, code := runCLI(t, env, kubectl, "kordon", "alerts", "-A")
		if code != 0 || !sameRows(kout, all) {
			t.Errorf("kubectl kordon alerts -A: exit %d\n%s%s", code, kout, kerr)
		}
		t.Logf("$ kubectl kordon alerts -A\n%s", kout)
	}

	// -o json and yaml: kubectl's List of the objects.
	var list struct {
		Kind  string           `json:"kind"`
		Items []map[string]any `json:"items"`
	}
	if err := json.Unmarshal([]byte(mustRun("alerts", "--context", "b", "-o", "json")), &list); err != nil || list.Kind != "List" || len(list.Items) != 1 {
		t.Fatalf("alerts -o json: %v %+v", err, list)
	}
	if md := list.Items[0]["metadata"].(map[string]any); md["name"] != "exfiltration-billing-0" || md["namespace"] != nsB || list.Items[0]["kind"] != "EgressAlert" {
		t.Errorf("alerts -o json item: %v", list.Items[0])
	}
	list.Items = nil
	if err := sigyaml.Unmarshal([]byte(mustRun("quarantine", "list", "-o", "yaml")), &list); err != nil || len(list.Items) != 1 ||
		list.Items[0]["spec"].(map[string]any)["reason"] != "exfiltration over DNS" {
		t.Fatalf("quarantine list -o yaml: %v %+v", err, list)
	}

	// --watch: the list, then an object created after the watch started
	// and an update, until the process is interrupted.
	wcmd, wout := startProcessCmd(t, bin, "alerts", "--kubeconfig", kc, "-n", nsA, "--watch")
	eventually(t, 30*time.Second, "the watch's initial list", func() bool { return strings.Contains(wout.String(), "report-worker-1") })
	createState(t, kube.EgressAlertGVR, nsA, egressAlertYAML("exfiltration-late-pod", "late-pod", "late.example", 1))
	eventually(t, 30*time.Second, "the watch printing an alert created after it started", func() bool { return strings.Contains(wout.String(), "late-pod") })
	u, err := clients.Dynamic.Resource(kube.EgressAlertGVR).Namespace(nsA).Get(ctx, "exfiltration-late-pod", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	unstructured.SetNestedField(u.Object, int64(5), "spec", "count")
	if _, err := clients.Dynamic.Resource(kube.EgressAlertGVR).Namespace(nsA).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the watch printing the update", func() bool {
		for _, l := range strings.Split(wout.String(), "\n") {
			if f := strings.Fields(l); len(f) > 5 && f[0] == "exfiltration-late-pod" && f[5] == "5" {
				return true
			}
		}
		return false
	})
	if err := wcmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- wcmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("watch after Ctrl-C: %v\n%s", err, wout.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("watch did not end within 20s of SIGINT")
	}
	t.Logf("$ kordon alerts -n %s --watch   # then an alert created, updated, and Ctrl-C\n%s", nsA, wout.String())
	if h := strings.Count(wout.String(), "NAME "); h != 1 {
		t.Errorf("watch printed the header %d times:\n%s", h, wout.String())
	}

	// lift deletes the Quarantine; a second lift is NotFound (exit 3).
	if out := mustRun("quarantine", "lift", "report-worker-evil"); !strings.Contains(out, `"report-worker-evil" lifted`) {
		t.Errorf("lift: %s", out)
	}
	if _, err := clients.Dynamic.Resource(kube.QuarantineGVR).Namespace(nsA).Get(ctx, "report-worker-evil", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the lifted Quarantine is still there: %v", err)
	}
	if _, errOut, code := run("quarantine", "lift", "report-worker-evil"); code != 3 ||
		errOut != `kordon: Error from server (NotFound): quarantines.security.kordon.dev "report-worker-evil" not found`+"\n" {
		t.Errorf("lift of a missing Quarantine: exit %d, %q", code, errOut)
	}
	if _, err := clients.Dynamic.Resource(kube.QuarantineGVR).Namespace(nsB).Get(ctx, "billing-tunnel", metav1.GetOptions{}); err != nil {
		t.Fatalf("the other namespace's Quarantine: %v", err)
	}

	// A user without rights: Forbidden with the verb and resource, exit 4.
	for _, c := range []struct {
		args []string
		want string
	}{
		{args: []string{"alerts", "--context", "nobody"}, want: `cannot list resource "egressalerts" in API group "security.kordon.dev" in the namespace "` + nsA + `"`},
		{args: []string{"alerts", "--context", "nobody", "-A"}, want: `cannot list resource "egressalerts" in API group "security.kordon.dev" at the cluster scope`},
		{args: []string{"quarantine", "lift", "billing-tunnel", "--context", "nobody", "-n", nsB}, want: `cannot delete resource "quarantines" in API group "security.kordon.dev" in the namespace "` + nsB + `"`},
	} {
		_, errOut, code := run(c.args...)
		if code != 4 || !strings.HasPrefix(errOut, "kordon: Error from server (Forbidden): ") || !strings.Contains(errOut, c.want) {
			t.Errorf("kordon %v as nobody: exit %d, %q; want exit 4 and %q", c.args, code, errOut, c.want)
		}
		t.Logf("$ kordon %s   # exit %d\n%s", strings.Join(c.args, " "), code, errOut)
	}
	// A token the API server rejects: Unauthorized, exit 4.
	if _, errOut, code := run("quarantine", "list", "--context", "bogus"); code != 4 || errOut != "kordon: Error from server (Unauthorized): Unauthorized\n" {
		t.Errorf("quarantine list with a rejected token: exit %d, %q", code, errOut)
	}
}

// sameRows reports whether two tables have the same rows, ignoring the
// AGE-like columns' values (they move with time) by comparing the first
// six cells.
func sameRows(a, b string) bool {
	la, lb := strings.Split(strings.TrimSpace(a), "\n"), strings.Split(strings.TrimSpace(b), "\n")
	if len(la) != len(lb) {
		return false
	}
	for i := range la {
		fa, fb := strings.Fields(la[i]), strings.Fields(lb[i])
		if len(fa) < 6 || len(fb) < 6 || strings.Join(fa[:6], " ") != strings.Join(fb[:6], " ") {
			return false
		}
	}
	return true
}
