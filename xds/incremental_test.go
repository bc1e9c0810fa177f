package xds

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sort"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
)

// incrWorld is the random world of TestIncrementalMatchesFromScratch:
// pods over three namespaces, services and policies, all mutated at
// random.
type incrWorld struct {
	rng      *rand.Rand
	reg      *workload.Registry
	services map[string]Service
	policies map[string]string // name -> YAML
	nextIP   int
}

var incrNamespaces = []string{"ns-a", "ns-b", "ns-c"}

func (iw *incrWorld) pod(ns string, i int) *workload.Workload {
	iw.nextIP++
	ips := []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(iw.nextIP >> 8), byte(iw.nextIP)})}
	if iw.rng.IntN(4) == 0 {
		ips = append(ips, netip.MustParseAddr(fmt.Sprintf("fd00::%x", iw.nextIP)))
	}
	return &workload.Workload{
		Namespace: ns, Name: fmt.Sprintf("pod-%d", i),
		ServiceAccount: fmt.Sprintf("sa-%d", iw.rng.IntN(2)),
		Labels:         map[string]string{"app": fmt.Sprintf("app-%d", iw.rng.IntN(3)), "tier": []string{"web", "db"}[iw.rng.IntN(2)]},
		IPs:            ips,
		Node:           fmt.Sprintf("node-%d", iw.rng.IntN(3)),
	}
}

func (iw *incrWorld) randomService() Service {
	ns := incrNamespaces[iw.rng.IntN(len(incrNamespaces))]
	sel := map[string]string{"app": fmt.Sprintf("app-%d", iw.rng.IntN(3))}
	if iw.rng.IntN(3) == 0 {
		sel["tier"] = "web"
	}
	return Service{Name: fmt.Sprintf("svc-%d", iw.rng.IntN(3)), Namespace: ns, Port: uint32(8080 + iw.rng.IntN(2)), Selector: sel}
}

func (iw *incrWorld) randomPolicy(name string) string {
	nss := append([]string{policy.DefaultRootNamespace}, incrNamespaces...)
	ns := nss[iw.rng.IntN(len(nss))]
	selector := ""
	if iw.rng.IntN(3) > 0 {
		selector = fmt.Sprintf("\n  selector: {matchLabels: {app: app-%d}}", iw.rng.IntN(3))
	}
	action := []string{"ALLOW", "DENY"}[iw.rng.IntN(2)]
	return fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: AuthorizationPolicy
metadata: {name: %s, namespace: %s}
spec:%s
  action: %s
  rules:
  - from: [{source: {principals: ["cluster.local/ns/ns-a/sa/sa-%d"]}}]
    to: [{operation: {paths: ["/p%d"]}}]
`, name, ns, selector, action, iw.rng.IntN(2), iw.rng.IntN(100))
}

func (iw *incrWorld) serviceList() []Service {
	out := make([]Service, 0, len(iw.services))
	for _, s := range iw.services {
		out = append(out, s)
	}
	return out
}

func (iw *incrWorld) policySet(t *testing.T) *policy.Set {
	names := make([]string, 0, len(iw.policies))
	for n := range iw.policies {
		names = append(names, n)
	}
	sort.Strings(names)
	var docs []string
	for _, n := range names {
		docs = append(docs, iw.policies[n])
	}
	if len(docs) == 0 {
		return &policy.Set{}
	}
	return mustPolicies(t, strings.Join(docs, "---\n"))
}

// step makes one random change to the registry, the services or the
// policies; it returns which ("registry", "services", "policies").
func (iw *incrWorld) step(t *testing.T) string {
	ws := iw.reg.List()
	switch r := iw.rng.IntN(10); {
	case r < 6 && len(ws) > 0:
		w := ws[iw.rng.IntN(len(ws))]
		c := *w
		switch iw.rng.IntN(5) {
		case 0:
			iw.reg.Delete(w.Namespace, w.Name)
			return "registry"
		case 1:
			c.Labels = map[string]string{"app": fmt.Sprintf("app-%d", iw.rng.IntN(3)), "tier": w.Labels["tier"]}
		case 2:
			c.IPs = iw.pod(w.Namespace, 0).IPs
		case 3:
			c.ServiceAccount = fmt.Sprintf("sa-%d", iw.rng.IntN(2))
		case 4:
			c.Node = fmt.Sprintf("node-%d", iw.rng.IntN(3)) // changes nothing xDS serves
		}
		iw.reg.Upsert(&c)
		return "registry"
	case r < 7:
		ns := incrNamespaces[iw.rng.IntN(len(incrNamespaces))]
		iw.reg.Upsert(iw.pod(ns, iw.rng.IntN(12)))
		return "registry"
	case r < 8:
		s := iw.randomService()
		k := s.Key()
		if _, ok := iw.services[k]; ok && iw.rng.IntN(2) == 0 {
			delete(iw.services, k)
		} else {
			iw.services[k] = s
		}
		return "services"
	default:
		name := fmt.Sprintf("p-%d", iw.rng.IntN(6))
		if _, ok := iw.policies[name]; ok && iw.rng.IntN(3) == 0 {
			delete(iw.policies, name)
		} else {
			iw.policies[name] = iw.randomPolicy(name)
		}
		return "policies"
	}
}

// reference builds n's snapshot from scratch: services filtered and
// endpoints found by scanning the registry, RBAC compiled afresh; no
// index, cache or earlier state of the server is used.
func reference(t *testing.T, reg *workload.Registry, services []Service, set *policy.Set, n *node, requested []string) string {
	t.Helper()
	checked, err := checkServices(services)
	if err != nil {
		t.Fatal(err)
	}
	_, pod, _ := strings.Cut(n.id, "/")
	w, ok := reg.ByPod(n.ns, pod)
	version := func(h string) string { return "ref" }
	if !ok || w.ServiceAccount != n.serviceAccount {
		_, hash, _, err := makeSnapshot(resources{}, nil, version)
		if err != nil {
			t.Fatal(err)
		}
		return hash
	}
	var own []*Service
	for _, s := range checked {
		if s.Namespace == w.Namespace {
			own = append(own, s)
		}
	}
	opts := policy.CompileOptions{RootNamespace: policy.DefaultRootNamespace, TrustDomain: testTD, JWTAuthn: n.kind == KindEnvoy}
	c, cerr := policy.Compile(set, policy.Target{Namespace: w.Namespace, Labels: w.Labels}, opts)
	in := &buildInput{
		workload: w, kind: n.kind, requested: requested, services: own,
		resolve: func(target string) *Service { return resolveService(target, checked) },
		endpoints: func(s *Service) []*workload.Workload {
			var out []*workload.Workload
			for _, x := range reg.List() {
				if s.Selects(x) {
					out = append(out, x)
				}
			}
			return out
		},
		compiled: c, compileErr: cerr,
		opts: buildOptions{trustDomain: testTD, certProvider: DefaultCertProviderInstance},
	}
	b, err := build(in, version)
	if err != nil {
		t.Fatal(err)
	}
	return b.hash
}

// TestIncrementalMatchesFromScratch: after random sequences of pod,
// service and policy changes, each applied as the server applies them
// (registry changes through the endpoint index, only the marked nodes
// rebuilt), every connected node's snapshot equals one built from
// scratch.
func TestIncrementalMatchesFromScratch(t *testing.T) {
	t.Parallel()
	for seed := range uint64(8) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Parallel()
			iw := &incrWorld{rng: rand.New(rand.NewPCG(seed, 14)), reg: workload.NewRegistry(), services: map[string]Service{}, policies: map[string]string{}}
			for _, ns := range incrNamespaces {
				for i := range 8 {
					iw.reg.Upsert(iw.pod(ns, i))
				}
			}
			for range 4 {
				s := iw.randomService()
				iw.services[s.Key()] = s
			}
			for i := range 3 {
				name := fmt.Sprintf("p-%d", i)
				iw.policies[name] = iw.randomPolicy(name)
			}
			srv, err := New(Config{Registry: iw.reg, TrustDomain: testTD, AllowUnauthenticated: true,
				Services: iw.serviceList(), Policies: iw.policySet(t), Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			// Connect a node for 2 of every 3 pods, a third of them Envoy;
			// each asks for its server listener and dials two targets (one
			// of which may not exist yet).
			var streamID int64
			for _, w := range iw.reg.List() {
				if iw.rng.IntN(3) == 0 {
					continue
				}
				streamID++
				srv.nodes.openStream(streamID, &stream{nonces: map[string]sent{}})
				cn := &corev3.Node{Id: w.Key()}
				if iw.rng.IntN(3) == 0 {
					cn.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{ProxyMetadataKey: structpb.NewStringValue(string(KindEnvoy))}}
				}
				names := []string{ServerListenerPrefix + netip.AddrPortFrom(w.IPs[0], 8080).String()}
				for range 2 {
					s := iw.randomService()
					names = append(names, fmt.Sprintf("%s.%s:%d", s.Name, s.Namespace, s.Port))
				}
				if _, err := srv.onRequest(streamID, cn, "", nil, &listenerUpdate{replace: true, subscribe: names}); err != nil {
					t.Fatal(err)
				}
			}
			for round := range 40 {
				var kinds []string
				for range 1 + iw.rng.IntN(5) {
					k := iw.step(t)
					kinds = append(kinds, k)
					switch k {
					case "services":
						if err := srv.SetServices(iw.serviceList()); err != nil {
							t.Fatal(err)
						}
					case "policies":
						srv.SetPolicies(iw.policySet(t))
					}
				}
				srv.onRegistryChange()
				srv.push(ctx, srv.debounce.take())
				set := iw.policySet(t)
				for _, n := range srv.nodes.inNamespace("") {
					req := srv.nodes.requestedNames(n)
					sort.Strings(req)
					want := reference(t, iw.reg, iw.serviceList(), set, n, req)
					n.mu.Lock()
					got := n.hash
					n.mu.Unlock()
					if got != want {
						t.Fatalf("round %d (%v): node %s (%s): incremental snapshot %s, from scratch %s", round, kinds, n.id, n.kind, got, want)
					}
				}
			}
		})
	}
}
