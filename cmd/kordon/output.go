package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// addOutputFlag registers -o/--output with the given allowed formats; the
// first is the default.
func addOutputFlag(cmd *cobra.Command, dst *string, formats ...string) {
	cmd.Flags().StringVarP(dst, "output", "o", formats[0], fmt.Sprintf("output format: one of %v", formats))
}

// printStructured writes v as indented JSON or as YAML.
func printStructured(w io.Writer, format string, v any) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return fmt.Errorf("unsupported output format %q", format)
}

// newTable is the table printer of every command: columns aligned with
// two spaces between them, as kubectl prints. Flush after the rows (or
// after each row while following a stream).
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

// writeRow writes one row of cells to a newTable writer.
func writeRow(w io.Writer, cells ...string) error {
	_, err := io.WriteString(w, strings.Join(cells, "\t")+"\n")
	return err
}
