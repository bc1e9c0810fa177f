package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/policy"
)

// JWKSResolver resolves a RequestAuthentication jwksUri to the key set
// the control plane fetched. An Envoy provider whose jwksUri it resolves
// gets the keys inline; otherwise Envoy fetches them itself (remote_jwks
// through a kordon-jwks cluster).
type JWKSResolver interface {
	JWKS(uri string) (jwks string, ok bool)
}

// JWKSFetcherConfig configures a JWKSFetcher.
type JWKSFetcherConfig struct {
	// Client fetches the key sets; default a client with a 10s timeout.
	Client *http.Client
	// Refresh is how often every known jwksUri is fetched again (key
	// rotation). Default 5 minutes.
	Refresh time.Duration
	// OnChange is called, off the fetch loop's lock, when a key set is
	// fetched for the first time or changes (wire it to
	// Server.JWKSChanged).
	OnChange func()
	// Logger receives fetch failures; default slog.Default().
	Logger *slog.Logger
}

// JWKSFetcher fetches the key sets of the jwksUris asked for, as istiod
// does, and keeps them fresh. A failed fetch keeps the last good set (or
// none, and Envoy fetches it itself). SetPolicies tells it which URIs the
// policies still reference: the others stop being fetched and their keys
// are dropped, so a removed RequestAuthentication leaves no polling
// behind and no stale keys for a later one naming the same URI.
type JWKSFetcher struct {
	cfg    JWKSFetcherConfig
	wake   chan struct{}
	mu     sync.Mutex
	sets   map[string]string // uri -> JWKS JSON
	wanted map[string]bool
}

// SetPolicies makes the jwksUris of set's RequestAuthentications
// (policy.Set.JWKSURIs) the only ones fetched: new ones are fetched at
// once, the keys of the others are forgotten. Call it before handing the
// same set to the xDS server, so its first build finds the fetch under
// way.
func (f *JWKSFetcher) SetPolicies(set *policy.Set) {
	keep := map[string]bool{}
	for _, u := range set.JWKSURIs() {
		if _, err := policy.ParseJWKSURI(u); err == nil {
			keep[u] = true
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	added := false
	for u := range keep {
		if !f.wanted[u] {
			added = true
		}
	}
	for u := range f.sets {
		if !keep[u] {
			delete(f.sets, u)
		}
	}
	f.wanted = keep
	if added {
		f.kick()
	}
}

// URIs returns the jwksUris being fetched, sorted.
func (f *JWKSFetcher) URIs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.wanted))
	for u := range f.wanted {
		out = append(out, u)
	}
	sort.Strings(out)
	return out
}

// kick wakes the fetch loop; f.mu is held.
func (f *JWKSFetcher) kick() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

var _ JWKSResolver = (*JWKSFetcher)(nil)

// NewJWKSFetcher returns a fetcher; Run fetches.
func NewJWKSFetcher(cfg JWKSFetcherConfig) *JWKSFetcher {
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 5 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &JWKSFetcher{cfg: cfg, wake: make(chan struct{}, 1), sets: map[string]string{}, wanted: map[string]bool{}}
}

// JWKS returns the fetched key set of uri; on a miss it asks the fetch
// loop for it and reports false. A URI policy.ParseJWKSURI rejects is
// never fetched.
func (f *JWKSFetcher) JWKS(uri string) (string, bool) {
	if _, err := policy.ParseJWKSURI(uri); err != nil {
		return "", false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.sets[uri]; ok {
		return s, true
	}
	if !f.wanted[uri] {
		f.wanted[uri] = true
		f.kick()
	}
	return "", false
}

// Run fetches the wanted key sets when asked and every Refresh, until ctx
// ends.
func (f *JWKSFetcher) Run(ctx context.Context) {
	t := time.NewTicker(f.cfg.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		case <-t.C:
		}
		f.fetchAll(ctx)
	}
}

func (f *JWKSFetcher) fetchAll(ctx context.Context) {
	f.mu.Lock()
	uris := make([]string, 0, len(f.wanted))
	for u := range f.wanted {
		uris = append(uris, u)
	}
	f.mu.Unlock()
	changed := false
	for _, u := range uris {
		s, err := f.fetch(ctx, u)
		if err != nil {
			f.cfg.Logger.Warn("jwks fetch failed", "uri", u, "error", err)
			continue
		}
		f.mu.Lock()
		// A URI SetPolicies dropped while it was being fetched stays
		// dropped.
		if f.wanted[u] && f.sets[u] != s {
			f.sets[u] = s
			changed = true
		}
		f.mu.Unlock()
	}
	if changed && f.cfg.OnChange != nil {
		f.cfg.OnChange()
	}
}

// maxJWKSBytes bounds a key set read from the network.
const maxJWKSBytes = 1 << 20

func (f *JWKSFetcher) fetch(ctx context.Context, uri string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return "", err
	}
	resp, err := f.cfg.Client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return "", err
	}
	if len(b) > maxJWKSBytes {
		return "", errors.New("key set larger than 1 MiB")
	}
	if !policy.IsJWKS(b) {
		return "", errors.New("not a JSON Web Key Set")
	}
	return string(b), nil
}
