package alert

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeTokens is a TokenAuthenticator over a fixed table that counts calls.
type fakeTokens struct {
	mu    sync.Mutex
	users map[string]User
	err   error
	calls int
}

func (f *fakeTokens) AuthenticateToken(_ context.Context, tok string) (User, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return User{}, f.err
	}
	u, ok := f.users[tok]
	if !ok {
		return User{}, ErrUnauthenticated
	}
	return u, nil
}

// fakeRBAC allows "user verb resource namespace" tuples; namespace "*"
// grants every namespace and the cluster scope, as a ClusterRoleBinding.
type fakeRBAC struct {
	mu    sync.Mutex
	allow map[string]bool
	calls int
}

func (f *fakeRBAC) Authorize(_ context.Context, u User, a Access) (Decision, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.allow[u.Name+" "+a.Verb+" "+a.Resource+" *"] || a.Namespace != "" && f.allow[u.Name+" "+a.Verb+" "+a.Resource+" "+a.Namespace] {
		return Decision{Allowed: true}, nil
	}
	return Decision{Reason: "no RBAC rule"}, nil
}

const (
	nodeID  = "spiffe://cluster.local/ns/kordon-system/sa/kordon-node"
	otherID = "spiffe://cluster.local/ns/shop/sa/web"
)

func svidCert(t *testing.T, id string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), URIs: []*url.URL{u}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type authFixture struct {
	feed    *Feed
	auth    *Auth
	tokens  *fakeTokens
	rbac    *fakeRBAC
	reg     *prometheus.Registry
	handler http.Handler
	now     time.Time
	mu      sync.Mutex
}

func newAuthFixture(t *testing.T) *authFixture {
	t.Helper()
	fx := &authFixture{now: time.Unix(1_800_000_000, 0), reg: prometheus.NewRegistry(),
		tokens: &fakeTokens{users: map[string]User{
			"shop-viewer": {Name: "alice", Groups: []string{"system:authenticated"}},
			"nobody":      {Name: "bob"},
			"security":    {Name: "carol"},
		}},
		rbac: &fakeRBAC{allow: map[string]bool{
			"alice list egressalerts shop":  true,
			"carol list egressalerts *":     true,
			"carol watch egressalerts *":    true,
			"carol delete quarantines shop": true,
		}}}
	fx.feed = newTestFeed(t, t.TempDir(), nil)
	t.Cleanup(func() { fx.feed.Close() })
	for i, ns := range []string{"shop", "bank", "shop"} {
		a := sample(i)
		a.Namespace = ns
		if _, _, err := fx.feed.Publish(context.Background(), a); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	fx.auth, err = NewAuth(AuthConfig{Tokens: fx.tokens, Authorizer: fx.rbac, NodeAgents: []string{nodeID}, Metrics: fx.reg,
		Now: func() time.Time { fx.mu.Lock(); defer fx.mu.Unlock(); return fx.now }})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/alerts", fx.auth.Wrap(fx.feed.Handler(), FeedRule))
	quarantines := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.Handle("/v1/quarantines/", fx.auth.Wrap(quarantines, QuarantineRule))
	fx.handler = mux
	return fx
}

func (fx *authFixture) advance(d time.Duration) {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	fx.now = fx.now.Add(d)
}

type authReq struct {
	method, target, token, body string
	svid                        *x509.Certificate
	authz                       string
}

func (fx *authFixture) do(t *testing.T, rq authReq) *httptest.ResponseRecorder {
	t.Helper()
	if rq.method == "" {
		rq.method = http.MethodGet
	}
	r := httptest.NewRequest(rq.method, rq.target, strings.NewReader(rq.body))
	if rq.token != "" {
		r.Header.Set("Authorization", "Bearer "+rq.token)
	}
	if rq.authz != "" {
		r.Header.Set("Authorization", rq.authz)
	}
	if rq.svid != nil {
		r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{rq.svid}}, PeerCertificates: []*x509.Certificate{rq.svid}}
	}
	w := httptest.NewRecorder()
	fx.handler.ServeHTTP(w, r)
	return w
}

func TestAuthDecisions(t *testing.T) {
	t.Parallel()
	fx := newAuthFixture(t)
	node, other := svidCert(t, nodeID), svidCert(t, otherID)
	post := `{"severity":"high","kind":"exfiltration","namespace":"shop","pod":"p","domain":"evil.example"}`
	for _, tc := range []struct {
		name     string
		req      authReq
		status   int
		wantErr  string   // exact "error" of the JSON body
		wantNS   []string // namespaces of the alerts returned
		wantAuth bool     // WWW-Authenticate expected
	}{
		{name: "no credentials", req: authReq{target: "/v1/alerts"}, status: 401, wantAuth: true,
			wantErr: "authentication required: a bearer token, or a node agent's SVID over mTLS"},
		{name: "not a bearer header", req: authReq{target: "/v1/alerts", authz: "Basic YWxpY2U6eA=="}, status: 401, wantAuth: true,
			wantErr: `Authorization header is not "Bearer <token>"`},
		{name: "unknown token", req: authReq{target: "/v1/alerts", token: "forged"}, status: 401, wantAuth: true, wantErr: "token not authenticated"},
		{name: "token without rights", req: authReq{target: "/v1/alerts?namespace=shop", token: "nobody"}, status: 403,
			wantErr: `user "bob" cannot list egressalerts.security.kordon.dev in namespace shop: no RBAC rule`},
		{name: "namespace reader, its namespace", req: authReq{target: "/v1/alerts?namespace=shop", token: "shop-viewer"}, status: 200, wantNS: []string{"shop", "shop"}},
		{name: "namespace reader, another namespace", req: authReq{target: "/v1/alerts?namespace=bank", token: "shop-viewer"}, status: 403,
			wantErr: `user "alice" cannot list egressalerts.security.kordon.dev in namespace bank: no RBAC rule`},
		{name: "namespace reader, every namespace", req: authReq{target: "/v1/alerts", token: "shop-viewer"}, status: 403,
			wantErr: `user "alice" cannot list egressalerts.security.kordon.dev at the cluster scope: no RBAC rule`},
		{name: "namespace reader cannot follow without watch", req: authReq{target: "/v1/alerts?namespace=shop&follow=1", token: "shop-viewer"}, status: 403,
			wantErr: `user "alice" cannot watch egressalerts.security.kordon.dev in namespace shop: no RBAC rule`},
		{name: "two namespaces", req: authReq{target: "/v1/alerts?namespace=shop&namespace=bank", token: "shop-viewer"}, status: 400,
			wantErr: "namespace: give at most one"},
		{name: "cluster reader", req: authReq{target: "/v1/alerts", token: "security"}, status: 200, wantNS: []string{"shop", "bank", "shop"}},
		{name: "token cannot post", req: authReq{method: "POST", target: "/v1/alerts", token: "security", body: post}, status: 403,
			wantErr: `user carol: only node agents (SVID over mTLS) may post alerts`},
		{name: "node agent posts", req: authReq{method: "POST", target: "/v1/alerts", svid: node, body: post}, status: 201},
		{name: "node agent with a token still posts by its SVID", req: authReq{method: "POST", target: "/v1/alerts", svid: node, token: "forged", body: strings.Replace(post, `"pod":"p"`, `"pod":"q"`, 1)}, status: 201},
		{name: "workload SVID cannot post", req: authReq{method: "POST", target: "/v1/alerts", svid: other, body: post}, status: 403,
			wantErr: otherID + " is not a node agent: only node agents may post alerts"},
		{name: "no SVID cannot post", req: authReq{method: "POST", target: "/v1/alerts", body: post}, status: 401, wantAuth: true,
			wantErr: "authentication required: a bearer token, or a node agent's SVID over mTLS"},
		{name: "node SVID cannot read", req: authReq{target: "/v1/alerts", svid: node}, status: 403,
			wantErr: nodeID + ": an SVID only posts alerts; read the feed with a bearer token"},
		{name: "lift a quarantine with delete", req: authReq{method: "DELETE", target: "/v1/quarantines/shop/web-exfil", token: "security"}, status: 204},
		{name: "lift a quarantine elsewhere", req: authReq{method: "DELETE", target: "/v1/quarantines/bank/x", token: "security"}, status: 403,
			wantErr: `user "carol" cannot delete quarantines.security.kordon.dev x in namespace bank: no RBAC rule`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := fx.do(t, tc.req)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			if got := w.Header().Get("WWW-Authenticate"); (got != "") != tc.wantAuth || tc.wantAuth && got != `Bearer realm="kordon"` {
				t.Fatalf("WWW-Authenticate %q", got)
			}
			if tc.wantErr != "" {
				var body struct {
					Error string
					Code  int
				}
				if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Header().Get("Content-Type") != "application/json" {
					t.Fatalf("error body %q (%s): %v", w.Body, w.Header().Get("Content-Type"), err)
				}
				if body.Error != tc.wantErr || body.Code != tc.status {
					t.Fatalf("error %q code %d, want %q", body.Error, body.Code, tc.wantErr)
				}
			}
			if tc.wantNS != nil {
				var body struct{ Alerts []Alert }
				if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, a := range body.Alerts {
					got = append(got, a.Namespace)
				}
				if strings.Join(got, ",") != strings.Join(tc.wantNS, ",") {
					t.Fatalf("namespaces %v, want %v", got, tc.wantNS)
				}
			}
		})
	}
	for _, m := range []struct {
		cred, result string
		want         float64
	}{{"none", "unauthenticated", 2}, {"token", "unauthenticated", 2}, {"token", "forbidden", 6}, {"token", "allowed", 3}, {"svid", "allowed", 2}, {"svid", "forbidden", 2}, {"token", "bad_request", 0}, {"none", "bad_request", 1}} {
		if got := testutil.ToFloat64(fx.auth.metrics.requests.WithLabelValues(m.cred, m.result)); got != m.want {
			t.Errorf("kordon_alert_auth_requests_total{credential=%s,result=%s} = %v, want %v", m.cred, m.result, got, m.want)
		}
	}
}

// TestAuthCachesReviewsBriefly: within the TTL a token and a decision are
// reviewed once; after it, again; an unknown token is never cached.
func TestAuthCachesReviewsBriefly(t *testing.T) {
	t.Parallel()
	fx := newAuthFixture(t)
	get := func(tok string) int { return fx.do(t, authReq{target: "/v1/alerts?namespace=shop", token: tok}).Code }
	for range 3 {
		if c := get("shop-viewer"); c != 200 {
			t.Fatal(c)
		}
		if c := get("nobody"); c != 403 {
			t.Fatal(c)
		}
		if c := get("forged"); c != 401 {
			t.Fatal(c)
		}
	}
	// 2 tokens reviewed once each + the forged one three times; 2 decisions.
	if fx.tokens.calls != 5 || fx.rbac.calls != 2 {
		t.Fatalf("token reviews %d, access reviews %d; want 5, 2", fx.tokens.calls, fx.rbac.calls)
	}
	fx.advance(10 * time.Second)
	if c := get("shop-viewer"); c != 200 {
		t.Fatal(c)
	}
	if fx.tokens.calls != 6 || fx.rbac.calls != 3 {
		t.Fatalf("after the TTL: token reviews %d, access reviews %d; want 6, 3", fx.tokens.calls, fx.rbac.calls)
	}
	if hits := testutil.ToFloat64(fx.auth.metrics.cache.WithLabelValues("token", "hit")); hits != 4 {
		t.Fatalf("token cache hits %v, want 4", hits)
	}
}

// TestAuthFailsClosedWhenReviewsFail: an unreachable API server refuses
// every token request with 503, never lets it through.
func TestAuthFailsClosedWhenReviewsFail(t *testing.T) {
	t.Parallel()
	fx := newAuthFixture(t)
	fx.tokens.err = errors.New("connection refused")
	if w := fx.do(t, authReq{target: "/v1/alerts?namespace=shop", token: "shop-viewer"}); w.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
}

func TestTTLCacheIsBounded(t *testing.T) {
	t.Parallel()
	now := time.Unix(0, 0)
	c := newTTLCache[int](3, time.Second, func() time.Time { return now })
	for i := range 10 {
		c.put(cacheKey(i), i)
		if c.len() > 3 {
			t.Fatalf("%d entries after %d puts", c.len(), i+1)
		}
	}
	if v, ok := c.get(cacheKey(9)); !ok || v != 9 {
		t.Fatalf("newest entry: %v %v", v, ok)
	}
	now = now.Add(time.Second)
	if _, ok := c.get(cacheKey(9)); ok {
		t.Fatal("entry outlived its TTL")
	}
}
