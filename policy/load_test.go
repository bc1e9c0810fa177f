package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadDirectorySkipsNonPolicyFiles: in a directory argument, files
// with no policy document are skipped with a reason; files that are (or
// look like) policies stay strict; named files are never skipped.
func TestLoadDirectorySkipsNonPolicyFiles(t *testing.T) {
	t.Parallel()
	files := map[string]string{
		"workloads.yaml":  "- name: frontend\n  namespace: shop\n",
		"deploy.yaml":     "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
		"plain.yaml":      "a: 1\n",
		"empty.yaml":      "",
		"policy.yaml":     "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec: {}\n",
		".hidden/x.yaml":  "- not even looked at\n",
		"sub/egress.yaml": "apiVersion: security.kordon.dev/v1\nkind: EgressPolicy\nmetadata: {name: e, namespace: foo}\nspec: {allow: [example.com]}\n",
	}
	dir := t.TempDir()
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	set, err := LoadPaths(LoadOptions{}, dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Authorization) != 1 || len(set.Egress) != 1 {
		t.Fatalf("loaded %d authorization, %d egress policies", len(set.Authorization), len(set.Egress))
	}
	var got []string
	for _, s := range set.Skipped {
		got = append(got, strings.TrimPrefix(s.Path, dir+"/")+": "+s.Reason)
	}
	want := []string{
		"deploy.yaml: not a policy file: kind Deployment (apps/v1)",
		"empty.yaml: no documents",
		"plain.yaml: not a policy file: an object without apiVersion and kind",
		"workloads.yaml: not a policy file: a list (kordon dev's workloads.yaml)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("skipped:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Strict for policy files in a directory: an Istio document with an
	// unsupported kind, a policy that lost its kind, invalid YAML.
	for name, body := range map[string]string{
		"peer.yaml":    "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n",
		"nokind.yaml":  "metadata: {name: p}\nspec: {action: DENY}\n",
		"broken.yaml":  "apiVersion: [\n",
		"badfield.yml": "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {actoin: DENY}\n",
	} {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadPaths(LoadOptions{}, d); err == nil {
			t.Errorf("%s in a directory: no error", name)
		}
	}
	// A file named as an argument is never skipped.
	if _, err := LoadPaths(LoadOptions{}, filepath.Join(dir, "workloads.yaml")); err == nil {
		t.Error("named workloads.yaml: no error")
	}
}

// TestPathWarnings: a path that does not start with '/' is accepted, as
// Istio accepts it, and reported with its position and effect.
func TestPathWarnings(t *testing.T) {
	t.Parallel()
	set, err := LoadPaths(LoadOptions{}, "testdata/allow-path-without-slash-in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`testdata/allow-path-without-slash-in.yaml:15:17: spec.rules[0].to[0].operation.paths[0]: path "shop.Catalog/List" does not start with '/': this value matches no request (as in Istio)`,
		`testdata/allow-path-without-slash-in.yaml:18:20: spec.rules[1].to[0].operation.notPaths[0]: path "admin" does not start with '/': this value matches every request (as in Istio)`,
	}
	var got []string
	for _, w := range set.Warnings {
		got = append(got, w.Error())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, tc := range []struct {
		path    string
		allowed bool
	}{
		{"/shop.Catalog/List", false}, // "shop.Catalog/List" is not it
		{"/admin", false},             // notPaths [admin] matches, but the method is not GET
		{"/grpc.health.v1.Health/Check", true},
	} {
		d, err := Explain(set, goldenTarget, Request{Method: "POST", Path: tc.path}, CompileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed != tc.allowed {
			t.Errorf("%s: allowed=%v, want %v (%s)", tc.path, d.Allowed, tc.allowed, d.Reason)
		}
	}
}
