package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/egress"
	"github.com/kordon-dev/kordon/egress/flowlog"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/internal/run"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/spf13/cobra"
)

// nodeFlags are the flags of kordon node.
type nodeFlags struct {
	df                                                                    dnsguardFlags
	kubeconfig, dnsListen, httpListen, stateDir, controllerHTTP, queryLog string
	metricsListen                                                         string
	rootNS                                                                string
	wl                                                                    workloadAPIFlags
	ef                                                                    egressFlags
	cleanup, prepareHost                                                  bool
	httpAuth                                                              bool
	clusterAlerts                                                         bool
	alertCooldown                                                         time.Duration
	syslog                                                                syslogFlags
	logs                                                                  logFlags
}

func newNodeCmd() *cobra.Command {
	var f nodeFlags
	cmd := &cobra.Command{
		Use:   "node --node NAME --dns-listen ADDR --upstream IP:PORT",
		Short: "Run the node agent: DNS filtering for this node's pods, exfiltration detection, alert forwarding",
		Long: `The node agent watches only the pods scheduled on --node, attributes DNS queries
by source IP, applies EgressPolicies from the API, detects tunneling and
exfiltration, keeps a durable local alert log and forwards every alert to the
controller's feed (at least once, buffered on disk while the controller is down).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.prepareHost {
				if err := flowlog.EnableAccounting(0); err != nil {
					return fmt.Errorf("--prepare-host: %w", err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), "conntrack accounting and timestamps on (net.netfilter.nf_conntrack_acct=1, nf_conntrack_timestamp=1)")
				return nil
			}
			if f.cleanup {
				if err := egress.RemoveTable("", filepath.Join(f.stateDir, egressStateFile)); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "removed nftables table inet kordon and the egress state (if there were any)")
				return nil
			}
			if f.df.node == "" {
				return errors.New("--node is required (the DaemonSet passes spec.nodeName)")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runNode(ctx, f, cmd.ErrOrStderr())
		},
	}
	f.df.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig path (default: in-cluster service account)")
	fl.StringVar(&f.dnsListen, "dns-listen", "169.254.20.10:53", "DNS address pods use (NodeLocal DNSCache style link-local IP)")
	fl.StringVar(&f.httpListen, "http-listen", "127.0.0.1:9081", "HTTP address: /healthz /readyz /metrics /v1/alerts /v1/quarantines")
	fl.StringVar(&f.metricsListen, "metrics-listen", "", "address for /metrics, /healthz and /readyz only, e.g. :9082 for Prometheus on the node's address (empty: off)")
	fl.StringVar(&f.stateDir, "state-dir", "/var/lib/kordon", "durable state: alert log, webhook cursors, quarantines")
	fl.StringVar(&f.controllerHTTP, "controller-http", "", "also forward every alert to this controller feed (POST /v1/alerts, https://...:9443 with this agent's SVID over mTLS; for a controller with --alerts-from local)")
	fl.StringVar(&f.queryLog, "query-log", "-", "query log: a file, - for stdout, empty for none")
	deprecatedAlias(fl, "log", "query-log")
	fl.StringVar(&f.rootNS, "root-namespace", policy.DefaultRootNamespace, "namespace whose EgressPolicies are mesh-wide")
	f.ef.register(fl, false)
	registerNodeAuthFlag(fl, &f.httpAuth)
	f.syslog.register(fl)
	fl.BoolVar(&f.cleanup, "cleanup", false, "remove kordon's nftables table from this host and exit (uninstall)")
	fl.BoolVar(&f.prepareHost, "prepare-host", false, "turn on conntrack accounting in this network namespace and exit (the DaemonSet's privileged init container)")
	f.wl.register(cmd)
	f.registerClusterFlags(fl)
	f.logs.register(fl)
	return cmd
}

// nodeAgent is kordon node, wired: what its parts share. Each wire method
// builds one concern, mounts its routes on mux and adds its components to
// parts; a new concern is a wire method in its own file and one entry in
// nodeWiring.
type nodeAgent struct {
	*service
	f         nodeFlags
	stderr    io.Writer
	clients   *kube.Clients
	workloads *workload.Registry
	feed      *alert.Feed
	insp      *dnsguard.DetectionInspector
	// stdout is shared by the query log ([0]) and the flow log ([1]):
	// whole lines only.
	stdout []*lineWriter
	stack  *egressStack
	cfg    dnsguard.Config
	dns    *dnsguard.Server
	// synced is closed when the EgressPolicies are loaded: DNS is served
	// only after. readyAfter are the start-up signals /readyz waits for
	// besides the resolver serving.
	synced     chan struct{}
	readyAfter []<-chan struct{}
	dnsAddr    net.Addr
	state      *nodeClusterState
	// metricsLn is --metrics-listen's listener (nil: off).
	metricsLn net.Listener
}

// nodeWiring is the order in which kordon node is wired. All parts start
// together once every step is done.
func (n *nodeAgent) nodeWiring() []func(context.Context) error {
	return []func(context.Context) error{
		n.wireHandover,
		n.wireFeed,
		n.wireEgress,
		n.wireQuarantines,
		n.wireDNS,
		n.wirePolicies,
		n.wireWorkloadAPI,
		n.wireAPIAuth,
		n.wireHTTP,
		n.wireMetrics,
	}
}

func runNode(ctx context.Context, f nodeFlags, stderr io.Writer) error {
	log, err := f.logs.logger(stderr)
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	n := &nodeAgent{service: newService(log), f: f, stderr: stderr,
		workloads: workload.NewRegistry(), stdout: sharedLines(os.Stdout, 2), synced: make(chan struct{})}
	defer n.close()
	if n.cfg, err = f.df.config(log); err != nil {
		return err
	}
	if n.clients, err = kube.NewClients(f.kubeconfig); err != nil {
		return err
	}
	if err := kube.RunWorkloads(ctx, n.clients, n.workloads, f.df.node); err != nil {
		return err
	}
	if err := n.wire(ctx, n.nodeWiring()); err != nil {
		return err
	}
	// Ready (/readyz 200) once the resolver answers, not before.
	n.parts.Add("ready", run.Ready(func() {
		n.ready.Store(true)
		fmt.Fprintf(n.stderr, "kordon node %s ready: dns %s, http %s, %d pods on this node\n", f.df.node, n.dnsAddr, n.httpLn.Addr(), len(n.workloads.List()))
	}, append(n.readyAfter, n.dns.Ready())...))
	return n.parts.Run(ctx)
}

// wireFeed opens the local durable alert log, forwarded to Kubernetes
// Events and to the controller's feed, and the detector that feeds it.
func (n *nodeAgent) wireFeed(ctx context.Context) error {
	hooks, err := n.alertHooks(ctx)
	if err != nil {
		return err
	}
	sl, err := n.f.syslog.configs(n.f.df.node)
	if err != nil {
		return err
	}
	feed, err := alert.NewFeed(alert.Config{Dir: n.f.stateDir + "/alerts", Webhooks: hooks, Syslog: sl, Cooldown: n.f.alertCooldown, Logger: n.log, Metrics: n.reg})
	if err != nil {
		return err
	}
	n.feed = feed
	n.closers = append(n.closers, feed.Close)
	insp, err := dnsguard.NewInspector(dnsguard.InspectorConfig{Feed: feed, StateDir: n.f.stateDir, BlockedAlerts: true, Logger: n.log, Metrics: n.reg})
	if err != nil {
		return err
	}
	n.insp = insp
	n.closers = append(n.closers, func() error { insp.Close(); return nil })
	n.mux.Handle("/v1/alerts", feed.Handler())
	n.mux.Handle("/v1/quarantines", insp.Handler())
	n.mux.Handle("/v1/quarantines/", insp.Handler())
	return nil
}

// wireEgress programs the egress firewall (--egress-firewall). The table
// stays when the agent stops: enforcement never lapses across restarts
// (kordon node --cleanup removes it).
func (n *nodeAgent) wireEgress(ctx context.Context) error {
	if !n.f.ef.firewall {
		return nil
	}
	dnsAP, err := netip.ParseAddrPort(n.f.dnsListen)
	if err != nil {
		return fmt.Errorf("--dns-listen: %w", err)
	}
	warnUnroutedCNI(n.log)
	// Every pod's DNS is redirected to --dns-listen: it must be a local
	// address (a dummy interface, as NodeLocal DNSCache).
	if err := egress.EnsureLocalAddress("", dnsAP.Addr()); err != nil {
		return err
	}
	stack, err := startEgress(ctx, &n.f.ef, egressDeps{
		Registry: n.workloads, Feed: n.feed, Node: n.f.df.node, TrustDomain: policy.DefaultTrustDomain,
		DNS: dnsAP, StateDir: n.f.stateDir, FlowOut: n.stdout[1], Metrics: n.reg, Logger: n.log,
	})
	if err != nil {
		return err
	}
	n.stack = stack
	// Ready only with the firewall programmed (besides DNS served).
	n.readyAfter = append(n.readyAfter, stack.programmed)
	n.closers = append(n.closers, func() error { return stack.Stop(false) })
	n.parts.Add("egress", stack)
	stack.handle(n.mux)
	n.cfg.Firewall = stack.dnsFirewall()
	return nil
}

// wireDNS builds the resolver; it is bound and served once the policies
// are loaded (a second agent bound beside this one with SO_REUSEPORT takes
// queries only when it can answer them).
func (n *nodeAgent) wireDNS(context.Context) error {
	w, closeLog, err := openLog(n.f.queryLog)
	if err != nil {
		return err
	}
	n.closers = append(n.closers, closeLog)
	if w == io.Writer(os.Stdout) {
		w = n.stdout[0]
	}
	cfg := n.cfg
	cfg.Registry, cfg.QueryLog, cfg.Metrics, cfg.Logger, cfg.Inspector, cfg.RootNamespace = n.workloads, w, n.reg, n.log, n.insp, n.f.rootNS
	srv, err := dnsguard.New(cfg)
	if err != nil {
		return err
	}
	n.dns = srv
	// Closed after every part returned: the resolver's Serve is done.
	n.closers = append(n.closers, srv.Close)
	n.parts.AddFunc("dns", func(ctx context.Context) error {
		select {
		case <-n.synced:
		case <-ctx.Done():
			return nil
		}
		pc, ln, err := dnsguard.ListenUDPTCP(n.f.dnsListen)
		if err != nil {
			return err
		}
		n.dnsAddr = pc.LocalAddr()
		return srv.Serve(ctx, pc, ln)
	})
	return nil
}

// wirePolicies watches the EgressPolicies into the resolver and the
// firewall.
func (n *nodeAgent) wirePolicies(context.Context) error {
	src := &kube.PolicySource{Clients: n.clients, EgressOnly: true, RootNamespace: n.f.rootNS, Logger: n.log,
		OnChange: func(s *policy.Set) {
			if err := n.dns.SetPolicies(s); err != nil {
				n.log.Error("egress policies not applied", "error", err)
			}
			if n.stack != nil {
				if err := n.stack.SetPolicies(s, n.f.rootNS, n.f.df.clusterDomain); err != nil {
					n.log.Error("egress firewall policies not applied", "error", err)
				}
			}
		}}
	n.parts.AddFunc("policy source", func(ctx context.Context) error { return src.Run(ctx, n.synced) })
	return nil
}

// wireWorkloadAPI serves the SPIFFE Workload API for this node's pods
// (--workload-api-socket); the agent is ready only once it listens.
func (n *nodeAgent) wireWorkloadAPI(context.Context) error {
	if n.f.wl.socket == "" {
		return nil
	}
	api := &nodeWorkloadAPI{flags: n.f.wl, clients: n.clients, pods: n.workloads, log: n.log, listening: make(chan struct{})}
	n.readyAfter = append(n.readyAfter, api.listening)
	n.parts.Add("workload api", api)
	return nil
}

// wireHTTP listens for /healthz /readyz /metrics and the APIs the other
// steps mounted on mux.
func (n *nodeAgent) wireHTTP(context.Context) error { return n.listenHTTP(n.f.httpListen) }
