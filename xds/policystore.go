package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
)

// policyStore owns the policy set and the RBAC compiled from it. Readers
// load an immutable policyState without a lock; set and dropCompiled
// derive the next state from the current one under mu, so concurrent
// setters never lose each other's update.
type policyStore struct {
	root string
	mu   sync.Mutex // serialises writers
	cur  atomic.Pointer[policyState]
}

// policyState is one immutable version of the policies with the compile
// cache that lives as long as the policies it was built from.
type policyState struct {
	policies *policy.Set
	// fp fingerprints each policy by policyKey; scope says which workloads
	// it can apply to.
	fp    map[string]string
	scope map[string]policyScope
	cache *compileCache
}

// policyScope is the set of workloads one policy can apply to: those of
// namespace (every namespace for the root namespace) that sel matches
// (every one when whole).
type policyScope struct {
	namespace string
	sel       *policy.WorkloadSelector
	whole     bool
}

func newPolicyStore(root string, set *policy.Set) *policyStore {
	p := &policyStore{root: root}
	p.cur.Store(newPolicyState(set, &compileCache{m: map[string]compileResult{}}))
	return p
}

func newPolicyState(set *policy.Set, cache *compileCache) *policyState {
	st := &policyState{policies: set, fp: map[string]string{}, scope: map[string]policyScope{}, cache: cache}
	for _, p := range set.Authorization {
		k := "authz/" + p.Metadata.Namespace + "/" + p.Metadata.Name
		st.fp[k] = fingerprint(p)
		// A policy attached by targetRef (or one of a future shape) is
		// scoped to its whole namespace: over-rebuilding is safe, missing
		// a node is not.
		st.scope[k] = policyScope{namespace: p.Metadata.Namespace, sel: p.Spec.Selector,
			whole: p.Spec.Selector == nil || p.Spec.TargetRef != nil || len(p.Spec.TargetRefs) > 0}
	}
	for _, p := range set.RequestAuthentication {
		k := "authn/" + p.Metadata.Namespace + "/" + p.Metadata.Name
		st.fp[k] = fingerprint(p)
		st.scope[k] = policyScope{namespace: p.Metadata.Namespace, sel: p.Spec.Selector,
			whole: p.Spec.Selector == nil || p.Spec.TargetRef != nil || len(p.Spec.TargetRefs) > 0}
	}
	return st
}

func (p *policyStore) load() *policyState { return p.cur.Load() }

// set swaps the policy set and returns the scopes of every policy added,
// removed or changed (old and new version). Compiled RBAC of namespaces
// none of them touched is kept (none when the root namespace's changed).
func (p *policyStore) set(set *policy.Set) []policyScope {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.cur.Load()
	probe := newPolicyState(set, nil)
	var changed []policyScope
	nss := map[string]bool{}
	for k, v := range probe.fp {
		if old.fp[k] != v {
			changed = append(changed, probe.scope[k])
			nss[probe.scope[k].namespace] = true
			if sc, ok := old.scope[k]; ok {
				changed = append(changed, sc)
			}
		}
	}
	for k, sc := range old.scope {
		if _, ok := probe.fp[k]; !ok {
			changed = append(changed, sc)
			nss[sc.namespace] = true
		}
	}
	if nss[p.root] {
		probe.cache = &compileCache{m: map[string]compileResult{}}
	} else {
		probe.cache = old.cache.keep(func(ns string) bool { return !nss[ns] })
	}
	p.cur.Store(probe)
	return changed
}

// dropCompiled keeps the policies and drops every compiled result (a key
// set the JWKS resolver serves changed; the benchmark's full recompute).
func (p *policyStore) dropCompiled() {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := p.cur.Load()
	p.cur.Store(&policyState{policies: old.policies, fp: old.fp, scope: old.scope, cache: &compileCache{m: map[string]compileResult{}}})
}

// selects reports whether sc can apply to a workload of namespace with
// labels; root is the root namespace.
func (sc policyScope) selects(root, namespace string, labels map[string]string) bool {
	if sc.namespace != namespace && sc.namespace != root {
		return false
	}
	return sc.whole || sc.sel.Matches(labels)
}

// compile returns the compiled RBAC for a workload, shared by every
// workload of the same namespace and labels.
func (st *policyState) compile(w *workload.Workload, opts policy.CompileOptions) compileResult {
	key := labelsKey(w.Namespace, w.Labels)
	if opts.JWTAuthn {
		key += "jwt" // Envoy: the RBAC reads jwt_authn's payload (no label entry lacks '=')
	}
	if r, ok := st.cache.get(key); ok {
		return r
	}
	c, err := policy.Compile(st.policies, policy.Target{Namespace: w.Namespace, Labels: w.Labels}, opts)
	r := compileResult{c: c, err: err}
	st.cache.put(key, r)
	return r
}

type compileResult struct {
	c   *policy.Compiled
	err error
}

// compileCache maps labelsKey (namespace first) to compiled RBAC. It is
// owned by the policyStates that share it: a state's cache is only ever
// handed, filtered, to the next state.
type compileCache struct {
	mu sync.Mutex
	m  map[string]compileResult
}

func (c *compileCache) get(k string) (compileResult, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.m[k]
	return r, ok
}

func (c *compileCache) put(k string, r compileResult) {
	c.mu.Lock()
	c.m[k] = r
	c.mu.Unlock()
}

// keep returns a new cache with the entries of the namespaces ok accepts.
func (c *compileCache) keep(ok func(ns string) bool) *compileCache {
	out := &compileCache{m: map[string]compileResult{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, v := range c.m {
		ns, _, _ := strings.Cut(k, "\x00")
		if ok(ns) {
			out.m[k] = v
		}
	}
	return out
}

func labelsKey(ns string, labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(ns)
	b.WriteByte(0)
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(labels[k])
		b.WriteByte(0)
	}
	return b.String()
}

func fingerprint(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Policies are plain data; report the failure as a value that
		// never equals a real fingerprint, so it counts as a change.
		return "error:" + err.Error()
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:16])
}
