// Command gen writes manifests/crds.yaml, manifests/install.yaml and the
// Helm chart manifests/charts/kordon from one source: the CRD schemas are
// derived from the Go types in package policy (json tags and doc
// comments), the install objects are built in package manifests, and the
// chart is those objects with values at their configurable places. Run
// `go run ./manifests/gen` after changing either; a test fails when the
// committed files differ from the output.
package main

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kordon-dev/kordon/manifests"
)

func main() {
	dir := flag.String("dir", "manifests", "output directory")
	typesFile := flag.String("types", "policy/types.go", "Go file with the API types (for doc comments)")
	flag.Parse()
	if err := run(*dir, *typesFile); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(dir, typesFile string) error {
	files, err := manifests.Generate(typesFile)
	if err != nil {
		return err
	}
	// Templates of objects that are gone are removed.
	err = filepath.WalkDir(filepath.Join(dir, manifests.ChartDir), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if _, ok := files[filepath.ToSlash(rel)]; !ok && manifests.IsChartTemplate(filepath.ToSlash(rel)) {
			return os.Remove(p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
