// Command gen writes manifests/crds.yaml and manifests/install.yaml from
// one source: the CRD schemas are derived from the Go types in package
// policy (json tags and doc comments), and the install objects are built
// here. Run `go run ./manifests/gen` after changing either; a test fails
// when the committed files differ from the output.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kordon-dev/kordon/manifests"
)

func main() {
	dir := flag.String("dir", "manifests", "output directory")
	typesFile := flag.String("types", "policy/types.go", "Go file with the API types (for doc comments)")
	flag.Parse()
	files, err := manifests.Generate(*typesFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(*dir, name), data, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "gen:", err)
			os.Exit(1)
		}
	}
}
