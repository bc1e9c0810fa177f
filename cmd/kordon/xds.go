package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/kordon-dev/kordon/xds"
)

func newXDSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "xds",
		Short: "Inspect the xDS server and configure proxyless gRPC workloads",
	}
	cmd.AddCommand(newXDSStatusCmd(), newXDSBootstrapCmd())
	return cmd
}

func newXDSStatusCmd() *cobra.Command {
	var server, node, output string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "status [--server URL] [--node NAMESPACE/POD]",
		Short: "Show per-node xDS versions sent, ACKed and NACKed",
		Long: `Reads the xDS server's status endpoint (kordon dev serves it at
/v1/xds/status) and prints one row per node: for each resource type SYNCED
(the last version sent was ACKed), NACKED (rejected; the node keeps its last
good config), STALE (sent, not answered yet) or - (never sent).`,
		Example: `  kordon xds status
  kordon xds status --node shop/frontend-0 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			u, err := url.Parse(server)
			if err != nil {
				return fmt.Errorf("--server: %w", err)
			}
			if node != "" {
				q := u.Query()
				q.Set("node", node)
				u.RawQuery = q.Encode()
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			rep, err := xds.FetchStatus(ctx, &http.Client{}, u.String())
			if err != nil {
				return err
			}
			if output == "table" {
				return xds.WriteStatusTable(cmd.OutOrStdout(), rep)
			}
			return printStructured(cmd.OutOrStdout(), output, rep)
		},
	}
	cmd.Flags().StringVar(&server, "server", "http://127.0.0.1:9080/v1/xds/status", "status endpoint URL")
	cmd.Flags().StringVar(&node, "node", "", "show one node (namespace/pod)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "request timeout")
	addOutputFlag(cmd, &output, "table", "json", "yaml")
	return cmd
}

func newXDSBootstrapCmd() *cobra.Command {
	var c xds.BootstrapConfig
	cmd := &cobra.Command{
		Use:   "bootstrap --xds HOST:PORT --node NAMESPACE/POD --cert FILE --key FILE --ca FILE",
		Short: "Print a grpc-go xDS bootstrap for a proxyless workload",
		Long: `Prints the JSON to put in GRPC_XDS_BOOTSTRAP_CONFIG (or a file named by
GRPC_XDS_BOOTSTRAP) of a proxyless gRPC workload: the kordon xDS server, the
node id, and a file_watcher certificate provider named "kordon" with the
workload's SVID files. With --bundle-map the workload trusts several trust
domains (set GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true in the workload).`,
		Example: `  kordon xds bootstrap --xds 127.0.0.1:18000 --node shop/frontend-0 \
    --cert svid.pem --key key.pem --ca bundle.pem > bootstrap.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := xds.ProxylessBootstrap(c)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), string(b))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.ServerURI, "xds", "127.0.0.1:18000", "kordon xDS server address")
	f.StringVar(&c.NodeID, "node", "", "node id: namespace/pod of the workload")
	f.StringVar(&c.CertFile, "cert", "", "SVID certificate chain file (PEM)")
	f.StringVar(&c.KeyFile, "key", "", "SVID private key file (PEM)")
	f.StringVar(&c.CAFile, "ca", "", "trust bundle file (PEM)")
	f.StringVar(&c.XDSCAFile, "xds-ca", "", "CA file verifying the xDS server (default: --ca)")
	f.StringVar(&c.BundleMapFile, "bundle-map", "", "SPIFFE trust bundle map file (several trust domains)")
	f.DurationVar(&c.RefreshInterval, "refresh", 10*time.Second, "how often the certificate files are re-read")
	f.BoolVar(&c.InsecureXDS, "insecure-xds", false, "connect to the xDS server without TLS (kordon dev on loopback)")
	return cmd
}
