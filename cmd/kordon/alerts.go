package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/spf13/cobra"
)

func newAlertsCmd() *cobra.Command {
	var server, since, namespace, kind, severity, output string
	var follow bool
	var limit int
	var auth feedClientFlags
	var read clusterReadFlags
	cmd := &cobra.Command{
		Use:   "alerts [-n NS | -A] [-o table|wide|json|yaml] [--watch] | --server URL [-o table|json] [--follow]",
		Short: "Show the cluster's EgressAlerts, or an alert feed (exfiltration, tunneling, blocked, quarantine)",
		Long: `Without --server, the cluster's EgressAlerts through the kubeconfig, with kubectl's
flags; with --server, an alert feed (kordon dev, or a controller's), shown
as a table or as one JSON object a line (-o table|json).

Exit codes reading the cluster: 0 done, 1 error, 3 not found, 4 forbidden or unauthorized.`,
		Example: `  # the cluster's EgressAlerts through the kubeconfig (kubectl's flags)
  kordon alerts -A
  kordon alerts -n shop -o wide --watch
  kubectl kordon alerts --context prod -n shop -o yaml
  # an alert feed: kordon dev, or a controller
  kordon alerts --server http://127.0.0.1:9080 --since 1h
  kordon alerts --server http://127.0.0.1:9080 --follow -o json | jq .
  # a cluster's controller: a token with list on egressalerts, the trust bundle
  kordon alerts --server https://127.0.0.1:9443 --ca-file bundle.pem --token-file token -n shop`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if server == "" {
				read.kubeconfig, read.namespace, read.output, read.watch = auth.kubeconfig, namespace, output, read.watch || follow
				return read.alerts(cmd, kind, severity, since, limit)
			}
			if read.context != "" || read.allNamespaces || read.watch {
				return errors.New("--context, -A and --watch read the cluster: not with --server (use --follow)")
			}
			if output != "json" && output != "table" {
				return fmt.Errorf("-o %q: with --server, want table or json", output)
			}
			q := url.Values{}
			for k, v := range map[string]string{"since": since, "namespace": namespace, "kind": kind, "severity": severity} {
				if v != "" {
					q.Set(k, v)
				}
			}
			if limit > 0 {
				q.Set("limit", fmt.Sprint(limit))
			}
			if follow {
				q.Set("follow", "1")
			}
			u := strings.TrimSuffix(server, "/") + "/v1/alerts?" + q.Encode()
			client, err := auth.httpClient()
			if err != nil {
				return err
			}
			if !follow {
				client.Timeout = 30 * time.Second
			}
			req, err := http.NewRequestWithContext(cmd.Context(), http.MethodGet, u, nil)
			if err != nil {
				return err
			}
			if tok, err := auth.bearer(server); err != nil {
				return err
			} else if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			resp, err := client.Do(req)
			if err != nil {
				return fmt.Errorf("alert feed at %s: %w", server, err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				return fmt.Errorf("alert feed: %s: %s", resp.Status, strings.TrimSpace(string(b)))
			}
			out := cmd.OutOrStdout()
			tw := newTable(out)
			header := func() { fmt.Fprintln(tw, "ID\tTIME\tSEVERITY\tKIND\tWORKLOAD\tDOMAIN\tACTION\tMESSAGE") }
			row := func(a alert.Alert) error {
				if output == "json" {
					b, err := json.Marshal(a)
					if err != nil {
						return err
					}
					_, err = fmt.Fprintln(out, string(b))
					return err
				}
				who := a.Workload()
				_, err := fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.Time.Local().Format(time.DateTime), a.Severity, a.Kind, who, a.Domain, a.Action, a.Message)
				return err
			}
			if !follow {
				var body struct {
					Alerts []alert.Alert `json:"alerts"`
				}
				if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
					return fmt.Errorf("alert feed: %w", err)
				}
				if output == "table" {
					if len(body.Alerts) == 0 {
						fmt.Fprintln(out, "No alerts.")
						return nil
					}
					header()
				}
				for _, a := range body.Alerts {
					if err := row(a); err != nil {
						return err
					}
				}
				return tw.Flush()
			}
			if output == "table" {
				header()
				tw.Flush()
			}
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				data, ok := strings.CutPrefix(sc.Text(), "data: ")
				if !ok {
					continue
				}
				var a alert.Alert
				if err := json.Unmarshal([]byte(data), &a); err != nil {
					return fmt.Errorf("alert feed: %w", err)
				}
				if err := row(a); err != nil {
					return err
				}
				// Following: each alert is shown as it comes.
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if cmd.Context().Err() != nil {
				return nil
			}
			return sc.Err()
		},
	}
	f := cmd.Flags()
	f.StringVar(&server, "server", "", "alert feed URL (kordon dev: http://127.0.0.1:9080, or the controller); without it, the cluster's EgressAlerts through the kubeconfig")
	f.BoolVarP(&follow, "follow", "f", false, "stream new alerts (Server-Sent Events)")
	f.StringVar(&since, "since", "", "only alerts newer than a duration (1h) or an RFC 3339 time")
	f.StringVarP(&namespace, "namespace", "n", "", "only alerts for workloads in this namespace (reading the cluster: default the kubeconfig context's)")
	f.StringVar(&kind, "kind", "", "exfiltration, tunneling, blocked, quarantine, direct-egress, resolver-bypass or egress-volume")
	f.StringVar(&severity, "severity", "", "low, medium, high or critical")
	f.IntVar(&limit, "limit", 0, "at most this many (the newest)")
	auth.register(f)
	read.registerKubectl(f)
	addOutputFlag(cmd, &output, clusterFormats...)
	return cmd
}
