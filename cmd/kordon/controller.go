package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/kordon-dev/kordon/xds"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// xdsReviewer adapts the Kubernetes token reviewer to the xDS server's
// interface (audience kordon).
type xdsReviewer struct{ r *kube.TokenReviewer }

func (x xdsReviewer) Review(ctx context.Context, token string) (xds.Identity, error) {
	ti, err := x.r.Review(ctx, token, identity.Audience)
	if err != nil {
		return xds.Identity{}, err
	}
	return xds.Identity{Namespace: ti.Namespace, ServiceAccount: ti.ServiceAccount, Pod: ti.PodName}, nil
}

type controllerFlags struct {
	kubeconfig, namespace, trustDomain, rootNamespace         string
	xdsListen, issuanceListen, httpListen, alertsDir, podName string
	caTTL, svidTTL                                            time.Duration
}

// registerTTLFlags adds --ca-ttl and --svid-ttl (kordon controller and
// kordon dev), with SPIRE's defaults; identity/README.md says why.
func registerTTLFlags(fl *pflag.FlagSet, caTTL, svidTTL *time.Duration) {
	fl.DurationVar(caTTL, "ca-ttl", identity.DefaultCATTL,
		"lifetime of each CA root; the next root is published at half-life, signs from when a sixth is left, "+
			"and the old one stays trusted until its SVIDs expire (keep it at least 6x --svid-ttl)")
	fl.DurationVar(svidTTL, "svid-ttl", identity.DefaultSVIDTTL, "lifetime of X.509-SVIDs, renewed at half-life (at most 24h)")
}

// svidRefresh is how often the xDS server checks its SDS SVIDs for
// renewal: its default, or a tenth of a short --svid-ttl.
func svidRefresh(svidTTL time.Duration) time.Duration {
	if svidTTL <= 0 {
		return xds.DefaultSVIDRefresh
	}
	return min(xds.DefaultSVIDRefresh, max(svidTTL/10, 100*time.Millisecond))
}

func newControllerCmd() *cobra.Command {
	var f controllerFlags
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run the control plane in a cluster: CA and SVID issuance, xDS, policy status, alert feed",
		Long: `Every replica serves xDS, signs SVIDs and serves the alert feed; a Lease elects
the one that writes policy status, publishes the trust bundle (ConfigMap
kordon-trust-bundle) and rotates the CA root. A replica that loses the Lease
campaigns again. The CA lives in the Secret kordon-ca of --namespace: replicas
starting together agree on one root (create-if-absent), and the others reload
it when the leader rotates.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runController(ctx, f, cmd)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig path (default: in-cluster service account)")
	fl.StringVar(&f.namespace, "namespace", policy.DefaultRootNamespace, "namespace of kordon (CA Secret, Lease)")
	fl.StringVar(&f.rootNamespace, "root-namespace", policy.DefaultRootNamespace, "namespace whose policies are mesh-wide")
	fl.StringVar(&f.trustDomain, "trust-domain", policy.DefaultTrustDomain, "SPIFFE trust domain")
	fl.StringVar(&f.xdsListen, "xds-listen", ":15010", "xDS (ADS) gRPC address")
	fl.StringVar(&f.issuanceListen, "issuance-listen", ":15012", "SVID issuance gRPC address (TLS)")
	fl.StringVar(&f.httpListen, "http-listen", ":9080", "HTTP address: /healthz /readyz /metrics /v1/alerts /v1/xds/status")
	fl.StringVar(&f.alertsDir, "alerts-dir", "/var/lib/kordon/alerts", "durable alert log directory")
	fl.StringVar(&f.podName, "pod-name", os.Getenv("POD_NAME"), "this replica's name (leader election identity)")
	registerTTLFlags(fl, &f.caTTL, &f.svidTTL)
	return cmd
}

func runController(ctx context.Context, f controllerFlags, cmd *cobra.Command) error {
	log := slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), nil))
	clients, err := kube.NewClients(f.kubeconfig)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	td, err := spiffeid.TrustDomainFromString(f.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	ctrlID, err := identity.WorkloadID(td, f.namespace, "kordon-controller")
	if err != nil {
		return fmt.Errorf("--namespace: %w", err)
	}
	ca, err := identity.New(ctx, identity.Config{TrustDomain: f.trustDomain, Store: &kube.SecretStore{Client: clients.Kube, Namespace: f.namespace, Name: "kordon-ca"},
		CATTL: f.caTTL, SVIDTTL: f.svidTTL, Logger: log, Metrics: reg})
	if err != nil {
		return err
	}
	workloads := workload.NewRegistry()
	if err := kube.RunWorkloads(ctx, clients, workloads, ""); err != nil {
		return err
	}
	reviewer := &kube.TokenReviewer{Client: clients.Kube}
	// RequestAuthentication jwksUris are fetched here, as istiod does, and
	// put inline into Envoy nodes' jwt_authn filters; a key rotation
	// re-pushes them.
	var xsrv *xds.Server
	jwks := xds.NewJWKSFetcher(xds.JWKSFetcherConfig{Logger: log, OnChange: func() { xsrv.JWKSChanged() }})
	xsrv, err = xds.New(xds.Config{
		Registry: workloads, TrustDomain: f.trustDomain, RootNamespace: f.rootNamespace,
		Identities:    &xds.CAIdentities{CA: ca},
		SVIDRefresh:   svidRefresh(f.svidTTL),
		Authenticator: xds.AnyAuthenticator{xds.SVIDAuthenticator{TrustDomain: f.trustDomain}, xds.TokenAuthenticator{Reviewer: xdsReviewer{reviewer}}},
		TLS:           identity.ServerTLS(ca, ctrlID),
		Logger:        log, Metrics: reg,
		JWKS: jwks,
	})
	if err != nil {
		return err
	}
	// OnChange runs only from Run, which starts after xsrv is set.
	go jwks.Run(ctx)
	feed, err := alert.NewFeed(alert.Config{Dir: f.alertsDir, Logger: log, Metrics: reg})
	if err != nil {
		return err
	}
	defer feed.Close()

	var leader atomic.Bool
	src := &kube.PolicySource{Clients: clients, RootNamespace: f.rootNamespace, Logger: log,
		OnChange:    func(s *policy.Set) { xsrv.SetPolicies(s) },
		WriteStatus: leader.Load}
	synced := make(chan struct{})
	go func() {
		if err := src.Run(ctx, synced); err != nil {
			log.Error("policy source stopped", "error", err)
		}
	}()

	iss, err := identity.NewIssuance(identity.IssuanceConfig{CA: ca, Reviewer: reviewer, Pods: workloads,
		NodeAgents: []string{f.namespace + "/kordon-node"}, Logger: log})
	if err != nil {
		return err
	}
	errc := make(chan error, 4)
	issLn, err := net.Listen("tcp", f.issuanceListen)
	if err != nil {
		return err
	}
	go func() {
		errc <- identity.ServeIssuance(ctx, issLn, iss, identity.ServerTLS(ca, ctrlID))
	}()
	xdsLn, err := net.Listen("tcp", f.xdsListen)
	if err != nil {
		return err
	}
	go func() { errc <- xsrv.Serve(ctx, xdsLn) }()

	var ready atomic.Bool
	mux := serviceMux(reg, &ready)
	mux.Handle("/v1/alerts", feed.Handler())
	mux.Handle("/v1/xds/status", xsrv.StatusHandler())
	httpLn, err := net.Listen("tcp", f.httpListen)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := hs.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	defer hs.Shutdown(context.Background())

	// Every replica follows the CA Secret, so that it signs with the root
	// the leader activated; the leader also steps the rotation schedule.
	go ca.RunReload(ctx, 0)

	// Leader election, campaigned again whenever the Lease is lost: only
	// the leader writes policy status, publishes the bundle and rotates.
	id := f.podName
	if id == "" {
		id, _ = os.Hostname()
	}
	elector := &kube.LeaderElection{Client: clients.Kube, Namespace: f.namespace, Name: "kordon-controller", Identity: id, Logger: log,
		OnLeading: leader.Store,
		Lead: func(lctx context.Context) {
			publish := func() {
				if err := kube.PublishBundle(lctx, clients.Kube, f.namespace, ca); err != nil && lctx.Err() == nil {
					log.Warn("trust bundle not published", "error", err)
				}
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				// A new root is published as soon as it is prepared: node
				// agents must trust it before it signs.
				ca.RunRotation(lctx, 0, publish)
			}()
			for {
				publish()
				select {
				case <-lctx.Done():
					<-done
					return
				case <-time.After(30 * time.Second):
				}
			}
		}}
	go func() {
		if err := elector.Run(ctx); err != nil {
			errc <- err
		}
	}()
	select {
	case <-synced:
	case <-ctx.Done():
		return nil
	}
	ready.Store(true)
	fmt.Fprintf(cmd.ErrOrStderr(), "kordon controller ready: xds %s, issuance %s, http %s, trust domain %s\n", xdsLn.Addr(), issLn.Addr(), httpLn.Addr(), f.trustDomain)
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// serviceMux serves /metrics from reg, /healthz, and /readyz once ready
// is set; callers add their own APIs.
func serviceMux(reg *prometheus.Registry, ready *atomic.Bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
