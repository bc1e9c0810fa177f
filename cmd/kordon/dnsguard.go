package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/internal/devconfig"
	"github.com/kordon-dev/kordon/internal/run"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
)

// dnsguardFlags are the resolver flags shared by `kordon dnsguard` and
// the node agent.
type dnsguardFlags struct {
	upstreams     []string
	clusterDNS    []string
	clusterDomain string
	blocklists    []string
	dohList       string
	unknown       string
	blockRcode    string
	rateLimit     float64
	rateBurst     int
	cacheSize     int
	node          string
	dnstap        dnstapFlag
}

func (f *dnsguardFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringSliceVar(&f.upstreams, "upstream", nil, "upstream resolver IP:PORT (repeatable; tried in order with failover)")
	fl.StringSliceVar(&f.clusterDNS, "cluster-dns", nil, "resolver for in-cluster names (default: the upstreams)")
	fl.StringVar(&f.clusterDomain, "cluster-domain", "cluster.local", "cluster DNS domain")
	fl.StringArrayVar(&f.blocklists, "blocklist", nil, "mesh-wide deny list file, hosts or domain-list format (repeatable)")
	fl.StringVar(&f.dohList, "doh-list", "", "DNS-over-HTTPS resolver names denied to workloads under an enforcing egress firewall, hosts or domain-list format (default: the built-in list; an empty file: none)")
	fl.StringVar(&f.unknown, "unknown-clients", "allow", "policy for source IPs not in the registry: allow, deny (in-cluster names only) or refuse")
	fl.StringVar(&f.blockRcode, "block-rcode", "NXDOMAIN", "response code for blocked names: NXDOMAIN or REFUSED")
	fl.Float64Var(&f.rateLimit, "rate-limit", 0, "queries per second per client IP (0: unlimited)")
	fl.IntVar(&f.rateBurst, "rate-burst", 0, "rate-limit burst (default: the rate)")
	fl.IntVar(&f.cacheSize, "cache-size", 100000, "maximum cached answers")
	fl.StringVar(&f.node, "node", "", "node name recorded in query logs")
	f.dnstap.register(fl)
}

// config builds a dnsguard.Config; the caller sets Registry, QueryLog,
// Metrics, Logger and Inspector.
func (f *dnsguardFlags) config(log *slog.Logger) (dnsguard.Config, error) {
	cfg := dnsguard.Config{
		Upstreams: f.upstreams, ClusterDNS: f.clusterDNS, ClusterDomain: f.clusterDomain,
		UnknownClients: dnsguard.UnknownClientPolicy(f.unknown), RateLimit: f.rateLimit, RateBurst: f.rateBurst,
		CacheSize: f.cacheSize, Node: f.node, Dnstap: string(f.dnstap),
	}
	switch f.blockRcode {
	case "NXDOMAIN":
		cfg.BlockRcode = dns.RcodeNameError
	case "REFUSED":
		cfg.BlockRcode = dns.RcodeRefused
	default:
		return cfg, fmt.Errorf("--block-rcode: want NXDOMAIN or REFUSED, got %q", f.blockRcode)
	}
	if len(f.upstreams) == 0 {
		return cfg, errors.New("--upstream is required (for example --upstream 127.0.0.1:5300); kordon never falls back to /etc/resolv.conf")
	}
	if len(f.blocklists) > 0 {
		start := time.Now()
		bl, st, err := dnsguard.LoadBlocklist(f.blocklists...)
		if err != nil {
			return cfg, err
		}
		log.Info("blocklist loaded", "exact", st.Exact, "subtree", st.Subtree, "skipped", st.Skipped, "seconds", time.Since(start).Seconds())
		cfg.Blocklist = bl
	}
	if f.dohList != "" {
		dl, st, err := dnsguard.LoadBlocklist(f.dohList)
		if err != nil {
			return cfg, fmt.Errorf("--doh-list: %w", err)
		}
		log.Info("doh list loaded", "exact", st.Exact, "subtree", st.Subtree, "skipped", st.Skipped)
		cfg.DoHList = dl
	}
	return cfg, nil
}

// openLog opens the query log destination: "-" for stdout, "" for none.
func openLog(path string) (io.Writer, func() error, error) {
	switch path {
	case "":
		return nil, func() error { return nil }, nil
	case "-":
		return os.Stdout, func() error { return nil }, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, nil, err
	}
	return f, f.Close, nil
}

func newDNSGuardCmd() *cobra.Command {
	var df dnsguardFlags
	var listen, workloadsFile, logPath, metricsListen string
	var policyPaths []string
	var pprofOn bool
	var logs logFlags
	cmd := &cobra.Command{
		Use:   "dnsguard --dns-listen ADDR --upstream IP:PORT --workloads FILE --policies DIR",
		Short: "Run the filtering DNS resolver on its own",
		Example: `  kordon dnsguard --dns-listen 127.0.0.1:5353 --upstream 127.0.0.1:5300 \
    --workloads examples/dev/workloads.yaml --policies examples/dev --query-log -`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logs.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			slog.SetDefault(log)
			cfg, err := df.config(log)
			if err != nil {
				return err
			}
			reg := workload.NewRegistry()
			if workloadsFile != "" {
				ws, err := devconfig.LoadWorkloads(workloadsFile)
				if err != nil {
					return err
				}
				reg.Replace(ws)
			}
			var set *policy.Set
			if len(policyPaths) > 0 {
				if set, err = loadPolicies(cmd, "default", policyPaths); err != nil {
					return err
				}
			}
			w, closeLog, err := openLog(logPath)
			if err != nil {
				return err
			}
			defer closeLog()
			promReg := prometheus.NewRegistry()
			promReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			cfg.Registry, cfg.QueryLog, cfg.Metrics, cfg.Logger = reg, w, promReg, log
			srv, err := dnsguard.New(cfg)
			if err != nil {
				return err
			}
			if err := srv.SetPolicies(set); err != nil {
				return err
			}
			pc, ln, err := dnsguard.ListenUDPTCP(listen)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			defer srv.Close()
			var parts run.Group
			parts.AddFunc("dns", func(ctx context.Context) error { return srv.Serve(ctx, pc, ln) })
			if metricsListen != "" {
				mux := http.NewServeMux()
				mux.Handle("/metrics", promhttp.HandlerFor(promReg, promhttp.HandlerOpts{}))
				mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
				// Ready once DNS is served; not while handing over after
				// SIGTERM (the next process, bound beside, takes the queries).
				mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
					if ctx.Err() == nil {
						select {
						case <-srv.Ready():
							fmt.Fprintln(w, "ok")
							return
						default:
						}
					}
					http.Error(w, "not serving", http.StatusServiceUnavailable)
				})
				if pprofOn {
					mux.HandleFunc("/debug/pprof/", pprof.Index)
					mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
					mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
					mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
				}
				mln, err := net.Listen("tcp", metricsListen)
				if err != nil {
					return fmt.Errorf("--metrics-listen: %w", err)
				}
				parts.Add("metrics", run.HTTPServer(&http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, mln, 0))
			}
			n := 0
			if set != nil {
				n = len(set.Egress)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "dnsguard listening on %s (udp+tcp), upstreams %v, %d workloads, %d EgressPolicies\n", pc.LocalAddr(), cfg.Upstreams, len(reg.List()), n)
			return parts.Run(ctx)
		},
	}
	df.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&listen, "dns-listen", "127.0.0.1:5353", "address to serve DNS on (udp and tcp)")
	deprecatedAlias(fl, "listen", "dns-listen")
	fl.StringVar(&workloadsFile, "workloads", "", "workloads.yaml: the registry mapping source IPs to workloads")
	fl.StringArrayVar(&policyPaths, "policies", nil, "EgressPolicy files or directories (repeatable)")
	fl.StringVar(&logPath, "query-log", "", "query log: a file, - for stdout, empty for none")
	deprecatedAlias(fl, "log", "query-log")
	fl.StringVar(&metricsListen, "metrics-listen", "", "address for /metrics, /healthz and /readyz (empty: off; as kordon node --metrics-listen)")
	fl.BoolVar(&pprofOn, "pprof", false, "also serve Go profiles under /debug/pprof/ on --metrics-listen (as CoreDNS's pprof plugin)")
	logs.register(fl)
	return cmd
}
