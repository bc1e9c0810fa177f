package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
)

// Defaults used by New for zero Config fields.
const (
	// DefaultDebounceQuiet is how long the server waits after the last
	// change before pushing (istiod's PILOT_DEBOUNCE_AFTER).
	DefaultDebounceQuiet = 100 * time.Millisecond
	// DefaultDebounceMax bounds how long a continuous stream of changes can
	// delay a push.
	DefaultDebounceMax = time.Second
	// DefaultCertProviderInstance is the certificate-provider plugin
	// instance name proxyless gRPC bootstraps must define.
	DefaultCertProviderInstance = "kordon"
	// DefaultSVIDRefresh is how often Envoy SVIDs are checked for renewal.
	DefaultSVIDRefresh = 30 * time.Second
)

// Config configures a Server. Registry and TrustDomain are required; so is
// Authenticator unless AllowUnauthenticated is set.
type Config struct {
	// Registry maps node IDs ("<namespace>/<pod>") to workloads.
	Registry *workload.Registry
	// Services is the initial service model; see Service. SetServices
	// replaces it.
	Services []Service
	// Policies is the initial policy set; SetPolicies replaces it.
	Policies *policy.Set
	// TrustDomain is the mesh's SPIFFE trust domain.
	TrustDomain string
	// RootNamespace holds mesh-wide policies. Default
	// policy.DefaultRootNamespace.
	RootNamespace string

	// CertProviderInstance names the certificate-provider plugin instance
	// proxyless gRPC workloads define in their bootstrap (a file_watcher
	// with their SVID, key and CA or SPIFFE bundle map). Default "kordon".
	CertProviderInstance string
	// Identities supplies SVIDs and trust bundles for Envoy nodes (SDS).
	// Without it Envoy nodes get no Secrets and their listeners are
	// rejected by Envoy; proxyless nodes do not need it.
	Identities Identities
	// SVIDRefresh is how often SVIDs served over SDS are checked for
	// renewal (renewed at half of their lifetime). Default 30s.
	SVIDRefresh time.Duration

	// JWKS, when set, resolves RequestAuthentication jwksUris for Envoy
	// nodes to key sets the control plane fetched (JWKSFetcher; call
	// Server.JWKSChanged when they change): the keys go inline into the
	// jwt_authn filter. Without it, or before a set is fetched, Envoy
	// fetches the jwksUri itself.
	JWKS JWKSResolver

	// Authenticator proves who opened an xDS stream.
	Authenticator Authenticator
	// AllowUnauthenticated serves any node to any client. For tests and
	// benchmarks on loopback only.
	AllowUnauthenticated bool
	// TLS, when set, makes Serve use TLS (set ClientAuth to
	// tls.VerifyClientCertIfGiven or stricter to authenticate SVIDs).
	TLS *tls.Config

	// DebounceQuiet and DebounceMax shape push debouncing.
	DebounceQuiet time.Duration
	DebounceMax   time.Duration

	// Logger receives logs; default slog.Default().
	Logger *slog.Logger
	// Metrics registers the package metrics when set.
	Metrics prometheus.Registerer
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Protocol is what a service port speaks.
type Protocol string

// Service protocols.
const (
	// ProtocolGRPC (the default) and ProtocolHTTP get HTTP RBAC.
	ProtocolGRPC Protocol = "grpc"
	ProtocolHTTP Protocol = "http"
	// ProtocolTCP gets network RBAC (Envoy only).
	ProtocolTCP Protocol = "tcp"
)

// Service is kordon's minimal service model for dev and test: a named set
// of workloads (those of Namespace whose labels match Selector) reachable
// on Port. Clients dial "xds:///<name>.<namespace>[.svc[.<domain>]][:port]".
// A workload selected by a service serves on <ip>:<port> for each of its
// IPs. In Kubernetes the controller derives Services from Service objects.
type Service struct {
	Name      string            `json:"name" yaml:"name"`
	Namespace string            `json:"namespace" yaml:"namespace"`
	Port      uint32            `json:"port" yaml:"port"`
	Protocol  Protocol          `json:"protocol,omitempty" yaml:"protocol,omitempty"`
	Selector  map[string]string `json:"selector,omitempty" yaml:"selector,omitempty"`
}

// Key is namespace/name:port.
func (s *Service) Key() string {
	return s.Namespace + "/" + s.Name + ":" + strconv.FormatUint(uint64(s.Port), 10)
}

// Selects reports whether w is an endpoint of s.
func (s *Service) Selects(w *workload.Workload) bool {
	if w.Namespace != s.Namespace || len(s.Selector) == 0 {
		return false
	}
	for k, v := range s.Selector {
		if w.Labels[k] != v {
			return false
		}
	}
	return true
}

func (s *Service) validate() error {
	switch {
	case s.Name == "" || s.Namespace == "":
		return errors.New("service needs a name and a namespace")
	case s.Port == 0 || s.Port > 65535:
		return fmt.Errorf("service %s: port %d out of range", s.Key(), s.Port)
	case len(s.Selector) == 0:
		return fmt.Errorf("service %s: selector is required", s.Key())
	}
	switch s.Protocol {
	case "", ProtocolGRPC, ProtocolHTTP, ProtocolTCP:
	default:
		return fmt.Errorf("service %s: unknown protocol %q", s.Key(), s.Protocol)
	}
	return nil
}

// SVID is an X.509-SVID in PEM.
type SVID struct {
	CertChainPEM []byte
	KeyPEM       []byte
	NotBefore    time.Time
	NotAfter     time.Time
}

// Identities supplies what SDS serves to Envoy nodes.
type Identities interface {
	// SVID returns a (possibly new) SVID for spiffeID.
	SVID(ctx context.Context, spiffeID string) (SVID, error)
	// TrustBundles returns the PEM CA certificates of every trusted trust
	// domain, keyed by trust domain name.
	TrustBundles() map[string][]byte
}

// Identity is who authenticated on an xDS stream.
type Identity struct {
	// SPIFFEID is set for SVID authentication.
	SPIFFEID string
	// Namespace and ServiceAccount are always set.
	Namespace      string
	ServiceAccount string
	// Pod is set when the credential is bound to one pod (bound
	// service-account tokens); then only that pod's node is served.
	Pod string
}

// Authenticator proves who opened an xDS stream from its context (peer
// certificate, metadata).
type Authenticator interface {
	Authenticate(ctx context.Context) (Identity, error)
}
