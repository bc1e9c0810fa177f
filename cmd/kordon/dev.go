package main

import (
	"context"
	"encoding/json"
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
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/demo/authdns"
	"github.com/kordon-dev/kordon/internal/devconfig"
	"github.com/kordon-dev/kordon/internal/handover"
	"github.com/kordon-dev/kordon/internal/run"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/kordon-dev/kordon/xds"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
)

// devOptions are the flags of kordon dev.
type devOptions struct {
	configDir     string
	dnsListen     string
	httpListen    string
	xdsListen     string
	upstreams     []string
	upstreamZones string
	stateDir      string
	addrFile      string
	queryLog      string
	logLevel      string
	logFormat     string
	pollInterval  time.Duration
	caTTL         time.Duration
	svidTTL       time.Duration
	egress        egressFlags
	dnstap        dnstapFlag
	syslog        syslogFlags
}

func newDevCmd() *cobra.Command {
	var o devOptions
	cmd := &cobra.Command{
		Use:   "dev --config DIR",
		Short: "Run kordon in one process with no cluster: workloads and policies from a folder, everything on loopback",
		Long: `kordon dev runs the DNS guard, the alert feed, metrics and health endpoints in
one process. Workloads (workloads.yaml) and policies (AuthorizationPolicy and
EgressPolicy YAML) come from --config DIR, which is watched: a change is applied
live, a bad file is reported with file:line:col and the last good state stays.

A DNS query is attributed to a workload by its source address: give each
workload an address on 127.0.0.0/8 and query with dig -b 127.0.0.X.

Every address may use port 0; the addresses in use are printed at start.`,
		Example: `  kordon dev --config examples/dev --upstream-zones examples/upstream/zones.yaml
  dig -b 127.0.0.10 @127.0.0.1 -p 5353 api.shop.example
  curl -s 127.0.0.1:9080/v1/alerts`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDev(ctx, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.configDir, "config", "", "folder with workloads.yaml and policy YAML (required)")
	f.StringVar(&o.httpListen, "http-listen", "127.0.0.1:9080", "HTTP address: /healthz /readyz /metrics /v1/alerts /v1/quarantines /v1/config /v1/xds/status /v1/dns/summary /v1/policy/explain, the web console at /ui; with --egress-firewall also /v1/egress/quarantines /v1/egress/flows/summary")
	f.StringVar(&o.dnsListen, "dns-listen", "127.0.0.1:5353", "DNS address, UDP and TCP")
	f.StringVar(&o.xdsListen, "xds-listen", "127.0.0.1:18000", "xDS (ADS) gRPC address")
	f.StringSliceVar(&o.upstreams, "upstream", nil, "upstream DNS server IP:PORT (repeatable)")
	f.StringVar(&o.upstreamZones, "upstream-zones", "", "serve this zone file (internal/demo/authdns) on a free loopback port and use it as the upstream")
	f.StringVar(&o.stateDir, "state-dir", "", "folder for state kept across restarts (alert log, CA); default: a temporary folder removed at exit")
	f.StringVar(&o.addrFile, "addr-file", "", "write the addresses in use (dns=, http=, ...) to this file once ready")
	f.StringVar(&o.queryLog, "query-log", "-", `query log destination: a file, or "-" for stdout`)
	registerLogFlags(f, &o.logLevel, &o.logFormat)
	f.DurationVar(&o.pollInterval, "poll-interval", devconfig.DefaultInterval, "how often --config is checked for changes")
	registerTTLFlags(f, &o.caTTL, &o.svidTTL)
	o.egress.register(f, false)
	o.dnstap.register(f)
	o.syslog.register(f)
	_ = cmd.MarkFlagRequired("config")
	cmd.AddCommand(newDevUpstreamCmd(), newDevExfilSimCmd(), newDevGRPCServeCmd(), newDevGRPCCallCmd(), newDevSinkCmd())
	return cmd
}

// runDev starts everything, prints where it listens and blocks until ctx
// is done, then shuts down.
func runDev(ctx context.Context, o devOptions, stdout, stderr io.Writer) error {
	d, err := startDev(ctx, o, stdout, stderr)
	if err != nil {
		return err
	}
	d.printSummary(stdout)
	select {
	case <-ctx.Done():
	case <-d.done: // a part failed: Shutdown returns its error
	}
	fmt.Fprintln(stdout, "kordon dev: shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return d.Shutdown(shutdownCtx)
}

// devServer is what kordon dev runs, wired together.
type devServer struct {
	opts     devOptions
	log      *slog.Logger
	reg      *prometheus.Registry
	registry *workload.Registry
	watcher  *devconfig.Watcher

	stateDir     string
	removeState  bool
	upstream     *authdns.Server
	upstreamAddr []string
	httpAddr     net.Addr
	xds          *xds.Server
	xdsAddr      net.Addr
	dns          *dnsguard.Server
	feed         *alert.Feed
	inspector    *dnsguard.DetectionInspector
	dnsAddr      net.Addr
	ident        *devIdentity
	egress       *egressStack
	console      *webConsole
	// stdoutLines share stdout between the query log and the flow log.
	stdoutLines []*lineWriter
	sockets     *identity.WorkloadSockets
	runCtx      context.Context

	// applied is the snapshot every component holds, for rollback when a
	// later component refuses a new one.
	applied *devconfig.Snapshot

	ready atomic.Bool
	// member is this process among the kordon dev processes of its
	// network namespace (internal/handover): superseded, it answers
	// /readyz 503 and leaves the nftables table to its successor.
	member *handover.Member
	// parts run from the end of startDev until Shutdown cancels runCtx
	// (or one fails); done is closed, and runErr set, when all returned.
	parts  run.Group
	cancel context.CancelFunc
	done   chan struct{}
	runErr error
	// closers release what the parts used, in reverse order, once they
	// all returned (the resolver before its query log, the feed last).
	closers []func(context.Context) error
}

// startDev starts every component and returns once all listen and the
// config is applied. On error everything already started is stopped.
func startDev(ctx context.Context, o devOptions, stdout, stderr io.Writer) (_ *devServer, err error) {
	// Before any side effect (state folder, CA, SVIDs, nftables).
	if err := o.checkListen(); err != nil {
		return nil, err
	}
	log, err := newLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return nil, err
	}
	d := &devServer{
		opts:     o,
		log:      log,
		reg:      prometheus.NewRegistry(),
		registry: workload.NewRegistry(),
	}
	d.stdoutLines = sharedLines(stdout, 2)
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.cancel, d.runCtx = cancel, runCtx
	defer func() {
		if err != nil {
			shutdownCtx, c := context.WithTimeout(context.Background(), 5*time.Second)
			defer c()
			_ = d.Shutdown(shutdownCtx)
		}
	}()

	if err := d.openStateDir(); err != nil {
		return d, err
	}
	if err := d.joinHandover(); err != nil {
		return d, err
	}
	if err := d.startUpstream(); err != nil {
		return d, err
	}
	if d.ident, err = newDevIdentity(ctx, devIdentityConfig{StateDir: d.stateDir, CATTL: o.caTTL, SVIDTTL: o.svidTTL, Workloads: d.registry.List, Logger: d.log, Metrics: d.reg}); err != nil {
		return d, err
	}
	if d.sockets, err = newDevSockets(d.stateDir, d.registry, d.ident.ca, d.log); err != nil {
		return d, err
	}
	d.closers = append(d.closers, func(context.Context) error { d.sockets.Close(); return nil })
	if err := d.newXDS(); err != nil {
		return d, err
	}
	if err := d.newFeed(); err != nil {
		return d, err
	}
	if d.console, err = newWebConsole("dev", true, policy.CompileOptions{TrustDomain: xdsTrustDomain}, d.reg); err != nil {
		return d, err
	}
	if err := d.startEgress(ctx); err != nil {
		return d, err
	}
	if err := d.newDNS(); err != nil {
		return d, err
	}
	d.watcher, err = devconfig.New(devconfig.Config{
		Dir:        o.configDir,
		Interval:   o.pollInterval,
		Apply:      d.apply,
		Logger:     d.log,
		Registerer: d.reg,
	})
	if err != nil {
		return d, err
	}
	if err := d.startHTTP(); err != nil {
		return d, err
	}
	if err := d.startXDS(); err != nil {
		return d, err
	}
	if err := d.startDNS(); err != nil {
		return d, err
	}
	d.parts.Add("config watcher", d.watcher)
	d.parts.Add("identity", d.ident.files)
	d.parts.Add("workload API", d.sockets)
	if d.egress != nil {
		d.parts.Add("egress", d.egress)
	}
	d.done = make(chan struct{})
	go func() {
		defer close(d.done)
		d.runErr = d.parts.Run(runCtx)
	}()
	d.ready.Store(true)
	if o.addrFile != "" {
		if err := writeAddrFile(o.addrFile, d.addrs()); err != nil {
			return d, err
		}
	}
	return d, nil
}

// apply makes a loaded snapshot current in every component. It runs before
// the snapshot is current; an error rejects it.
func (d *devServer) apply(s *devconfig.Snapshot) error {
	if err := d.applyTo(s); err != nil {
		if d.applied != nil {
			// Put back what the components that accepted s held before.
			if rerr := d.applyTo(d.applied); rerr != nil {
				d.log.Error("rollback failed", "err", rerr.Error())
			}
		}
		return err
	}
	d.applied = s
	d.console.setPolicies(s.Policies)
	return nil
}

// applyTo hands s to every component, those that may refuse it first.
func (d *devServer) applyTo(s *devconfig.Snapshot) error {
	if err := d.dns.SetPolicies(s.Policies); err != nil {
		return fmt.Errorf("dnsguard: %w", err)
	}
	// The workloads before the firewall's policies: evaluated against an
	// empty registry (the first snapshot), the policies would take every
	// workload out of a table adopted from a predecessor still enforcing
	// it (a handover), and their learned grants with them.
	d.registry.Replace(s.Workloads)
	if d.egress != nil {
		if err := d.egress.SetPolicies(s.Policies, policy.DefaultRootNamespace, ""); err != nil {
			return fmt.Errorf("egress firewall: %w", err)
		}
	}
	if err := d.xds.SetServices(s.Services); err != nil {
		return fmt.Errorf("xds: %w", err)
	}
	if err := d.ident.files.Sync(s.Workloads); err != nil {
		return err
	}
	d.xds.SetPolicies(s.Policies)
	if err := d.sockets.Sync(s.Workloads); err != nil {
		return err
	}
	return nil
}

// newXDS builds the ADS server; startXDS serves it once the first snapshot
// is applied.
func (d *devServer) newXDS() error {
	srv, err := xds.New(xds.Config{
		Registry:    d.registry,
		Policies:    &policy.Set{},
		TrustDomain: xdsTrustDomain,
		Identities:  &xds.CAIdentities{CA: d.ident.ca},
		SVIDRefresh: svidRefresh(d.opts.svidTTL),
		// Dev mode listens on loopback only (checked in startXDS): every
		// local process may read any workload's config.
		AllowUnauthenticated: true,
		Logger:               d.log,
		Metrics:              d.reg,
	})
	if err != nil {
		return err
	}
	d.xds = srv
	return nil
}

func (d *devServer) startXDS() error {
	l, err := listenLoopback(d.opts.xdsListen)
	if err != nil {
		return fmt.Errorf("--xds-listen: %w", err)
	}
	d.xdsAddr = l.Addr()
	d.parts.AddFunc("xds", func(ctx context.Context) error { return d.xds.Serve(ctx, l) })
	return nil
}

// newDNS builds the resolver; startDNS serves it once the first snapshot
// is applied.
func (d *devServer) newDNS() error {
	if len(d.upstreamAddr) == 0 {
		return errors.New("no upstream: pass --upstream IP:PORT or --upstream-zones FILE (kordon never falls back to /etc/resolv.conf)")
	}
	var qlog io.Writer
	switch d.opts.queryLog {
	case "":
	case "-":
		qlog = d.stdoutLines[0]
	default:
		f, err := os.OpenFile(d.opts.queryLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return fmt.Errorf("--query-log: %w", err)
		}
		qlog = f
		// Runs after the resolver's Close (closers run in reverse), which
		// flushes the log.
		d.closers = append(d.closers, func(context.Context) error { return f.Close() })
	}
	qlog = d.console.queryLog(qlog)
	// The exfiltration detector feeds the alert feed; quarantines persist
	// in --state-dir/quarantine.
	insp, err := dnsguard.NewInspector(dnsguard.InspectorConfig{
		Feed:          d.feed,
		StateDir:      filepath.Join(d.stateDir, "quarantine"),
		BlockedAlerts: true,
		Logger:        d.log,
		Metrics:       d.reg,
	})
	if err != nil {
		return err
	}
	d.inspector = insp
	d.closers = append(d.closers, func(context.Context) error { insp.Close(); return nil })
	cfg := dnsguard.Config{
		Registry:  d.registry,
		Upstreams: d.upstreamAddr,
		Node:      "dev",
		Inspector: insp,
		QueryLog:  qlog,
		Dnstap:    string(d.opts.dnstap),
		Metrics:   d.reg,
		Logger:    d.log,
	}
	if d.egress != nil {
		cfg.Firewall = d.egress.dnsFirewall()
	}
	srv, err := dnsguard.New(cfg)
	if err != nil {
		return err
	}
	d.dns = srv
	d.closers = append(d.closers, func(context.Context) error { return srv.Close() })
	return nil
}

// newFeed opens the alert feed, durable in --state-dir/alerts.
func (d *devServer) newFeed() error {
	sl, err := d.opts.syslog.configs("dev")
	if err != nil {
		return err
	}
	feed, err := alert.NewFeed(alert.Config{Dir: filepath.Join(d.stateDir, "alerts"), Syslog: sl, Logger: d.log, Metrics: d.reg})
	if err != nil {
		return err
	}
	d.feed = feed
	d.closers = append(d.closers, func(context.Context) error { return feed.Close() })
	return nil
}

// startEgress programs the egress firewall in kordon dev's own network
// namespace (--egress-firewall): workloads are known by the source
// addresses of workloads.yaml, their DNS is redirected to --dns-listen,
// and the table is removed at exit.
func (d *devServer) startEgress(ctx context.Context) error {
	if !d.opts.egress.firewall {
		return nil
	}
	ap, err := netip.ParseAddrPort(d.opts.dnsListen) // checked in checkListen
	if err != nil {
		return fmt.Errorf("--dns-listen: %w", err)
	}
	st, err := startEgress(ctx, &d.opts.egress, egressDeps{
		Registry: d.registry, Feed: d.feed, Node: "dev", TrustDomain: xdsTrustDomain,
		DNS: ap, StateDir: d.stateDir, FlowOut: d.stdoutLines[1], FlowSummary: d.console.flowSummary(), Metrics: d.reg, Logger: d.log,
	})
	if err != nil {
		return err
	}
	d.egress = st
	// kordon dev leaves nothing behind: the table goes at exit, unless a
	// successor (or predecessor) beside this process still uses it.
	d.closers = append(d.closers, func(context.Context) error { return st.Stop(d.member.Alone()) })
	return nil
}

func (d *devServer) startDNS() error {
	pc, ln, err := dnsguard.ListenUDPTCP(d.opts.dnsListen)
	if err != nil {
		return fmt.Errorf("--dns-listen: %w", err)
	}
	d.dnsAddr = pc.LocalAddr()
	// The resolver (and its query log) is closed only after Shutdown saw
	// every part return, so after Serve's handlers are done.
	d.parts.AddFunc("dns", func(ctx context.Context) error { return d.dns.Serve(ctx, pc, ln) })
	return nil
}

// checkListen checks the listen flags: loopback only (dev mode serves
// unauthenticated), except --dns-listen with --egress-firewall, which must
// be an address the workloads reach on a fixed port.
func (o *devOptions) checkListen() error {
	for _, l := range []struct{ flag, addr string }{{"--http-listen", o.httpListen}, {"--xds-listen", o.xdsListen}} {
		if err := checkLoopback(l.addr); err != nil {
			return fmt.Errorf("%s: %w", l.flag, err)
		}
	}
	if !o.egress.firewall {
		if err := checkLoopback(o.dnsListen); err != nil {
			return fmt.Errorf("--dns-listen: %w", err)
		}
		return nil
	}
	ap, err := netip.ParseAddrPort(o.dnsListen)
	if err != nil {
		return fmt.Errorf("--dns-listen: %w", err)
	}
	if ap.Addr().IsLoopback() || ap.Addr().IsUnspecified() {
		return fmt.Errorf("--dns-listen %s: with --egress-firewall the workloads' DNS is redirected to this address, so it must be one they reach (this namespace's address on their network, e.g. 10.96.0.53:53), not loopback or unspecified", o.dnsListen)
	}
	if ap.Port() == 0 {
		return fmt.Errorf("--dns-listen %s: with --egress-firewall the port must be fixed (DNS is redirected to it)", o.dnsListen)
	}
	return nil
}

// checkLoopback refuses addresses outside loopback: dev mode serves without
// authentication.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s is not a loopback address: kordon dev serves unauthenticated and listens on 127.0.0.0/8 or ::1 only", addr)
	}
	return nil
}

// listenLoopback listens on addr, which must be a loopback address: dev
// mode serves without authentication.
func listenLoopback(addr string) (net.Listener, error) {
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	// SO_REUSEPORT: a successor binds the same fixed ports beside this
	// process (internal/handover).
	return handover.ListenTCP(addr)
}

func (d *devServer) openStateDir() error {
	if d.opts.stateDir != "" {
		if err := os.MkdirAll(d.opts.stateDir, 0o700); err != nil {
			return fmt.Errorf("--state-dir: %w", err)
		}
		d.stateDir = d.opts.stateDir
		return nil
	}
	dir, err := os.MkdirTemp("", "kordon-dev-")
	if err != nil {
		return err
	}
	d.stateDir, d.removeState = dir, true
	return nil
}

// startUpstream runs the embedded authoritative server when
// --upstream-zones is set.
func (d *devServer) startUpstream() error {
	d.upstreamAddr = append(d.upstreamAddr, d.opts.upstreams...)
	if d.opts.upstreamZones == "" {
		return nil
	}
	zones, err := authdns.LoadConfig(d.opts.upstreamZones)
	if err != nil {
		return err
	}
	srv, err := authdns.New(authdns.Config{Zones: zones, Logger: d.log, Registerer: d.reg})
	if err != nil {
		return err
	}
	addr, err := srv.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	d.upstream = srv
	d.closers = append(d.closers, srv.Shutdown)
	d.upstreamAddr = append(d.upstreamAddr, addr.String())
	return nil
}

func (d *devServer) startHTTP() error {
	l, err := listenLoopback(d.opts.httpListen)
	if err != nil {
		return fmt.Errorf("--http-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.ready.Load() || d.member.Superseded() {
			http.Error(w, "starting or superseded", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{Registry: d.reg}))
	mux.HandleFunc("GET /v1/config", d.serveConfig)
	mux.Handle("GET /v1/xds/status", d.xds.StatusHandler())
	mux.Handle("/v1/alerts", d.feed.Handler())
	mux.Handle("/v1/quarantines", d.inspector.Handler())
	mux.Handle("/v1/quarantines/", d.inspector.Handler())
	if d.egress != nil {
		d.egress.handle(mux)
	}
	d.console.mount(mux, nil) // loopback only: dev mode is unauthenticated
	d.httpAddr = l.Addr()
	d.parts.Add("http", run.HTTPServer(&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, l, devShutdownTimeout))
	return nil
}

// configStatus is what GET /v1/config returns.
type configStatus struct {
	Dir       string               `json:"dir"`
	Digest    string               `json:"digest"`
	LoadedAt  time.Time            `json:"loadedAt"`
	Files     []string             `json:"files"`
	Workloads []*workload.Workload `json:"workloads"`
	Policies  []string             `json:"policies"`
	// Error is why the folder's latest content was rejected ("" when it
	// is the one in force).
	Error string `json:"error,omitempty"`
}

func (d *devServer) serveConfig(w http.ResponseWriter, _ *http.Request) {
	s := d.watcher.Current()
	st := configStatus{Dir: s.Dir, Digest: s.Digest, LoadedAt: s.LoadedAt, Files: s.Files, Workloads: s.Workloads, Policies: policyNames(s.Policies)}
	if err := d.watcher.LastError(); err != nil {
		st.Error = err.Error()
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(st)
}

// policyNames lists "Kind namespace/name" for every policy of a set.
func policyNames(set *policy.Set) []string {
	var out []string
	for _, p := range set.Authorization {
		out = append(out, fmt.Sprintf("AuthorizationPolicy %s/%s", p.Metadata.Namespace, p.Metadata.Name))
	}
	for _, p := range set.Egress {
		out = append(out, fmt.Sprintf("EgressPolicy %s/%s", p.Metadata.Namespace, p.Metadata.Name))
	}
	return out
}

// addrs are the addresses in use, by component.
func (d *devServer) addrs() map[string]string {
	m := map[string]string{}
	if d.httpAddr != nil {
		m["http"] = d.httpAddr.String()
	}
	if d.xdsAddr != nil {
		m["xds"] = d.xdsAddr.String()
	}
	if d.dnsAddr != nil {
		m["dns"] = d.dnsAddr.String()
	}
	return m
}

// printSummary writes the start-up summary: what listens where, the
// workloads and the policies in force.
func (d *devServer) printSummary(w io.Writer) {
	s := d.watcher.Current()
	fmt.Fprintf(w, "kordon dev: config %s (digest %s), state in %s\n", s.Dir, s.ShortDigest(), d.stateDir)
	fmt.Fprintf(w, "workloads (%d):\n", len(s.Workloads))
	for _, wl := range s.Workloads {
		ips := make([]string, len(wl.IPs))
		for i, ip := range wl.IPs {
			ips[i] = ip.String()
		}
		fmt.Fprintf(w, "  %-24s %-16s sa=%-14s %s\n", wl.Key(), strings.Join(ips, ","), wl.ServiceAccount, labelString(wl.Labels))
	}
	fmt.Fprintf(w, "AuthorizationPolicies (%d):\n", len(s.Policies.Authorization))
	for _, p := range s.Policies.Authorization {
		action := p.Spec.Action
		if action == "" {
			action = policy.ActionAllow
		}
		fmt.Fprintf(w, "  %-36s %s\n", p.Metadata.Namespace+"/"+p.Metadata.Name, action)
	}
	fmt.Fprintf(w, "EgressPolicies (%d):\n", len(s.Policies.Egress))
	for _, p := range s.Policies.Egress {
		mode := p.Spec.Mode
		if mode == "" {
			mode = policy.EgressEnforce
		}
		extra := ""
		if p.Spec.Detection != nil && p.Spec.Detection.Action != "" {
			extra = ", on detection: " + p.Spec.Detection.Action
		}
		fmt.Fprintf(w, "  %-36s %s, %d allow, %d deny%s\n", p.Metadata.Namespace+"/"+p.Metadata.Name, mode, len(p.Spec.Allow), len(p.Spec.Deny), extra)
	}
	fmt.Fprintln(w, "listening:")
	if d.upstream != nil {
		fmt.Fprintf(w, "  %-12s %s (authoritative, zones from %s)\n", "upstream", d.upstreamAddr[len(d.upstreamAddr)-1], d.opts.upstreamZones)
	}
	fmt.Fprintf(w, "  %-12s %s (udp+tcp), upstream %s\n", "dns", d.dnsAddr, strings.Join(d.upstreamAddr, ","))
	if d.egress != nil {
		fmt.Fprintf(w, "  %-12s nftables table inet kordon in this network namespace: workloads' DNS redirected to %s, egress enforced from DNS answers (grace %s), flows logged to %s\n",
			"egress", d.dnsAddr, d.opts.egress.ttlGrace, flowLogName(d.opts.egress.flowLog))
	}
	fmt.Fprintf(w, "  %-12s http://%s  (/healthz /readyz /metrics /v1/alerts /v1/quarantines /v1/config /v1/xds/status)\n", "http", d.httpAddr)
	fmt.Fprintf(w, "  %-12s http://%s/ui/ (web console)\n", "console", d.httpAddr)
	fmt.Fprintf(w, "  %-12s %s (ADS, proxyless gRPC and Envoy; %d services)\n", "xds", d.xdsAddr, len(s.Services))
	fmt.Fprintf(w, "  %-12s %s/<namespace>_<name>.sock (SPIFFE Workload API, one socket per workload)\n", "workload API", d.sockets.Dir())
	fmt.Fprintf(w, "identity: CA for %s (root kept in %s, rotated every %s), SVIDs of %s in %s/<namespace>/<name>/\n",
		d.ident.ca.TrustDomain().Name(), filepath.Join(d.stateDir, "ca.json"), d.ident.caTTL/2, d.ident.svidTTL, d.ident.dir)
	fmt.Fprintf(w, "watching %s for changes every %s\n", s.Dir, d.opts.pollInterval)
	fmt.Fprintln(w, "ready")
}

func labelString(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}

// devShutdownTimeout is how long the HTTP server waits for requests in
// flight at shutdown (SSE followers are cut after it).
const devShutdownTimeout = 5 * time.Second

// Shutdown stops every part, waits for them (at most until ctx ends),
// then releases resources in reverse order of start. It returns the
// error of a part that failed, if one did, with those of the closers.
func (d *devServer) Shutdown(ctx context.Context) error {
	d.ready.Store(false)
	if d.cancel != nil {
		d.cancel()
	}
	var errs []error
	if d.done != nil {
		select {
		case <-d.done:
			errs = append(errs, d.runErr)
			d.runErr = nil
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("kordon dev: parts still running: %w", ctx.Err()))
		}
	}
	for i := len(d.closers) - 1; i >= 0; i-- {
		if err := d.closers[i](ctx); err != nil {
			errs = append(errs, err)
		}
	}
	d.closers = nil
	if d.removeState {
		if err := os.RemoveAll(d.stateDir); err != nil {
			errs = append(errs, err)
		}
		d.removeState = false
	}
	return errors.Join(errs...)
}

func flowLogName(s string) string {
	switch s {
	case "":
		return "nowhere"
	case "-":
		return "stdout"
	}
	return s
}
