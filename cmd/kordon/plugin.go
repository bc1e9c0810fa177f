package main

import (
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
)

// kubectlPluginName is the name kubectl finds a plugin by: a
// kubectl-kordon on PATH (a symlink to this binary) makes
// `kubectl kordon ...` run it with the same arguments.
const kubectlPluginName = "kubectl-kordon"

// pluginName names root "kubectl kordon" when the binary runs as the
// kubectl plugin (argv[0]'s basename is kubectl-kordon), so help and
// usage show the command a person typed; the commands are the same.
func pluginName(root *cobra.Command, argv0 string) {
	if strings.TrimSuffix(filepath.Base(argv0), ".exe") == kubectlPluginName {
		// cobra's display name: Use's first word stays the command's name.
		root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl kordon"}
	}
}
