package xds

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/policy"
)

// jwksServer serves a key set per path and counts the fetches.
type jwksServer struct {
	mu   sync.Mutex
	hits map[string]int
	body map[string]string
}

func (s *jwksServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hits[r.URL.Path]++
	b, ok := s.body[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	fmt.Fprint(w, b)
}

func (s *jwksServer) count(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[path]
}

func (s *jwksServer) set(path, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body[path] = body
}

// raSet is a policy set with one RequestAuthentication per jwksUri.
func raSet(uris ...string) *policy.Set {
	set := &policy.Set{}
	for i, u := range uris {
		set.RequestAuthentication = append(set.RequestAuthentication, &policy.RequestAuthentication{
			Metadata: policy.ObjectMeta{Name: fmt.Sprintf("ra%d", i), Namespace: "foo"},
			Spec:     policy.RequestAuthenticationSpec{JWTRules: []policy.JWTRule{{Issuer: "i", JWKSURI: u}}},
		})
	}
	return set
}

func jwksWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, not synchronising
	}
}

// TestJWKSFetcherForgetsURIs: a jwksUri no RequestAuthentication names
// any more stops being fetched and its keys are dropped; named again, it
// is fetched afresh (the old keys are not served in between).
func TestJWKSFetcherForgetsURIs(t *testing.T) {
	t.Parallel()
	js := &jwksServer{hits: map[string]int{}, body: map[string]string{"/a": `{"keys":[{"kid":"a"}]}`, "/b": `{"keys":[{"kid":"b1"}]}`}}
	hs := httptest.NewServer(js)
	defer hs.Close()
	a, b := hs.URL+"/a", hs.URL+"/b"

	f := NewJWKSFetcher(JWKSFetcherConfig{Client: hs.Client(), Refresh: 10 * time.Millisecond, Logger: testLogger(t)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	defer func() { cancel(); <-done }()

	f.SetPolicies(raSet(a, b))
	jwksWaitFor(t, "both key sets", func() bool {
		_, okA := f.JWKS(a)
		_, okB := f.JWKS(b)
		return okA && okB
	})

	f.SetPolicies(raSet(a))
	if got := f.URIs(); !reflect.DeepEqual(got, []string{a}) {
		t.Fatalf("URIs after dropping b: %v", got)
	}
	f.mu.Lock()
	_, kept := f.sets[b]
	f.mu.Unlock()
	if kept {
		t.Fatal("keys of b kept after no policy names it")
	}
	// Two refreshes of a after the drop: a fetch of b that was in flight
	// has finished; from then on b is never fetched again.
	hitsA := js.count("/a")
	jwksWaitFor(t, "two refreshes of a", func() bool { return js.count("/a") >= hitsA+2 })
	hitsB, hitsA := js.count("/b"), js.count("/a")
	jwksWaitFor(t, "three more refreshes of a", func() bool { return js.count("/a") >= hitsA+3 })
	if n := js.count("/b"); n != hitsB {
		t.Fatalf("b fetched %d more times after no policy names it", n-hitsB)
	}
	f.mu.Lock()
	_, kept = f.sets[b]
	f.mu.Unlock()
	if kept {
		t.Fatal("keys of b stored again by a late fetch")
	}

	// b's keys rotate while nobody uses it; named again, the old ones
	// are never served.
	js.set("/b", `{"keys":[{"kid":"b2"}]}`)
	f.SetPolicies(raSet(a, b))
	if s, ok := f.JWKS(b); ok {
		t.Fatalf("stale keys of b served right after it came back: %s", s)
	}
	jwksWaitFor(t, "b's new keys", func() bool { s, ok := f.JWKS(b); return ok && s == `{"keys":[{"kid":"b2"}]}` })
}

// TestJWKSFetcherRejectsWhatPolicyRejects: a jwksUri policy.ParseJWKSURI
// refuses (here Istio's accepted but host-less http://:PORT, which would
// dial the control plane's own loopback) is never fetched.
func TestJWKSFetcherRejectsWhatPolicyRejects(t *testing.T) {
	t.Parallel()
	f := NewJWKSFetcher(JWKSFetcherConfig{Logger: testLogger(t)})
	for _, u := range []string{"http://:8080/x", "ftp://issuer.example/k", "https://issuer.example:99999/k"} {
		if _, ok := f.JWKS(u); ok {
			t.Fatalf("%s resolved", u)
		}
		f.SetPolicies(raSet(u))
		if got := f.URIs(); len(got) != 0 {
			t.Fatalf("%s is fetched: %v", u, got)
		}
	}
}
