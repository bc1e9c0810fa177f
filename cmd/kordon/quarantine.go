package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/policy"
	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// alerts lists (and with -w watches) the cluster's EgressAlerts: kordon
// alerts without --server. --kind and --severity select by the spec.
func (c *clusterReadFlags) alerts(cmd *cobra.Command, kind, severity, since string, limit int) error {
	if since != "" || limit > 0 {
		return errors.New("--since and --limit apply to an alert feed (--server); the cluster keeps one EgressAlert per series (see LAST SEEN)")
	}
	var keep func(*unstructured.Unstructured) bool
	if kind != "" || severity != "" {
		keep = func(u *unstructured.Unstructured) bool {
			var s policy.EgressAlertSpec
			if err := kube.DecodeSpec(u, &s); err != nil {
				return false
			}
			return (kind == "" || s.Kind == kind) && (severity == "" || strings.EqualFold(s.Severity, severity))
		}
	}
	return c.get(cmd, egressAlertKind, keep)
}

func newQuarantineCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "quarantine",
		Short: "List and lift the cluster's Quarantines (through the kubeconfig)",
		Long: `Quarantines block domains or addresses for a workload until deleted. These
commands read them through the kubeconfig with kubectl's flags.

Exit codes: 0 done, 1 error, 3 not found, 4 forbidden or unauthorized.`,
	}
	var list, lift clusterReadFlags
	listCmd := &cobra.Command{
		Use:   "list [-n NS | -A] [-o table|wide|json|yaml] [--watch]",
		Short: "List Quarantines (kubectl get quarantines)",
		Example: `  kordon quarantine list -A
  kubectl kordon quarantine list -n shop -o wide`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return list.get(cmd, quarantineKind, nil) },
	}
	list.registerAll(listCmd)
	liftCmd := &cobra.Command{
		Use:     "lift NAME... [-n NS]",
		Short:   "Lift Quarantines: delete them, so every node agent stops enforcing them",
		Example: `  kordon quarantine lift -n shop report-worker-3f2a9c01de`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, names []string) error {
			client, ns, err := lift.open(quarantineKind.resource)
			if err != nil {
				return err
			}
			ctx, stop := clusterContext(cmd)
			defer stop()
			for _, name := range names {
				if err := client.Delete(ctx, ns, name); err != nil {
					return apiExit(cmd, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "quarantine %q lifted (deleted) in namespace %q\n", name, ns)
			}
			return nil
		},
	}
	lift.registerConnection(liftCmd.Flags())
	lift.output = clusterFormats[0]
	cmd.AddCommand(listCmd, liftCmd)
	return cmd
}
