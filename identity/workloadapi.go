package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// Issuer hands out SVIDs for workloads. The CA implements it directly in
// dev mode and on the controller (LocalIssuer); the node agent uses the
// issuance API client (RemoteIssuer).
type Issuer interface {
	IssueX509(ctx context.Context, w *workload.Workload, pub crypto.PublicKey) (*SVID, error)
	IssueJWT(ctx context.Context, w *workload.Workload, audience []string) (string, time.Time, error)
	// Bundles returns the trust bundles: this trust domain's first, then
	// federated ones.
	Bundles(ctx context.Context) ([]*spiffebundle.Bundle, error)
}

// LocalIssuer issues from a CA in this process.
type LocalIssuer struct {
	CA *CA
	// Federated bundles of other trust domains, served alongside ours.
	Federated []*spiffebundle.Bundle
}

var _ Issuer = (*LocalIssuer)(nil)

// IssueX509 signs an X.509-SVID for the workload's identity.
func (l *LocalIssuer) IssueX509(_ context.Context, w *workload.Workload, pub crypto.PublicKey) (*SVID, error) {
	id, err := WorkloadID(l.CA.TrustDomain(), w.Namespace, w.ServiceAccount)
	if err != nil {
		return nil, err
	}
	return l.CA.SignPublicKey(pub, id, 0)
}

// IssueJWT signs a JWT-SVID for the workload's identity.
func (l *LocalIssuer) IssueJWT(_ context.Context, w *workload.Workload, audience []string) (string, time.Time, error) {
	id, err := WorkloadID(l.CA.TrustDomain(), w.Namespace, w.ServiceAccount)
	if err != nil {
		return "", time.Time{}, err
	}
	return l.CA.SignJWTSVID(id, audience, 0)
}

// Bundles returns ours and the federated bundles.
func (l *LocalIssuer) Bundles(context.Context) ([]*spiffebundle.Bundle, error) {
	return append([]*spiffebundle.Bundle{l.CA.SPIFFEBundle()}, l.Federated...), nil
}

// WorkloadAPIConfig configures the Workload API server.
type WorkloadAPIConfig struct {
	Issuer   Issuer
	Attestor Attestor
	Logger   *slog.Logger
	// Now is the clock used for rotation scheduling (default time.Now).
	Now func() time.Time
	// After waits for a duration (default time.After); tests shorten it.
	After func(time.Duration) <-chan time.Time
}

// WorkloadAPI serves the SPIFFE Workload API on a Unix socket. Callers are
// attested from the socket's peer credentials; unknown callers get
// PermissionDenied. X.509-SVIDs are re-issued at half-life (with jitter,
// so that pods started together do not renew together) and pushed to
// open streams.
type WorkloadAPI struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer
	cfg WorkloadAPIConfig
	log *slog.Logger

	mu   sync.Mutex
	grpc *grpc.Server
}

// NewWorkloadAPI builds the server.
func NewWorkloadAPI(cfg WorkloadAPIConfig) (*WorkloadAPI, error) {
	if cfg.Issuer == nil || cfg.Attestor == nil {
		return nil, errors.New("identity: WorkloadAPIConfig needs Issuer and Attestor")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	return &WorkloadAPI{cfg: cfg, log: cfg.Logger}, nil
}

// Serve answers on a Unix listener until ctx ends.
func (s *WorkloadAPI) Serve(ctx context.Context, ln net.Listener) error {
	g := grpc.NewServer(grpc.Creds(peerCredTransport{}))
	workloadpb.RegisterSpiffeWorkloadAPIServer(g, s)
	s.mu.Lock()
	s.grpc = g
	s.mu.Unlock()
	go func() {
		<-ctx.Done()
		g.Stop()
	}()
	err := g.Serve(ln)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// attest checks the security header and maps the caller to a workload.
func (s *WorkloadAPI) attest(ctx context.Context) (*workload.Workload, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return nil, status.Error(codes.InvalidArgument, "security header missing from request")
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.PermissionDenied, "no peer information")
	}
	pc, ok := p.AuthInfo.(peerCreds)
	if !ok || pc.PID == 0 {
		return nil, status.Error(codes.PermissionDenied, "caller is not attested")
	}
	w, err := s.cfg.Attestor.Attest(ctx, pc.PID)
	if err != nil {
		s.log.Info("workload API caller refused", "pid", pc.PID, "error", err)
		return nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	return w, nil
}

// FetchX509SVID streams the caller's X.509-SVID and re-sends it before it
// expires.
func (s *WorkloadAPI) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	ctx := stream.Context()
	w, err := s.attest(ctx)
	if err != nil {
		return err
	}
	for {
		resp, notAfter, err := s.x509Response(ctx, w)
		if err != nil {
			s.log.Warn("SVID issuance failed", "namespace", w.Namespace, "pod", w.Name, "error", err)
			return status.Error(codes.Unavailable, "could not issue an SVID")
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.cfg.After(s.renewIn(notAfter)):
		}
	}
}

// renewIn is half the remaining lifetime, minus up to 10% jitter.
func (s *WorkloadAPI) renewIn(notAfter time.Time) time.Duration {
	left := notAfter.Sub(s.cfg.Now())
	half := left / 2
	jitter := time.Duration(mrand.Int64N(int64(half/10) + 1))
	return max(half-jitter, 100*time.Millisecond)
}

func (s *WorkloadAPI) x509Response(ctx context.Context, w *workload.Workload) (*workloadpb.X509SVIDResponse, time.Time, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, time.Time{}, err
	}
	svid, err := s.cfg.Issuer.IssueX509(ctx, w, key.Public())
	if err != nil {
		return nil, time.Time{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, time.Time{}, err
	}
	bundles, err := s.cfg.Issuer.Bundles(ctx)
	if err != nil {
		return nil, time.Time{}, err
	}
	var chain []byte
	for _, c := range svid.Chain {
		chain = append(chain, c.Raw...)
	}
	resp := &workloadpb.X509SVIDResponse{
		Svids: []*workloadpb.X509SVID{{
			SpiffeId:    svid.ID.String(),
			X509Svid:    chain,
			X509SvidKey: keyDER,
			Bundle:      concatDER(bundles[0].X509Authorities()),
		}},
		FederatedBundles: map[string][]byte{},
	}
	for _, b := range bundles[1:] {
		resp.FederatedBundles[b.TrustDomain().IDString()] = concatDER(b.X509Authorities())
	}
	return resp, svid.NotAfter(), nil
}

func concatDER(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}

// FetchX509Bundles streams the trust bundles.
func (s *WorkloadAPI) FetchX509Bundles(_ *workloadpb.X509BundlesRequest, stream grpc.ServerStreamingServer[workloadpb.X509BundlesResponse]) error {
	ctx := stream.Context()
	if _, err := s.attest(ctx); err != nil {
		return err
	}
	var last string
	for {
		bundles, err := s.cfg.Issuer.Bundles(ctx)
		if err != nil {
			return status.Error(codes.Unavailable, "bundles unavailable")
		}
		resp := &workloadpb.X509BundlesResponse{Bundles: map[string][]byte{}}
		for _, b := range bundles {
			resp.Bundles[b.TrustDomain().IDString()] = concatDER(b.X509Authorities())
		}
		if key := fmt.Sprint(resp.Bundles); key != last {
			if err := stream.Send(resp); err != nil {
				return err
			}
			last = key
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.cfg.After(30 * time.Second):
		}
	}
}

// FetchJWTSVID signs a JWT-SVID for the caller.
func (s *WorkloadAPI) FetchJWTSVID(ctx context.Context, req *workloadpb.JWTSVIDRequest) (*workloadpb.JWTSVIDResponse, error) {
	w, err := s.attest(ctx)
	if err != nil {
		return nil, err
	}
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	tok, _, err := s.cfg.Issuer.IssueJWT(ctx, w, req.Audience)
	if err != nil {
		return nil, status.Error(codes.Unavailable, "could not issue a JWT-SVID")
	}
	bundles, err := s.cfg.Issuer.Bundles(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, "bundles unavailable")
	}
	id, err := WorkloadID(bundles[0].TrustDomain(), w.Namespace, w.ServiceAccount)
	if err != nil {
		return nil, status.Error(codes.PermissionDenied, "no identity for this workload")
	}
	return &workloadpb.JWTSVIDResponse{Svids: []*workloadpb.JWTSVID{{SpiffeId: id.String(), Svid: tok}}}, nil
}

// FetchJWTBundles streams the JWT bundles (JWKS per trust domain).
func (s *WorkloadAPI) FetchJWTBundles(_ *workloadpb.JWTBundlesRequest, stream grpc.ServerStreamingServer[workloadpb.JWTBundlesResponse]) error {
	ctx := stream.Context()
	if _, err := s.attest(ctx); err != nil {
		return err
	}
	bundles, err := s.cfg.Issuer.Bundles(ctx)
	if err != nil {
		return status.Error(codes.Unavailable, "bundles unavailable")
	}
	resp := &workloadpb.JWTBundlesResponse{Bundles: map[string][]byte{}}
	for _, b := range bundles {
		raw, err := b.JWTBundle().Marshal()
		if err != nil {
			return status.Error(codes.Internal, "bundle encoding failed")
		}
		resp.Bundles[b.TrustDomain().IDString()] = raw
	}
	if err := stream.Send(resp); err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// ValidateJWTSVID checks a JWT-SVID against the bundles.
func (s *WorkloadAPI) ValidateJWTSVID(ctx context.Context, req *workloadpb.ValidateJWTSVIDRequest) (*workloadpb.ValidateJWTSVIDResponse, error) {
	if _, err := s.attest(ctx); err != nil {
		return nil, err
	}
	if req.Audience == "" || req.Svid == "" {
		return nil, status.Error(codes.InvalidArgument, "audience and svid must be specified")
	}
	bundles, err := s.cfg.Issuer.Bundles(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, "bundles unavailable")
	}
	set := jwtbundle.NewSet()
	for _, b := range bundles {
		set.Add(b.JWTBundle())
	}
	svid, err := jwtsvid.ParseAndValidate(req.Svid, set, []string{req.Audience})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	claims, err := structpb.NewStruct(jsonSafe(svid.Claims))
	if err != nil {
		return nil, status.Error(codes.Internal, "claims encoding failed")
	}
	return &workloadpb.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

// jsonSafe converts claim values structpb cannot take ([]string) to []any.
func jsonSafe(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		switch t := v.(type) {
		case []string:
			l := make([]any, len(t))
			for i := range t {
				l[i] = t[i]
			}
			out[k] = l
		default:
			out[k] = v
		}
	}
	return out
}
