// Command kordon is the single binary of kordon: the controller, the node
// agent, dev mode and the CLI. This package only parses flags and wires the
// packages together.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// exitError carries an exit code without printing anything more.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "kordon",
		Short:         "Sidecar-free service mesh policy and egress/DNS gateway",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// One constructor per subcommand, each in its own file.
	for _, c := range subcommands {
		root.AddCommand(c())
	}
	return root
}

// subcommands lists the constructors of the top-level subcommands.
var subcommands = []func() *cobra.Command{
	newXDSCmd,
	newPolicyCmd,
	newVersionCmd,
	newDevCmd,
	newDNSGuardCmd,
	newAlertsCmd,
	newControllerCmd,
	newNodeCmd,
	newDetectCmd,
	newQuarantineCmd,
}

func main() {
	root := newRootCmd()
	pluginName(root, os.Args[0])
	if err := root.Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "kordon:", err)
		os.Exit(1)
	}
}
