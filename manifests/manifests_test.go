package manifests

import (
	"bytes"
	"os"
	"testing"
)

// TestGeneratedManifestsUpToDate fails when crds.yaml or install.yaml
// differ from what the generator produces from the current Go types.
func TestGeneratedManifestsUpToDate(t *testing.T) {
	t.Parallel()
	files, err := Generate("../policy/types.go")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatalf("%v (run: go run ./manifests/gen)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is out of date: run go run ./manifests/gen", name)
		}
	}
}
