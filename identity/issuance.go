package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/identity/issuancepb"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TokenInfo is what a token review proves about a caller.
type TokenInfo struct {
	// Namespace and ServiceAccount from "system:serviceaccount:NS:SA".
	Namespace, ServiceAccount string
	// PodName, PodUID and NodeName come from a token bound to a pod
	// (TokenRequest); empty for unbound tokens.
	PodName, PodUID, NodeName string
}

// TokenReviewer authenticates a bearer token for an audience (the
// Kubernetes TokenReview API in a cluster).
type TokenReviewer interface {
	Review(ctx context.Context, token, audience string) (*TokenInfo, error)
}

// ParseServiceAccountUsername splits "system:serviceaccount:NS:SA".
func ParseServiceAccountUsername(u string) (namespace, sa string, err error) {
	rest, ok := strings.CutPrefix(u, "system:serviceaccount:")
	if !ok {
		return "", "", fmt.Errorf("identity: %q is not a service account", u)
	}
	namespace, sa, ok = strings.Cut(rest, ":")
	if !ok || namespace == "" || sa == "" || strings.Contains(sa, ":") {
		return "", "", fmt.Errorf("identity: malformed service account username %q", u)
	}
	return namespace, sa, nil
}

// StaticTokenReviewer accepts a fixed set of tokens (dev mode, tests).
type StaticTokenReviewer map[string]TokenInfo

// Review implements TokenReviewer.
func (s StaticTokenReviewer) Review(_ context.Context, token, _ string) (*TokenInfo, error) {
	ti, ok := s[token]
	if !ok {
		return nil, errors.New("identity: unknown token")
	}
	return &ti, nil
}

// PodLookup finds pods (internal/workload.Registry implements it).
type PodLookup interface {
	ByPod(namespace, name string) (*workload.Workload, bool)
}

// Audience is the token audience the issuance API requires.
const Audience = "kordon"

// IssuanceConfig configures the issuance service.
type IssuanceConfig struct {
	CA       *CA
	Reviewer TokenReviewer
	Pods     PodLookup
	// NodeAgents are "namespace/serviceaccount" of node agents, which may
	// request SVIDs for pods on their own node (default
	// kordon-system/kordon-node).
	NodeAgents []string
	Logger     *slog.Logger
}

// Issuance is the gRPC service node agents and workloads call to get
// SVIDs: kordon.identity.v1.Issuance (issuancepb/issuance.proto), one
// unary method, Sign (an X.509-SVID for a CSR, or a JWT-SVID for
// audiences).
type Issuance struct {
	cfg IssuanceConfig
	log *slog.Logger
}

var _ issuancepb.IssuanceServer = (*Issuance)(nil)

// SignRequest is a Sign request (issuancepb.SignRequest in Go terms; the
// JSON tags are the encoding of kordon versions before the .proto, still
// answered in SignRequest.legacy_json).
type SignRequest struct {
	// CSR is a DER PKCS#10 request (base64 in JSON).
	CSR []byte `json:"csr"`
	// Namespace and Pod name the pod a node agent asks for; a workload
	// asking for itself may leave them empty.
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	// TTLSeconds, 0 for the default.
	TTLSeconds int64 `json:"ttlSeconds,omitempty"`
	// JWTAudience, when set, asks for a JWT-SVID instead (no CSR needed).
	JWTAudience []string `json:"jwtAudience,omitempty"`
}

// SignResponse is a Sign response (issuancepb.SignResponse in Go terms;
// JSON for the legacy encoding).
type SignResponse struct {
	SPIFFEID  string `json:"spiffeId"`
	ChainPEM  string `json:"chainPEM"`
	BundlePEM string `json:"bundlePEM"`
	// Bundle is the SPIFFE bundle (JWKS) of this trust domain.
	Bundle json.RawMessage `json:"bundle"`
	// JWTSVID and JWTExpiry answer a JWT request.
	JWTSVID   string    `json:"jwtSvid,omitempty"`
	JWTExpiry time.Time `json:"jwtExpiry,omitempty"`
}

// NewIssuance builds the service.
func NewIssuance(cfg IssuanceConfig) (*Issuance, error) {
	if cfg.CA == nil || cfg.Reviewer == nil || cfg.Pods == nil {
		return nil, errors.New("identity: IssuanceConfig needs CA, Reviewer and Pods")
	}
	if len(cfg.NodeAgents) == 0 {
		cfg.NodeAgents = []string{"kordon-system/kordon-node"}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Issuance{cfg: cfg, log: cfg.Logger}, nil
}

// Register adds the service to a gRPC server.
func (s *Issuance) Register(g grpc.ServiceRegistrar) {
	issuancepb.RegisterIssuanceServer(g, s)
}

// Sign implements issuancepb.IssuanceServer.
func (s *Issuance) Sign(ctx context.Context, in *issuancepb.SignRequest) (*issuancepb.SignResponse, error) {
	//lint:ignore SA1019 the deprecated field is the legacy encoding, answered on purpose
	if legacy := in.GetLegacyJson(); len(legacy) > 0 {
		return s.signLegacy(ctx, legacy)
	}
	resp, err := s.sign(ctx, &SignRequest{CSR: in.GetCsr(), Namespace: in.GetNamespace(), Pod: in.GetPod(),
		TTLSeconds: in.GetTtlSeconds(), JWTAudience: in.GetJwtAudience()})
	if err != nil {
		return nil, err
	}
	out := &issuancepb.SignResponse{SpiffeId: resp.SPIFFEID, ChainPem: resp.ChainPEM, BundlePem: resp.BundlePEM,
		Bundle: resp.Bundle, JwtSvid: resp.JWTSVID}
	if !resp.JWTExpiry.IsZero() {
		out.JwtExpiry = timestamppb.New(resp.JWTExpiry)
	}
	return out, nil
}

// signLegacy answers a request of a kordon version before the .proto: a
// JSON SignRequest in field 1 (google.protobuf.BytesValue's), answered
// with the JSON SignResponse in field 1, so that the previous node agents
// keep working while a rolling upgrade replaces them.
func (s *Issuance) signLegacy(ctx context.Context, body []byte) (*issuancepb.SignResponse, error) {
	var req SignRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, status.Error(codes.InvalidArgument, "request is not valid JSON")
	}
	resp, err := s.sign(ctx, &req)
	if err != nil {
		return nil, err
	}
	out, err := json.Marshal(resp)
	if err != nil {
		return nil, status.Error(codes.Internal, "response encoding failed")
	}
	//lint:ignore SA1019 the deprecated field is the legacy encoding, answered on purpose
	return &issuancepb.SignResponse{LegacyJson: out}, nil
}

// sign authenticates the caller, authorizes the identity and signs.
func (s *Issuance) sign(ctx context.Context, req *SignRequest) (*SignResponse, error) {
	token := bearer(ctx)
	if token == "" {
		return nil, status.Error(codes.Unauthenticated, "missing bearer token")
	}
	ti, err := s.cfg.Reviewer.Review(ctx, token, Audience)
	if err != nil {
		s.log.Info("issuance refused", "reason", "token review failed", "error", err)
		return nil, status.Error(codes.Unauthenticated, "token not accepted")
	}
	id, err := s.authorize(ti, req)
	if err != nil {
		s.log.Warn("issuance refused", "caller_namespace", ti.Namespace, "caller_sa", ti.ServiceAccount, "caller_node", ti.NodeName,
			"namespace", req.Namespace, "pod", req.Pod, "error", err)
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	if len(req.JWTAudience) > 0 {
		tok, exp, err := s.cfg.CA.SignJWTSVID(id, req.JWTAudience, time.Duration(req.TTLSeconds)*time.Second)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return &SignResponse{SPIFFEID: id.String(), JWTSVID: tok, JWTExpiry: exp}, nil
	}
	svid, err := s.cfg.CA.SignCSR(req.CSR, id, time.Duration(req.TTLSeconds)*time.Second)
	if err != nil {
		var re *RejectError
		if errors.As(err, &re) {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return nil, status.Error(codes.Internal, "signing failed")
	}
	bundle, err := s.cfg.CA.SPIFFEBundle().Marshal()
	if err != nil {
		return nil, status.Error(codes.Internal, "bundle encoding failed")
	}
	s.log.Debug("issued SVID", "spiffe_id", id.String(), "caller_node", ti.NodeName)
	return &SignResponse{SPIFFEID: id.String(), ChainPEM: string(svid.ChainPEM()), BundlePEM: string(s.cfg.CA.BundlePEM()), Bundle: bundle}, nil
}

// authorize decides which identity, if any, the caller may get.
func (s *Issuance) authorize(ti *TokenInfo, req *SignRequest) (spiffeid.ID, error) {
	td := s.cfg.CA.TrustDomain()
	caller := ti.Namespace + "/" + ti.ServiceAccount
	isNodeAgent := false
	for _, na := range s.cfg.NodeAgents {
		if na == caller {
			isNodeAgent = true
		}
	}
	if isNodeAgent && req.Pod != "" {
		// Why: a node agent may speak for pods, but only those scheduled
		// on its own node, so a compromised node cannot mint identities
		// for workloads elsewhere (ambient/ztunnel's rule).
		if ti.NodeName == "" {
			return spiffeid.ID{}, errors.New("node agent token carries no node claim")
		}
		pod, ok := s.cfg.Pods.ByPod(req.Namespace, req.Pod)
		if !ok {
			return spiffeid.ID{}, fmt.Errorf("pod %s/%s not found", req.Namespace, req.Pod)
		}
		if pod.Node != ti.NodeName {
			return spiffeid.ID{}, fmt.Errorf("pod %s/%s is not scheduled on node %s", req.Namespace, req.Pod, ti.NodeName)
		}
		return WorkloadID(td, pod.Namespace, pod.ServiceAccount)
	}
	// A workload asks for itself: the identity is exactly the token's.
	if req.Namespace != "" && req.Namespace != ti.Namespace || req.Pod != "" && req.Pod != ti.PodName {
		return spiffeid.ID{}, errors.New("a workload token may only request its own identity")
	}
	if ti.PodName != "" {
		// Why: a token bound to a pod stops working for issuance as soon
		// as the pod is gone from the registry, even while the apiserver
		// still caches the token review.
		pod, ok := s.cfg.Pods.ByPod(ti.Namespace, ti.PodName)
		if !ok || (ti.PodUID != "" && pod.UID != "" && pod.UID != ti.PodUID) {
			return spiffeid.ID{}, fmt.Errorf("pod %s/%s no longer exists", ti.Namespace, ti.PodName)
		}
	}
	return WorkloadID(td, ti.Namespace, ti.ServiceAccount)
}

func bearer(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			return t
		}
	}
	return ""
}

// ServerTLS returns a TLS config for the issuance server with a
// certificate from the CA for id (the controller's own identity); it is
// re-signed at half-life on the next handshake.
func ServerTLS(ca *CA, id spiffeid.ID) *tls.Config {
	var mu sync.Mutex
	var cur *tls.Certificate
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			mu.Lock()
			defer mu.Unlock()
			// Why half-life (the Workload API's rule too): after a root
			// rotation the next handshake past half-life presents an SVID
			// from the new root, long before the old one leaves bundles.
			if cur != nil && ca.cfg.Now().Before(RenewAt(cur.Leaf)) {
				return cur, nil
			}
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return nil, err
			}
			svid, err := ca.SignPublicKey(key.Public(), id, 0)
			if err != nil {
				return nil, err
			}
			c := &tls.Certificate{PrivateKey: key, Leaf: svid.Chain[0]}
			for _, x := range svid.Chain {
				c.Certificate = append(c.Certificate, x.Raw)
			}
			cur = c
			return c, nil
		},
	}
}

// ServeIssuance serves the issuance API over TLS on ln until ctx ends;
// opts are added to the gRPC server's (interceptors, for example).
func ServeIssuance(ctx context.Context, ln net.Listener, s *Issuance, tlsCfg *tls.Config, opts ...grpc.ServerOption) error {
	g := grpc.NewServer(append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(tlsCfg))}, opts...)...)
	s.Register(g)
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

// IssuanceClient calls the issuance API. It verifies the server's SVID
// against the trust bundle it was configured with.
type IssuanceClient struct {
	conn  *grpc.ClientConn
	api   issuancepb.IssuanceClient
	token func() (string, error)
}

// DialIssuance connects to addr, trusting roots and requiring serverID.
func DialIssuance(addr string, roots []*x509.Certificate, serverID spiffeid.ID, token func() (string, error)) (*IssuanceClient, error) {
	return DialIssuanceRoots(addr, func() ([]*x509.Certificate, error) { return roots, nil }, serverID, token)
}

// DialIssuanceRoots is DialIssuance with the trusted roots read at each
// handshake, so a client that follows the published bundle keeps trusting
// the controller after the CA root rotates.
func DialIssuanceRoots(addr string, roots func() ([]*x509.Certificate, error), serverID spiffeid.ID, token func() (string, error)) (*IssuanceClient, error) {
	tlsCfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// SPIFFE SVIDs carry no DNS name: verify the chain ourselves and
		// match the URI SAN instead of a hostname.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyPeerCertificate
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("identity: server sent no certificate")
			}
			certs := make([]*x509.Certificate, 0, len(raw))
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				certs = append(certs, c)
			}
			rs, err := roots()
			if err != nil {
				return fmt.Errorf("identity: trust bundle: %w", err)
			}
			pool := x509.NewCertPool()
			for _, r := range rs {
				pool.AddCert(r)
			}
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return fmt.Errorf("identity: server certificate: %w", err)
			}
			if len(certs[0].URIs) != 1 || certs[0].URIs[0].String() != serverID.String() {
				return fmt.Errorf("identity: server is not %s", serverID)
			}
			return nil
		},
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, err
	}
	return &IssuanceClient{conn: conn, api: issuancepb.NewIssuanceClient(conn), token: token}, nil
}

// Close releases the connection.
func (c *IssuanceClient) Close() error { return c.conn.Close() }

// Sign sends a CSR, optionally on behalf of namespace/pod.
func (c *IssuanceClient) Sign(ctx context.Context, req SignRequest) (*SignResponse, error) {
	tok, err := c.token()
	if err != nil {
		return nil, err
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	out, err := c.api.Sign(ctx, &issuancepb.SignRequest{Csr: req.CSR, Namespace: req.Namespace, Pod: req.Pod,
		TtlSeconds: req.TTLSeconds, JwtAudience: req.JWTAudience})
	if err != nil {
		return nil, err
	}
	resp := &SignResponse{SPIFFEID: out.GetSpiffeId(), ChainPEM: out.GetChainPem(), BundlePEM: out.GetBundlePem(),
		Bundle: out.GetBundle(), JWTSVID: out.GetJwtSvid()}
	if out.JwtExpiry != nil {
		resp.JWTExpiry = out.GetJwtExpiry().AsTime()
	}
	return resp, nil
}

// RemoteIssuer is the node agent's Issuer: it asks the controller's
// issuance API for SVIDs on behalf of the pods of its node (the controller
// checks that they are scheduled there).
type RemoteIssuer struct {
	Client *IssuanceClient
	// TrustBundles returns the trust bundles to serve (the node agent
	// reads the controller's published bundle).
	TrustBundles func(ctx context.Context) ([]*spiffebundle.Bundle, error)
}

var _ Issuer = (*RemoteIssuer)(nil)

// IssueX509 sends a CSR signed with key for the pod.
func (r *RemoteIssuer) IssueX509(ctx context.Context, w *workload.Workload, key crypto.Signer) (*SVID, error) {
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, err
	}
	resp, err := r.Client.Sign(ctx, SignRequest{CSR: csr, Namespace: w.Namespace, Pod: w.Name})
	if err != nil {
		return nil, err
	}
	id, err := spiffeid.FromString(resp.SPIFFEID)
	if err != nil {
		return nil, err
	}
	chain, err := parsePEMCerts([]byte(resp.ChainPEM))
	if err != nil {
		return nil, err
	}
	return &SVID{ID: id, Chain: chain}, nil
}

// IssueJWT asks for a JWT-SVID for the pod.
func (r *RemoteIssuer) IssueJWT(ctx context.Context, w *workload.Workload, audience []string) (string, time.Time, error) {
	resp, err := r.Client.Sign(ctx, SignRequest{Namespace: w.Namespace, Pod: w.Name, JWTAudience: audience})
	if err != nil {
		return "", time.Time{}, err
	}
	return resp.JWTSVID, resp.JWTExpiry, nil
}

// Bundles implements Issuer.
func (r *RemoteIssuer) Bundles(ctx context.Context) ([]*spiffebundle.Bundle, error) {
	return r.TrustBundles(ctx)
}
