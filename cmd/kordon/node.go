package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/egress"
	"github.com/kordon-dev/kordon/egress/flowlog"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
)

func newNodeCmd() *cobra.Command {
	var df dnsguardFlags
	var kubeconfig, dnsListen, httpListen, stateDir, controllerHTTP, queryLog, rootNS string
	var wl workloadAPIFlags
	var ef egressFlags
	var cleanup, prepareHost bool
	cmd := &cobra.Command{
		Use:   "node --node NAME --dns-listen ADDR --upstream IP:PORT",
		Short: "Run the node agent: DNS filtering for this node's pods, exfiltration detection, alert forwarding",
		Long: `The node agent watches only the pods scheduled on --node, attributes DNS queries
by source IP, applies EgressPolicies from the API, detects tunneling and
exfiltration, keeps a durable local alert log and forwards every alert to the
controller's feed (at least once, buffered on disk while the controller is down).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if prepareHost {
				if err := flowlog.EnableAccounting(0); err != nil {
					return fmt.Errorf("--prepare-host: %w", err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), "conntrack accounting and timestamps on (net.netfilter.nf_conntrack_acct=1, nf_conntrack_timestamp=1)")
				return nil
			}
			if cleanup {
				if err := egress.RemoveTable("", filepath.Join(stateDir, egressStateFile)); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "removed nftables table inet kordon and the egress state (if there were any)")
				return nil
			}
			if df.node == "" {
				return errors.New("--node is required (the DaemonSet passes spec.nodeName)")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), nil))
			cfg, err := df.config()
			if err != nil {
				return err
			}
			clients, err := kube.NewClients(kubeconfig)
			if err != nil {
				return err
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			workloads := workload.NewRegistry()
			if err := kube.RunWorkloads(ctx, clients, workloads, df.node); err != nil {
				return err
			}
			hooks := []alert.WebhookConfig{{Name: "events", Sink: &kube.EventSink{Client: clients.Kube, Node: df.node}}}
			if controllerHTTP != "" {
				hooks = append(hooks, alert.WebhookConfig{Name: "controller", URL: strings.TrimSuffix(controllerHTTP, "/") + "/v1/alerts"})
			}
			feed, err := alert.NewFeed(alert.Config{Dir: stateDir + "/alerts", Webhooks: hooks, Logger: log, Metrics: reg})
			if err != nil {
				return err
			}
			defer feed.Close()
			insp, err := dnsguard.NewInspector(dnsguard.InspectorConfig{Feed: feed, StateDir: stateDir, BlockedAlerts: true, Logger: log, Metrics: reg})
			if err != nil {
				return err
			}
			defer insp.Close()
			// The query log and the flow log may both go to stdout: whole
			// lines only.
			stdout := sharedLines(os.Stdout, 2)
			var stack *egressStack
			if ef.firewall {
				dnsAP, err := netip.ParseAddrPort(dnsListen)
				if err != nil {
					return fmt.Errorf("--dns-listen: %w", err)
				}
				warnUnroutedCNI(log)
				// Every pod's DNS is redirected to --dns-listen: it must be a
				// local address (a dummy interface, as NodeLocal DNSCache).
				if err := egress.EnsureLocalAddress("", dnsAP.Addr()); err != nil {
					return err
				}
				if stack, err = startEgress(ctx, &ef, egressDeps{
					Registry: workloads, Feed: feed, Node: df.node, TrustDomain: policy.DefaultTrustDomain,
					DNS: dnsAP, StateDir: stateDir, FlowOut: stdout[1], Metrics: reg, Logger: log,
				}); err != nil {
					return err
				}
				// The table stays when the agent stops: enforcement never
				// lapses across restarts (kordon node --cleanup removes it).
				defer stack.Stop(false)
				cfg.Firewall = stack.dnsFirewall()
			}
			w, closeLog, err := openLog(queryLog)
			if err != nil {
				return err
			}
			defer closeLog()
			if w == io.Writer(os.Stdout) {
				w = stdout[0]
			}
			cfg.Registry, cfg.QueryLog, cfg.Metrics, cfg.Logger, cfg.Inspector, cfg.RootNamespace = workloads, w, reg, log, insp, rootNS
			srv, err := dnsguard.New(cfg)
			if err != nil {
				return err
			}
			defer srv.Close()
			src := &kube.PolicySource{Clients: clients, EgressOnly: true, RootNamespace: rootNS, Logger: log,
				OnChange: func(s *policy.Set) {
					if err := srv.SetPolicies(s); err != nil {
						log.Error("egress policies not applied", "error", err)
					}
					if stack != nil {
						if err := stack.SetPolicies(s, rootNS, df.clusterDomain); err != nil {
							log.Error("egress firewall policies not applied", "error", err)
						}
					}
				}}
			synced := make(chan struct{})
			go func() {
				if err := src.Run(ctx, synced); err != nil {
					log.Error("policy source stopped", "error", err)
				}
			}()
			select {
			case <-synced:
			case <-ctx.Done():
				return nil
			}
			pc, ln, err := dnsguard.ListenUDPTCP(dnsListen)
			if err != nil {
				return err
			}
			var ready atomic.Bool
			mux := serviceMux(reg, &ready)
			mux.Handle("/v1/alerts", feed.Handler())
			mux.Handle("/v1/quarantines", insp.Handler())
			mux.Handle("/v1/quarantines/", insp.Handler())
			if stack != nil {
				stack.handle(mux)
			}
			httpLn, err := net.Listen("tcp", httpListen)
			if err != nil {
				return err
			}
			hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
			go func() { _ = hs.Serve(httpLn) }()
			defer hs.Shutdown(context.Background())
			if wl.socket != "" {
				if err := wl.serve(ctx, clients, workloads, log); err != nil {
					return err
				}
			}
			// Ready (/readyz 200) once the resolver answers, not before.
			go func() {
				select {
				case <-srv.Ready():
					ready.Store(true)
					fmt.Fprintf(cmd.ErrOrStderr(), "kordon node %s ready: dns %s, http %s, %d pods on this node\n", df.node, pc.LocalAddr(), httpLn.Addr(), len(workloads.List()))
				case <-ctx.Done():
				}
			}()
			return srv.Serve(ctx, pc, ln)
		},
	}
	df.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig path (default: in-cluster service account)")
	fl.StringVar(&dnsListen, "dns-listen", "169.254.20.10:53", "DNS address pods use (NodeLocal DNSCache style link-local IP)")
	fl.StringVar(&httpListen, "http-listen", "127.0.0.1:9081", "HTTP address: /healthz /readyz /metrics /v1/alerts /v1/quarantines")
	fl.StringVar(&stateDir, "state-dir", "/var/lib/kordon", "durable state: alert log, webhook cursors, quarantines")
	fl.StringVar(&controllerHTTP, "controller-http", "http://kordon-controller.kordon-system.svc:9080", "controller feed to forward alerts to (empty: keep local)")
	fl.StringVar(&queryLog, "log", "-", "query log: a file, - for stdout, empty for none")
	fl.StringVar(&rootNS, "root-namespace", policy.DefaultRootNamespace, "namespace whose EgressPolicies are mesh-wide")
	ef.register(fl, false)
	fl.BoolVar(&cleanup, "cleanup", false, "remove kordon's nftables table from this host and exit (uninstall)")
	fl.BoolVar(&prepareHost, "prepare-host", false, "turn on conntrack accounting in this network namespace and exit (the DaemonSet's privileged init container)")
	wl.register(cmd)
	return cmd
}
