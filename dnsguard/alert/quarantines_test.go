package alert

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
)

// fakeQuarantines is a QuarantineStore over a map of namespace/name.
type fakeQuarantines struct {
	mu  sync.Mutex
	qs  map[string]ClusterQuarantine
	err error
}

func (f *fakeQuarantines) List(_ context.Context, ns string) ([]ClusterQuarantine, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	var out []ClusterQuarantine
	for _, q := range f.qs {
		if ns == "" || q.Namespace == ns {
			out = append(out, q)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (f *fakeQuarantines) Lift(_ context.Context, ns, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	if _, ok := f.qs[ns+"/"+name]; !ok {
		return ErrNoQuarantine
	}
	delete(f.qs, ns+"/"+name)
	return nil
}

func TestQuarantineHandlerBehindAuth(t *testing.T) {
	t.Parallel()
	store := &fakeQuarantines{qs: map[string]ClusterQuarantine{}}
	for _, id := range []string{"shop/worker-a", "shop/batch-b", "bank/teller-c"} {
		ns, name, _ := strings.Cut(id, "/")
		store.qs[id] = ClusterQuarantine{ID: id, Namespace: ns, Name: name, Domain: name + ".example"}
	}
	tokens := &fakeTokens{users: map[string]User{"viewer": {Name: "alice"}, "nobody": {Name: "bob"}}}
	rbac := &fakeRBAC{allow: map[string]bool{"alice list quarantines shop": true, "alice delete quarantines shop": true}}
	auth, err := NewAuth(AuthConfig{Tokens: tokens, Authorizer: rbac})
	if err != nil {
		t.Fatal(err)
	}
	h := auth.Wrap(QuarantineHandler(store), QuarantineRule)
	do := func(method, target, token string) (int, string) {
		r := httptest.NewRequest(method, target, nil)
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	code, body := do(http.MethodGet, "/v1/quarantines?namespace=shop", "viewer")
	var got struct{ Quarantines []ClusterQuarantine }
	if err := json.Unmarshal([]byte(body), &got); code != 200 || err != nil {
		t.Fatalf("list shop: %d %s %v", code, body, err)
	}
	if len(got.Quarantines) != 2 || got.Quarantines[0].ID != "shop/batch-b" || got.Quarantines[1].ID != "shop/worker-a" {
		t.Fatalf("list shop: %s", body)
	}
	for _, tc := range []struct {
		method, target, token string
		status                int
		want                  string
	}{
		{http.MethodGet, "/v1/quarantines?namespace=shop", "", 401, "authentication required"},
		{http.MethodGet, "/v1/quarantines?namespace=shop", "nobody", 403, `cannot list quarantines.security.kordon.dev in namespace shop`},
		{http.MethodGet, "/v1/quarantines", "viewer", 403, "cannot list quarantines.security.kordon.dev at the cluster scope"},
		{http.MethodGet, "/v1/quarantines?namespace=bank", "viewer", 403, "in namespace bank"},
		{http.MethodDelete, "/v1/quarantines/bank/teller-c", "viewer", 403, "cannot delete quarantines.security.kordon.dev teller-c in namespace bank"},
		{http.MethodDelete, "/v1/quarantines/shop/worker-a", "nobody", 403, "cannot delete"},
		{http.MethodDelete, "/v1/quarantines/shop/worker-a", "", 401, "authentication required"},
		{http.MethodDelete, "/v1/quarantines/shop/worker-a", "viewer", 204, ""},
		{http.MethodDelete, "/v1/quarantines/shop/worker-a", "viewer", 404, "no such quarantine"},
	} {
		code, body := do(tc.method, tc.target, tc.token)
		if code != tc.status || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s (token %q): %d %s, want %d %q", tc.method, tc.target, tc.token, code, body, tc.status, tc.want)
		}
	}
	if _, ok := store.qs["shop/worker-a"]; ok {
		t.Error("the lift left the quarantine")
	}
	if _, ok := store.qs["bank/teller-c"]; !ok {
		t.Error("a refused lift removed the quarantine")
	}
	store.err = errors.New("apiserver down")
	if code, body := do(http.MethodGet, "/v1/quarantines?namespace=shop", "viewer"); code != http.StatusBadGateway || !strings.Contains(body, "apiserver down") {
		t.Errorf("store failing: %d %s", code, body)
	}
}
