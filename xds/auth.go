package xds

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/kordon-dev/kordon/identity"
)

// Authentication errors.
var (
	// ErrNoCredentials means the stream carried neither a verified client
	// certificate nor a token.
	ErrNoCredentials = errors.New("xds: no client credentials")
	// ErrForbiddenNode means the authenticated identity does not own the
	// node it asked for.
	ErrForbiddenNode = errors.New("xds: node does not belong to the authenticated identity")
)

// SVIDAuthenticator authenticates streams by the verified client
// certificate's SPIFFE ID (the gRPC server must verify client certificates
// against the trust bundle: Config.TLS with ClientAuth).
type SVIDAuthenticator struct {
	// TrustDomain is the only trust domain accepted: workloads of
	// federated domains never get this mesh's configuration.
	TrustDomain string
}

var _ Authenticator = SVIDAuthenticator{}

// Authenticate implements Authenticator.
func (a SVIDAuthenticator) Authenticate(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, ErrNoCredentials
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	// Only verified chains count: an unverified peer certificate proves
	// nothing.
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, ErrNoCredentials
	}
	// x509svid.IDFromCert insists on exactly one URI SAN, a valid
	// SPIFFE ID.
	id, err := x509svid.IDFromCert(info.State.VerifiedChains[0][0])
	if err != nil {
		return Identity{}, fmt.Errorf("xds: client certificate: %w", err)
	}
	return identityOf(id, a.TrustDomain)
}

// ParseSPIFFEID parses spiffe://<trustDomain>/ns/<ns>/sa/<sa> with
// go-spiffe (spiffeid.FromString, identity.ParseWorkloadID).
func ParseSPIFFEID(id, trustDomain string) (Identity, error) {
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return Identity{}, fmt.Errorf("xds: SPIFFE ID %q: %w", id, err)
	}
	return identityOf(sid, trustDomain)
}

func identityOf(id spiffeid.ID, trustDomain string) (Identity, error) {
	if id.TrustDomain().Name() != trustDomain {
		return Identity{}, fmt.Errorf("xds: SPIFFE ID %q is not in trust domain %q", id, trustDomain)
	}
	ns, sa, err := identity.ParseWorkloadID(id)
	if err != nil {
		return Identity{}, fmt.Errorf("xds: SPIFFE ID %q is not a workload ID (/ns/<ns>/sa/<sa>): %w", id, err)
	}
	return Identity{SPIFFEID: id.String(), Namespace: ns, ServiceAccount: sa}, nil
}

// TokenReviewer checks a service-account token (Kubernetes TokenReview or
// a static table in dev mode).
type TokenReviewer interface {
	// Review returns the identity the token proves.
	Review(ctx context.Context, token string) (Identity, error)
}

// TokenAuthenticator authenticates streams by the bearer token in the
// "authorization" metadata.
type TokenAuthenticator struct {
	Reviewer TokenReviewer
}

var _ Authenticator = TokenAuthenticator{}

// Authenticate implements Authenticator.
func (a TokenAuthenticator) Authenticate(ctx context.Context) (Identity, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if tok, ok := strings.CutPrefix(v, "Bearer "); ok && tok != "" {
			id, err := a.Reviewer.Review(ctx, tok)
			if err != nil {
				return Identity{}, fmt.Errorf("xds: token review: %w", err)
			}
			if id.Namespace == "" || id.ServiceAccount == "" {
				return Identity{}, errors.New("xds: token review returned no service account")
			}
			return id, nil
		}
	}
	return Identity{}, ErrNoCredentials
}

// AnyAuthenticator tries each authenticator in order and returns the
// first success; when all fail it returns the first error that is not
// ErrNoCredentials (a bad credential is reported over a missing one).
type AnyAuthenticator []Authenticator

// Authenticate implements Authenticator.
func (as AnyAuthenticator) Authenticate(ctx context.Context) (Identity, error) {
	var firstErr error
	for _, a := range as {
		id, err := a.Authenticate(ctx)
		if err == nil {
			return id, nil
		}
		if firstErr == nil || (errors.Is(firstErr, ErrNoCredentials) && !errors.Is(err, ErrNoCredentials)) {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = ErrNoCredentials
	}
	return Identity{}, firstErr
}

// authorize checks that id may receive the configuration of node
// namespace/pod whose workload runs as serviceAccount.
func authorize(id Identity, namespace, pod, serviceAccount string) error {
	if id.Namespace != namespace || id.ServiceAccount != serviceAccount || (id.Pod != "" && id.Pod != pod) {
		return fmt.Errorf("%w: %s/%s (sa %s) asked by ns %s sa %s", ErrForbiddenNode, namespace, pod, serviceAccount, id.Namespace, id.ServiceAccount)
	}
	return nil
}
