package main

import (
	"fmt"

	"github.com/kordon-dev/kordon/policy"
	"github.com/spf13/cobra"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check, compile and explain AuthorizationPolicy and EgressPolicy files",
	}
	cmd.AddCommand(newPolicyCheckCmd())
	return cmd
}

func newPolicyCheckCmd() *cobra.Command {
	var ns string
	return &cobra.Command{
		Use:   "check FILE|DIR...",
		Short: "Validate policy files; print file:line:col: field: message per error",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			set, err := policy.LoadPaths(policy.LoadOptions{DefaultNamespace: ns}, args...)
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return exitError{1}
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "ok: %d AuthorizationPolicies, %d EgressPolicies\n", len(set.Authorization), len(set.Egress))
			return err
		},
	}
}
