package main

import (
	"context"
	"fmt"
	"io"
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
	"github.com/kordon-dev/kordon/internal/run"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/kordon-dev/kordon/xds"
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
	// bundleResync is the trust bundle ConfigMap's republish interval
	// (hidden --bundle-resync; tests shorten it).
	bundleResync time.Duration
	// istioPolicies also watches Istio's security.istio.io/v1 objects.
	istioPolicies bool
	alerts        clusterAlertFlags
	syslog        syslogFlags
	feed          feedFlags
	logs          logFlags
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
	fl.StringVar(&f.httpListen, "http-listen", ":9080", "HTTP address: /healthz /readyz /metrics /v1/xds/status (the feed is on --feed-listen)")
	fl.StringVar(&f.alertsDir, "alerts-dir", "/var/lib/kordon/alerts", "durable alert log directory")
	fl.StringVar(&f.podName, "pod-name", os.Getenv("POD_NAME"), "this replica's name (leader election identity)")
	registerTTLFlags(fl, &f.caTTL, &f.svidTTL)
	fl.DurationVar(&f.bundleResync, "bundle-resync", kube.DefaultPublishInterval, "how often the leader rewrites the trust bundle ConfigMap when nothing changed")
	_ = fl.MarkHidden("bundle-resync")
	fl.BoolVar(&f.istioPolicies, "istio-policies", false, "also watch Istio's AuthorizationPolicies and RequestAuthentications (security.istio.io/v1; their CRDs must be installed), as istiod would; kordon's own group is always watched")
	f.alerts.register(fl)
	f.syslog.register(fl)
	f.feed.register(fl)
	f.logs.register(fl)
	return cmd
}

// controller is kordon controller, wired: what its parts share. Each
// wire method builds one concern, adds its routes to mux and its
// components to parts (every replica) or leaderParts (only while this
// replica holds the Lease); a new concern is a wire method in its own file
// and one entry in controllerWiring.
type controller struct {
	*service
	f         controllerFlags
	stderr    io.Writer
	clients   *kube.Clients
	ctrlID    spiffeid.ID
	ca        *identity.CA
	workloads *workload.Registry
	reviewer  *kube.TokenReviewer
	xds       *xds.Server
	jwks      *xds.JWKSFetcher
	feed      *alert.Feed
	// alerts is the /v1/alerts handler (wireClusterAlerts), served only
	// behind authentication on feedAPI (wireFeedAPI).
	alerts  http.Handler
	feedAPI *feedAPI
	console *webConsole
	// leader is whether this replica holds the Lease; synced is closed
	// when the policy informers synced.
	leader atomic.Bool
	synced chan struct{}
	// Listeners, for the ready line.
	xdsLn, issuanceLn net.Listener
	// leaderParts run only while this replica holds the Lease.
	leaderParts run.Group
}

// controllerWiring is the order in which kordon controller is wired. All
// parts start together once every step is done.
func (c *controller) controllerWiring() []func(context.Context) error {
	return []func(context.Context) error{
		c.wireIdentity,
		c.wireXDS,
		c.wireFeed,
		c.wireClusterAlerts,
		c.wireFeedAPI,
		c.wireConsole,
		c.wirePolicies,
		c.wireIssuance,
		c.wireLeader,
		c.wireHTTP,
	}
}

func runController(ctx context.Context, f controllerFlags, cmd *cobra.Command) error {
	log, err := f.logs.logger(cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	slog.SetDefault(log)
	c := &controller{service: newService(log), f: f, stderr: cmd.ErrOrStderr(), workloads: workload.NewRegistry(), synced: make(chan struct{})}
	defer c.close()
	if c.clients, err = kube.NewClients(f.kubeconfig); err != nil {
		return err
	}
	if err := c.wire(ctx, c.controllerWiring()); err != nil {
		return err
	}
	c.parts.Add("ready", run.Ready(func() {
		c.ready.Store(true)
		fmt.Fprintf(c.stderr, "kordon controller ready: xds %s, issuance %s, http %s, feed %s, trust domain %s\n", c.xdsLn.Addr(), c.issuanceLn.Addr(), c.httpLn.Addr(), c.feedAPI.ln.Addr(), f.trustDomain)
	}, c.synced))
	return c.parts.Run(ctx)
}

// wireIdentity loads (or creates) the CA from the Secret kordon-ca and
// starts the pod registry; every replica follows the CA Secret, so that
// it signs with the root the leader activated.
func (c *controller) wireIdentity(ctx context.Context) error {
	td, err := spiffeid.TrustDomainFromString(c.f.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	if c.ctrlID, err = identity.WorkloadID(td, c.f.namespace, "kordon-controller"); err != nil {
		return fmt.Errorf("--namespace: %w", err)
	}
	c.ca, err = identity.New(ctx, identity.Config{TrustDomain: c.f.trustDomain, Store: &kube.SecretStore{Client: c.clients.Kube, Namespace: c.f.namespace, Name: "kordon-ca"},
		CATTL: c.f.caTTL, SVIDTTL: c.f.svidTTL, Logger: c.log, Metrics: c.reg})
	if err != nil {
		return err
	}
	c.parts.AddFunc("ca reload", func(ctx context.Context) error { c.ca.RunReload(ctx, 0); return nil })
	if err := kube.RunWorkloads(ctx, c.clients, c.workloads, ""); err != nil {
		return err
	}
	c.reviewer = &kube.TokenReviewer{Client: c.clients.Kube}
	return nil
}

// wireXDS builds the ADS server. RequestAuthentication jwksUris are
// fetched here, as istiod does, and put inline into Envoy nodes'
// jwt_authn filters; a key rotation re-pushes them.
func (c *controller) wireXDS(context.Context) error {
	var xsrv *xds.Server
	jwks := xds.NewJWKSFetcher(xds.JWKSFetcherConfig{Logger: c.log, OnChange: func() { xsrv.JWKSChanged() }})
	xsrv, err := xds.New(xds.Config{
		Registry: c.workloads, TrustDomain: c.f.trustDomain, RootNamespace: c.f.rootNamespace,
		Identities:    &xds.CAIdentities{CA: c.ca},
		SVIDRefresh:   svidRefresh(c.f.svidTTL),
		Authenticator: xds.AnyAuthenticator{xds.SVIDAuthenticator{TrustDomain: c.f.trustDomain}, xds.TokenAuthenticator{Reviewer: xdsReviewer{c.reviewer}}},
		// Client SVIDs verified when sent: SVIDAuthenticator sees them.
		TLS:    identity.ServerMTLS(c.ca, c.ctrlID),
		Logger: c.log, Metrics: c.reg,
		JWKS: jwks,
	})
	if err != nil {
		return err
	}
	c.xds, c.jwks = xsrv, jwks
	// OnChange runs only from Run, which starts after xsrv is set.
	c.parts.AddFunc("jwks", func(ctx context.Context) error { jwks.Run(ctx); return nil })
	if c.xdsLn, err = net.Listen("tcp", c.f.xdsListen); err != nil {
		return err
	}
	c.parts.AddFunc("xds", func(ctx context.Context) error { return xsrv.Serve(ctx, c.xdsLn) })
	c.mux.Handle("/v1/xds/status", xsrv.StatusHandler())
	return nil
}

// wireFeed opens the durable alert feed (served at /v1/alerts with
// --alerts-from local: wireClusterAlerts).
func (c *controller) wireFeed(context.Context) error {
	sl, err := c.f.syslog.configs(c.f.podName)
	if err != nil {
		return err
	}
	feed, err := alert.NewFeed(alert.Config{Dir: c.f.alertsDir, Syslog: sl, Logger: c.log, Metrics: c.reg})
	if err != nil {
		return err
	}
	c.feed = feed
	c.closers = append(c.closers, feed.Close)
	return nil
}

// wirePolicies watches the policy CRDs into xDS; only the leader writes
// their status.
func (c *controller) wirePolicies(context.Context) error {
	src := &kube.PolicySource{Clients: c.clients, RootNamespace: c.f.rootNamespace, Logger: c.log, Istio: c.f.istioPolicies,
		// The fetcher learns first which jwksUris are still named, so
		// the build SetPolicies starts finds new ones being fetched.
		OnChange:    func(s *policy.Set) { c.jwks.SetPolicies(s); c.xds.SetPolicies(s); c.console.setPolicies(s) },
		WriteStatus: c.leader.Load}
	c.parts.AddFunc("policy source", func(ctx context.Context) error { return src.Run(ctx, c.synced) })
	return nil
}

// wireIssuance serves the SVID issuance API for node agents.
func (c *controller) wireIssuance(context.Context) error {
	iss, err := identity.NewIssuance(identity.IssuanceConfig{CA: c.ca, Reviewer: c.reviewer, Pods: c.workloads,
		NodeAgents: []string{c.f.namespace + "/kordon-node"}, Logger: c.log})
	if err != nil {
		return err
	}
	if c.issuanceLn, err = net.Listen("tcp", c.f.issuanceListen); err != nil {
		return err
	}
	c.parts.AddFunc("issuance", func(ctx context.Context) error {
		return identity.ServeIssuance(ctx, c.issuanceLn, iss, identity.ServerTLS(c.ca, c.ctrlID))
	})
	return nil
}

// wireLeader campaigns for the Lease, again whenever it is lost: only the
// leader writes policy status and runs leaderParts (bundle publishing and
// CA rotation, and what other files add).
func (c *controller) wireLeader(context.Context) error {
	// A new root is published as soon as it is prepared: node agents must
	// trust it before it signs.
	c.leaderParts.Add("trust bundle", &kube.BundlePublisher{Client: c.clients.Kube, Namespace: c.f.namespace, CA: c.ca, Interval: c.f.bundleResync, Logger: c.log})
	id := c.f.podName
	if id == "" {
		id, _ = os.Hostname()
	}
	elector := &kube.LeaderElection{Client: c.clients.Kube, Namespace: c.f.namespace, Name: "kordon-controller", Identity: id, Logger: c.log,
		OnLeading: c.leader.Store,
		Lead:      c.leaderParts.Run}
	c.parts.Add("leader election", elector)
	return nil
}

// wireHTTP listens for /healthz /readyz /metrics and the APIs the other
// steps mounted on mux.
func (c *controller) wireHTTP(context.Context) error { return c.listenHTTP(c.f.httpListen) }
