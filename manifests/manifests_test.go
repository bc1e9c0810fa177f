package manifests

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// TestGeneratedManifestsUpToDate fails when crds.yaml, install.yaml or
// the chart differ from what the generator produces from the current Go
// types, or when the chart holds a file the generator does not make.
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
	err = filepath.WalkDir(ChartDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if _, ok := files[filepath.ToSlash(p)]; !ok {
			t.Errorf("%s is not generated: remove it (go run ./manifests/gen removes stale templates)", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
