package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	sigyaml "sigs.k8s.io/yaml"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RunWorkloads keeps reg in sync with the Pods of the cluster (or only
// those scheduled on node, when set: the node agent watches its own node).
// It returns once the initial list is in the registry; updates continue
// until ctx ends.
func RunWorkloads(ctx context.Context, c *Clients, reg *workload.Registry, node string) error {
	opts := []informers.SharedInformerOption{}
	if node != "" {
		opts = append(opts, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
		}))
	}
	f := informers.NewSharedInformerFactoryWithOptions(c.Kube, 0, opts...)
	inf := f.Core().V1().Pods().Informer()
	upsert := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		if w := WorkloadFromPod(p); w != nil {
			reg.Upsert(w)
		} else {
			reg.Delete(p.Namespace, p.Name)
		}
	}
	h, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: upsert,
		UpdateFunc: func(o, n any) {
			// Most pod updates are status churn (conditions, container
			// states) that change nothing a workload holds: skipping them
			// keeps the registry's version, and so the caches readers keep
			// per version (dnsguard, egress, xds).
			op, ok1 := o.(*corev1.Pod)
			np, ok2 := n.(*corev1.Pod)
			if ok1 && ok2 && WorkloadFromPod(op).Equal(WorkloadFromPod(np)) {
				return
			}
			upsert(n)
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				reg.Delete(p.Namespace, p.Name)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("kube: %w", err)
	}
	f.Start(ctx.Done())
	// The handler's HasSynced, not the informer's: the informer's store
	// fills before the handler has seen every initial add.
	if !cache.WaitForCacheSync(ctx.Done(), h.HasSynced) {
		return fmt.Errorf("kube: pod informer did not sync")
	}
	return nil
}

// GVRs of kordon's CRDs.
var (
	AuthorizationPolicyGVR   = schema.GroupVersionResource{Group: "security.kordon.dev", Version: "v1", Resource: "authorizationpolicies"}
	EgressPolicyGVR          = schema.GroupVersionResource{Group: "security.kordon.dev", Version: "v1", Resource: "egresspolicies"}
	RequestAuthenticationGVR = schema.GroupVersionResource{Group: "security.kordon.dev", Version: "v1", Resource: "requestauthentications"}
)

// GVRs of Istio's CRDs, watched with PolicySource.Istio.
var (
	IstioAuthorizationPolicyGVR   = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	IstioRequestAuthenticationGVR = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "requestauthentications"}
)

// PolicySource watches the policy CRDs and delivers a validated Set on
// every change. An object that fails validation changes nothing: its last
// good version (if any) stays in the set, and, when WriteStatus is on, its
// status gets Compiled=False with the error.
type PolicySource struct {
	Clients *Clients
	// OnChange receives each new set (called from one goroutine).
	OnChange func(*policy.Set)
	// WriteStatus updates status conditions (the leader only).
	WriteStatus func() bool
	// RootNamespace for status "appliesTo" (default kordon-system).
	RootNamespace string
	// EgressOnly watches only EgressPolicies (the node agent).
	EgressOnly bool
	// Istio also watches Istio's AuthorizationPolicies and
	// RequestAuthentications (security.istio.io/v1; their CRDs must be
	// installed), decoded by the same strict decoder as kordon's. kordon
	// writes no status on Istio's objects: their status schema is
	// Istio's.
	Istio  bool
	Logger *slog.Logger

	mu       sync.Mutex
	lastGood map[string]*policy.Set // kind/ns/name -> that object's last valid parse
	objects  map[string]*unstructured.Unstructured
	kick     chan struct{}
}

// Run starts the informers and blocks until ctx ends (then it returns
// nil). The first set is delivered after the initial list.
func (s *PolicySource) Run(ctx context.Context, synced chan<- struct{}) error {
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	if s.RootNamespace == "" {
		s.RootNamespace = policy.DefaultRootNamespace
	}
	s.lastGood = map[string]*policy.Set{}
	s.objects = map[string]*unstructured.Unstructured{}
	s.kick = make(chan struct{}, 1)
	f := dynamicinformer.NewDynamicSharedInformerFactory(s.Clients.Dynamic, 0)
	gvrs := []schema.GroupVersionResource{EgressPolicyGVR}
	if !s.EgressOnly {
		gvrs = append(gvrs, AuthorizationPolicyGVR, RequestAuthenticationGVR)
		if s.Istio {
			gvrs = append(gvrs, IstioAuthorizationPolicyGVR, IstioRequestAuthenticationGVR)
		}
	}
	var syncs []cache.InformerSynced
	for _, gvr := range gvrs {
		inf := f.ForResource(gvr).Informer()
		_, err := inf.AddEventHandler(unstructuredHandler(s.set, func(u *unstructured.Unstructured) {
			s.mu.Lock()
			delete(s.objects, key(u))
			delete(s.lastGood, key(u))
			s.mu.Unlock()
			poke(s.kick)
		}))
		if err != nil {
			return err
		}
		syncs = append(syncs, inf.HasSynced)
	}
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), syncs...) {
		if ctx.Err() != nil {
			return nil // stopped before the first list: not a failure
		}
		return fmt.Errorf("kube: policy informers did not sync")
	}
	serveKicks(ctx, s.kick, synced, func() { s.rebuild(ctx) })
	return nil
}

// key names an object: kind/namespace/name, with the API group for
// Istio's objects (an Istio and a kordon policy of the same name are two
// objects).
func key(u *unstructured.Unstructured) string {
	if group := u.GroupVersionKind().Group; group != AuthorizationPolicyGVR.Group {
		return u.GetKind() + "." + group + "/" + u.GetNamespace() + "/" + u.GetName()
	}
	return u.GetKind() + "/" + u.GetNamespace() + "/" + u.GetName()
}

func (s *PolicySource) set(u *unstructured.Unstructured) {
	s.mu.Lock()
	s.objects[key(u)] = u.DeepCopy()
	s.mu.Unlock()
	poke(s.kick)
}

// rebuild parses every object with the same strict decoder as
// `kordon policy check`, so errors read the same.
func (s *PolicySource) rebuild(ctx context.Context) {
	s.mu.Lock()
	keys := make([]string, 0, len(s.objects))
	for k := range s.objects {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	set := &policy.Set{}
	type result struct {
		u   *unstructured.Unstructured
		err error
	}
	var results []result
	for _, k := range keys {
		u := s.objects[k]
		parsed, err := parseObject(u)
		if err == nil {
			s.lastGood[k] = parsed
		}
		if good := s.lastGood[k]; good != nil {
			if u.GroupVersionKind().Group != AuthorizationPolicyGVR.Group && s.objects[u.GetKind()+"/"+u.GetNamespace()+"/"+u.GetName()] != nil {
				good = renamedIstio(good)
			}
			set.Authorization = append(set.Authorization, good.Authorization...)
			set.Egress = append(set.Egress, good.Egress...)
			set.RequestAuthentication = append(set.RequestAuthentication, good.RequestAuthentication...)
		}
		results = append(results, result{u, err})
	}
	s.mu.Unlock()
	if s.OnChange != nil {
		s.OnChange(set)
	}
	if s.WriteStatus != nil && s.WriteStatus() {
		for _, r := range results {
			if err := s.writeStatus(ctx, r.u, r.err); err != nil {
				s.Logger.Warn("policy status update failed", "kind", r.u.GetKind(), "namespace", r.u.GetNamespace(), "name", r.u.GetName(), "error", err)
			}
		}
	}
}

// renamedIstio is the parse of an Istio object that has a kordon object
// of the same kind, namespace and name: both stay in force (dropping
// either could drop a DENY), and the Istio one's name gets the suffix
// ".security.istio.io" so their compiled rules do not overwrite each
// other's (Envoy RBAC policies are keyed by name).
func renamedIstio(set *policy.Set) *policy.Set {
	out := &policy.Set{}
	for _, p := range set.Authorization {
		c := *p
		c.Metadata.Name += "." + IstioAuthorizationPolicyGVR.Group
		out.Authorization = append(out.Authorization, &c)
	}
	for _, p := range set.RequestAuthentication {
		c := *p
		c.Metadata.Name += "." + IstioRequestAuthenticationGVR.Group
		out.RequestAuthentication = append(out.RequestAuthentication, &c)
	}
	return out
}

// parseObject converts an object back to YAML and runs the strict
// decoder; positions refer to that rendering, and the file is named
// kind/namespace/name.
func parseObject(u *unstructured.Unstructured) (*policy.Set, error) {
	obj := map[string]any{"apiVersion": u.GetAPIVersion(), "kind": u.GetKind(),
		"metadata": map[string]any{"name": u.GetName(), "namespace": u.GetNamespace()}}
	if spec, ok := u.Object["spec"]; ok {
		obj["spec"] = spec
	}
	j, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	y, err := sigyaml.JSONToYAML(j)
	if err != nil {
		return nil, err
	}
	return policy.Parse(key(u), y, policy.LoadOptions{})
}

// writeStatus sets the Compiled condition (on kordon's objects only).
func (s *PolicySource) writeStatus(ctx context.Context, u *unstructured.Unstructured, perr error) error {
	if u.GroupVersionKind().Group != AuthorizationPolicyGVR.Group {
		return nil // Istio's status schema is Istio's
	}
	cond := map[string]any{"type": "Compiled", "status": "True", "reason": "Compiled", "message": "the policy is valid and in force",
		"observedGeneration": u.GetGeneration()}
	if perr != nil {
		cond["status"], cond["reason"], cond["message"] = "False", "Invalid", perr.Error()
		s.mu.Lock()
		if s.lastGood[key(u)] != nil {
			cond["message"] = perr.Error() + " (the previous valid version stays in force)"
		}
		s.mu.Unlock()
	}
	applies := "namespace " + u.GetNamespace()
	if u.GetNamespace() == s.RootNamespace {
		applies = "mesh-wide (root namespace)"
	}
	old, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	now := time.Now().UTC().Format(time.RFC3339)
	cond["lastTransitionTime"] = now
	for _, o := range old {
		if m, ok := o.(map[string]any); ok && m["type"] == "Compiled" {
			if m["status"] == cond["status"] && m["message"] == cond["message"] && fmt.Sprint(m["observedGeneration"]) == fmt.Sprint(cond["observedGeneration"]) {
				return nil // unchanged: do not write
			}
			if m["status"] == cond["status"] {
				cond["lastTransitionTime"] = m["lastTransitionTime"]
			}
		}
	}
	gvr := AuthorizationPolicyGVR
	switch u.GetKind() {
	case policy.KindEgressPolicy:
		gvr = EgressPolicyGVR
	case policy.KindRequestAuthentication:
		gvr = RequestAuthenticationGVR
	}
	cur := u.DeepCopy()
	if err := unstructured.SetNestedField(cur.Object, map[string]any{
		"observedGeneration": u.GetGeneration(), "appliesTo": applies, "conditions": []any{cond},
	}, "status"); err != nil {
		return err
	}
	_, err := s.Clients.Dynamic.Resource(gvr).Namespace(u.GetNamespace()).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
	return err
}
