package alert

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// The Kubernetes resources the feed's permissions are expressed in: a
// caller may read what RBAC lets it list (kubectl get egressalerts -n x
// and GET /v1/alerts?namespace=x need the same rule).
const (
	APIGroup            = "security.kordon.dev"
	ResourceAlerts      = "egressalerts"
	ResourceQuarantines = "quarantines"
)

// ErrUnauthenticated is what a TokenAuthenticator returns for a token
// that proves nothing (unknown, expired, wrong audience); any other error
// means the check could not be made.
var ErrUnauthenticated = errors.New("alert: token not authenticated")

// User is an authenticated caller: a token user as Kubernetes
// authentication reports it (TokenReview status.user), or a workload by
// the SPIFFE ID of its client certificate.
type User struct {
	Name   string              `json:"name,omitempty"`
	UID    string              `json:"uid,omitempty"`
	Groups []string            `json:"groups,omitempty"`
	Extra  map[string][]string `json:"extra,omitempty"`
	// SPIFFEID is set, and the rest empty, for an SVID (mTLS) caller.
	SPIFFEID string `json:"spiffeId,omitempty"`
}

// Access is what a request needs, in RBAC terms: Verb on Resource (in
// APIGroup) in Namespace ("" is cluster-wide), optionally one Name.
type Access struct {
	Verb, Resource, Namespace, Name string
	// NodeAgent: only a node agent's SVID may make the request (alerts
	// forwarded from nodes); tokens are never enough.
	NodeAgent bool
}

// Any is the Access of routes any authenticated caller may use (a UI's
// static files, whose data calls carry their own Access).
var Any = Access{}

// Decision is an authorizer's answer.
type Decision struct {
	Allowed bool
	// Reason, when the authorizer gives one, is shown to the caller.
	Reason string
}

// TokenAuthenticator checks bearer tokens (internal/kube: TokenReview).
type TokenAuthenticator interface {
	// AuthenticateToken returns the token's user, ErrUnauthenticated (or
	// an error wrapping it) for a token that proves nothing, or another
	// error when it could not tell.
	AuthenticateToken(ctx context.Context, token string) (User, error)
}

// Authorizer decides whether a user has an Access (internal/kube:
// SubjectAccessReview).
type Authorizer interface {
	Authorize(ctx context.Context, u User, a Access) (Decision, error)
}

// Rule maps a request to the Access it needs; an error is the caller's
// (400).
type Rule func(r *http.Request) (Access, error)

// AuthConfig configures the feed's authentication (cluster mode; dev mode
// serves on loopback only instead).
type AuthConfig struct {
	// Tokens and Authorizer check bearer tokens; both required.
	Tokens     TokenAuthenticator
	Authorizer Authorizer
	// NodeAgents are the SPIFFE IDs that may POST alerts. SVIDs are read
	// from r.TLS.VerifiedChains: the server must verify client
	// certificates against the trust bundle (tls.VerifyClientCertIfGiven).
	NodeAgents []string
	// CacheTTL is how long a review's answer is reused (default 10s, the
	// apiserver's own token cache); CacheSize bounds each cache (default
	// 4096 entries).
	CacheTTL  time.Duration
	CacheSize int
	// Realm is the WWW-Authenticate realm (default "kordon").
	Realm   string
	Now     func() time.Time
	Logger  *slog.Logger
	Metrics prometheus.Registerer
}

// Auth authenticates and authorizes requests to the feed (and to anything
// else it wraps, such as a UI).
type Auth struct {
	cfg     AuthConfig
	log     *slog.Logger
	tokens  *ttlCache[User]
	access  *ttlCache[Decision]
	metrics authMetrics
}

type authMetrics struct {
	requests *prometheus.CounterVec
	cache    *prometheus.CounterVec
}

// NewAuth validates cfg and fills its defaults.
func NewAuth(cfg AuthConfig) (*Auth, error) {
	if cfg.Tokens == nil || cfg.Authorizer == nil {
		return nil, errors.New("alert: AuthConfig needs Tokens and Authorizer")
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = 10 * time.Second
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 4096
	}
	if cfg.Realm == "" {
		cfg.Realm = "kordon"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a := &Auth{cfg: cfg, log: cfg.Logger,
		tokens: newTTLCache[User](cfg.CacheSize, cfg.CacheTTL, cfg.Now),
		access: newTTLCache[Decision](cfg.CacheSize, cfg.CacheTTL, cfg.Now),
		metrics: authMetrics{
			requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "alert", Name: "auth_requests_total",
				Help: "Requests to the authenticated feed by credential (token, svid, none) and result (allowed, unauthenticated, forbidden, unavailable, bad_request)."},
				[]string{"credential", "result"}),
			cache: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "alert", Name: "auth_cache_total",
				Help: "Token and access review lookups by review (token, access) and result (hit, miss)."},
				[]string{"review", "result"}),
		}}
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{a.metrics.requests, a.metrics.cache} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("alert: %w", err)
			}
		}
	}
	return a, nil
}

// userKey is the request-context key of the authenticated User.
type userKey struct{}

// UserFrom returns the caller Wrap authenticated.
func UserFrom(ctx context.Context) (User, bool) {
	u, ok := ctx.Value(userKey{}).(User)
	return u, ok
}

// Wrap serves h only to callers that have the Access rule gives each
// request: 401 (with WWW-Authenticate) without valid credentials, 403
// without the permission, 503 when a review cannot be made (fail closed);
// the error bodies are JSON: {"error": "...", "code": 403}.
func (a *Auth) Wrap(h http.Handler, rule Rule) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		acc, err := rule(r)
		if err != nil {
			a.refuse(w, "none", http.StatusBadRequest, err.Error())
			return
		}
		u, cred, status, msg := a.authenticate(r, acc)
		if status == 0 {
			status, msg = a.authorize(r.Context(), u, acc)
		}
		if status != 0 {
			a.refuse(w, cred, status, msg)
			return
		}
		a.metrics.requests.WithLabelValues(cred, "allowed").Inc()
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), userKey{}, u)))
	})
}

// authenticate finds the caller: a bearer token if there is one, else
// the SVID; on node-agent routes the SVID first (a token is then
// authenticated only to tell its user 403, never enough to inject
// alerts). A non-zero status refuses the request.
func (a *Auth) authenticate(r *http.Request, acc Access) (u User, cred string, status int, msg string) {
	svid := func() (User, string, int, string) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
			return User{}, "none", http.StatusUnauthorized, "authentication required: a bearer token, or a node agent's SVID over mTLS"
		}
		// Why VerifiedChains only: PeerCertificates are whatever the
		// client sent; only a chain to the trust bundle proves the ID.
		id, err := x509svid.IDFromCert(r.TLS.VerifiedChains[0][0])
		if err != nil {
			return User{}, "svid", http.StatusUnauthorized, "client certificate is not an SVID: " + err.Error()
		}
		return User{SPIFFEID: id.String()}, "svid", 0, ""
	}
	h := r.Header.Get("Authorization")
	if h == "" || acc.NodeAgent && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		return svid()
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if tok = strings.TrimSpace(tok); !ok || tok == "" {
		return User{}, "token", http.StatusUnauthorized, "Authorization header is not \"Bearer <token>\""
	}
	key := cacheKey(tok)
	if u, ok := a.tokens.get(key); ok {
		a.metrics.cache.WithLabelValues("token", "hit").Inc()
		return u, "token", 0, ""
	}
	a.metrics.cache.WithLabelValues("token", "miss").Inc()
	u, err := a.cfg.Tokens.AuthenticateToken(r.Context(), tok)
	switch {
	case errors.Is(err, ErrUnauthenticated):
		// Not cached: a rejected token costs the caller a review each time,
		// and a cache of rejections would be filled by anyone.
		return User{}, "token", http.StatusUnauthorized, "token not authenticated"
	case err != nil:
		a.log.Warn("token review failed", "error", err)
		return User{}, "token", http.StatusServiceUnavailable, "token review unavailable"
	case u.Name == "":
		return User{}, "token", http.StatusUnauthorized, "token review returned no user"
	}
	a.tokens.put(key, u)
	return u, "token", 0, ""
}

// authorize checks u against acc; a non-zero status refuses.
func (a *Auth) authorize(ctx context.Context, u User, acc Access) (int, string) {
	if u.SPIFFEID != "" {
		switch {
		case acc.NodeAgent && slices.Contains(a.cfg.NodeAgents, u.SPIFFEID):
			return 0, ""
		case acc.NodeAgent:
			return http.StatusForbidden, u.SPIFFEID + " is not a node agent: only node agents may post alerts"
		case acc == Any:
			return 0, ""
		default:
			return http.StatusForbidden, u.SPIFFEID + ": an SVID only posts alerts; read the feed with a bearer token"
		}
	}
	if acc.NodeAgent {
		return http.StatusForbidden, "user " + u.Name + ": only node agents (SVID over mTLS) may post alerts"
	}
	if acc == Any {
		return 0, ""
	}
	key := cacheKey(u, acc)
	d, ok := a.access.get(key)
	if ok {
		a.metrics.cache.WithLabelValues("access", "hit").Inc()
	} else {
		a.metrics.cache.WithLabelValues("access", "miss").Inc()
		var err error
		if d, err = a.cfg.Authorizer.Authorize(ctx, u, acc); err != nil {
			a.log.Warn("access review failed", "user", u.Name, "error", err)
			return http.StatusServiceUnavailable, "access review unavailable"
		}
		// Denials are cached too (the key is an authenticated user, so
		// the cache is not anyone's to fill), as the apiserver's webhook
		// authorizer does.
		a.access.put(key, d)
	}
	if !d.Allowed {
		msg := fmt.Sprintf("user %q cannot %s %s.%s", u.Name, acc.Verb, acc.Resource, APIGroup)
		if acc.Name != "" {
			msg += " " + acc.Name
		}
		if acc.Namespace != "" {
			msg += " in namespace " + acc.Namespace
		} else {
			msg += " at the cluster scope"
		}
		if d.Reason != "" {
			msg += ": " + d.Reason
		}
		return http.StatusForbidden, msg
	}
	return 0, ""
}

func (a *Auth) refuse(w http.ResponseWriter, cred string, status int, msg string) {
	result := map[int]string{http.StatusBadRequest: "bad_request", http.StatusUnauthorized: "unauthenticated",
		http.StatusForbidden: "forbidden", http.StatusServiceUnavailable: "unavailable"}[status]
	a.metrics.requests.WithLabelValues(cred, result).Inc()
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+a.cfg.Realm+`"`)
	}
	writeJSONError(w, status, msg)
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": msg, "code": status})
}

// FeedRule is the Access of Feed.Handler's routes: reading needs list
// (and watch to follow) on egressalerts in ?namespace= (cluster-wide
// without one; the handler then returns only that namespace's alerts),
// posting is for node agents only.
func FeedRule(r *http.Request) (Access, error) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		q := r.URL.Query()
		// One namespace, read the same way by the handler's filter: the
		// permission checked is the one the response is cut to.
		if len(q["namespace"]) > 1 {
			return Access{}, errors.New("namespace: give at most one")
		}
		verb := "list"
		if q.Get("follow") != "" {
			verb = "watch"
		}
		return Access{Verb: verb, Resource: ResourceAlerts, Namespace: q.Get("namespace")}, nil
	default:
		return Access{NodeAgent: true}, nil
	}
}

// QuarantineRule is the Access of quarantine routes: GET
// /v1/quarantines[?namespace=] needs list on quarantines, DELETE
// /v1/quarantines/{namespace}/{name} (lifting) needs delete on that
// quarantine, DELETE /v1/quarantines/{name} delete at the cluster scope.
func QuarantineRule(r *http.Request) (Access, error) {
	rest, _ := strings.CutPrefix(r.URL.Path, "/v1/quarantines")
	rest = strings.Trim(rest, "/")
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		q := r.URL.Query()
		if len(q["namespace"]) > 1 {
			return Access{}, errors.New("namespace: give at most one")
		}
		if rest != "" {
			ns, name, ok := strings.Cut(rest, "/")
			if !ok {
				return Access{Verb: "get", Resource: ResourceQuarantines, Name: ns}, nil
			}
			return Access{Verb: "get", Resource: ResourceQuarantines, Namespace: ns, Name: name}, nil
		}
		return Access{Verb: "list", Resource: ResourceQuarantines, Namespace: q.Get("namespace")}, nil
	case http.MethodDelete:
		if rest == "" {
			return Access{}, errors.New("path: want /v1/quarantines/{namespace}/{name}")
		}
		ns, name, ok := strings.Cut(rest, "/")
		if !ok {
			return Access{Verb: "delete", Resource: ResourceQuarantines, Name: ns}, nil
		}
		return Access{Verb: "delete", Resource: ResourceQuarantines, Namespace: ns, Name: name}, nil
	default:
		// Quarantines are raised by node agents.
		return Access{NodeAgent: true}, nil
	}
}

// cacheKey hashes its arguments' JSON, so that tokens are not kept in
// memory as map keys and a user's groups and extra are part of the key.
func cacheKey(v ...any) [32]byte {
	b, _ := json.Marshal(v) // strings, slices and maps of strings: cannot fail
	return sha256.Sum256(b)
}

// ttlCache is a bounded map whose entries expire after ttl.
type ttlCache[V any] struct {
	mu   sync.Mutex
	max  int
	ttl  time.Duration
	now  func() time.Time
	data map[[32]byte]ttlEntry[V]
}

type ttlEntry[V any] struct {
	v       V
	expires time.Time
}

func newTTLCache[V any](max int, ttl time.Duration, now func() time.Time) *ttlCache[V] {
	return &ttlCache[V]{max: max, ttl: ttl, now: now, data: map[[32]byte]ttlEntry[V]{}}
}

func (c *ttlCache[V]) get(k [32]byte) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.data[k]
	if !ok || !c.now().Before(e.expires) {
		var zero V
		return zero, false
	}
	return e.v, true
}

func (c *ttlCache[V]) put(k [32]byte, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if _, ok := c.data[k]; !ok && len(c.data) >= c.max {
		for k, e := range c.data {
			if !now.Before(e.expires) {
				delete(c.data, k)
			}
		}
		// Still full of live entries: drop any one (map order), which
		// costs that caller one more review, never a wrong answer.
		for k := range c.data {
			if len(c.data) < c.max {
				break
			}
			delete(c.data, k)
		}
	}
	c.data[k] = ttlEntry[V]{v: v, expires: now.Add(c.ttl)}
}

func (c *ttlCache[V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.data)
}
