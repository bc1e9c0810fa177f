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
