package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/policy"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// QuarantinedPod is what one pod of this node may no longer reach, by the
// Quarantines that select it.
type QuarantinedPod struct {
	Namespace, Pod string
	IPs            []netip.Addr
	// Domains and Addresses blocked, each with the Quarantine (ns/name)
	// that blocks it.
	Domains   map[string]string
	Addresses map[netip.Addr]string
}

// QuarantineWatcher follows every Quarantine of the cluster and the pods
// of one node, and hands the node's enforcement to Apply after each
// change: a pod created after the Quarantine, or rescheduled here from
// another node, is covered as soon as it is known.
type QuarantineWatcher struct {
	Clients *Clients
	Node    string
	// Apply receives the complete set after each change (from one
	// goroutine). An error is logged and the set applied again 5 s later.
	Apply  func([]QuarantinedPod) error
	Logger *slog.Logger

	mu    sync.Mutex
	pods  map[string]podInfo // ns/name
	quars map[string]quarantine
	kick  chan struct{}
}

type podInfo struct {
	ns, name, sa, ownerKind, ownerName string
	ips                                []netip.Addr
}

type quarantine struct {
	ns, name string
	spec     policy.QuarantineSpec
}

// PodOwner is the top controller of p: a ReplicaSet made by a Deployment
// (its name is the Deployment's plus the pod-template-hash label) counts
// as that Deployment. A pod without a controller has none.
func PodOwner(p *corev1.Pod) (kind, name string) {
	ref := metav1.GetControllerOf(p)
	if ref == nil {
		return "", ""
	}
	if h := p.Labels["pod-template-hash"]; ref.Kind == "ReplicaSet" && h != "" && strings.HasSuffix(ref.Name, "-"+h) {
		return "Deployment", strings.TrimSuffix(ref.Name, "-"+h)
	}
	return ref.Kind, ref.Name
}

func (q *quarantine) selects(p *podInfo) bool {
	if q.ns != p.ns {
		return false
	}
	if o := q.spec.Owner; o != nil {
		if o.Kind == "Pod" {
			return o.Name == p.name
		}
		return o.Kind == p.ownerKind && o.Name == p.ownerName
	}
	return q.spec.ServiceAccount != "" && q.spec.ServiceAccount == p.sa
}

// Owner implements Owners for the pods of this node.
func (w *QuarantineWatcher) Owner(namespace, pod string) (kind, name, serviceAccount string, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p, ok := w.pods[namespace+"/"+pod]
	return p.ownerKind, p.ownerName, p.sa, ok
}

// Run starts the informers, applies once they have synced (then closes
// synced, if not nil) and again after every change, until ctx ends.
func (w *QuarantineWatcher) Run(ctx context.Context, synced chan<- struct{}) error {
	if w.Logger == nil {
		w.Logger = slog.Default()
	}
	w.pods, w.quars, w.kick = map[string]podInfo{}, map[string]quarantine{}, make(chan struct{}, 1)
	pf := informers.NewSharedInformerFactoryWithOptions(w.Clients.Kube, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", w.Node).String()
	}))
	pinf := pf.Core().V1().Pods().Informer()
	ph, err := pinf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.setPod,
		UpdateFunc: func(_, o any) { w.setPod(o) },
		DeleteFunc: func(o any) {
			if p, ok := tombstone(o).(*corev1.Pod); ok {
				w.mu.Lock()
				delete(w.pods, p.Namespace+"/"+p.Name)
				w.mu.Unlock()
				poke(w.kick)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("kube: %w", err)
	}
	qf := dynamicinformer.NewDynamicSharedInformerFactory(w.Clients.Dynamic, 0)
	qinf := qf.ForResource(QuarantineGVR).Informer()
	qh, err := qinf.AddEventHandler(unstructuredHandler(w.setQuarantine, func(u *unstructured.Unstructured) {
		w.mu.Lock()
		delete(w.quars, u.GetNamespace()+"/"+u.GetName())
		w.mu.Unlock()
		poke(w.kick)
	}))
	if err != nil {
		return fmt.Errorf("kube: %w", err)
	}
	pf.Start(ctx.Done())
	qf.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), ph.HasSynced, qh.HasSynced) {
		return fmt.Errorf("kube: quarantine informers did not sync")
	}
	serveKicks(ctx, w.kick, synced, w.apply)
	return nil
}

func (w *QuarantineWatcher) setPod(o any) {
	p, ok := o.(*corev1.Pod)
	if !ok {
		return
	}
	info := podInfo{ns: p.Namespace, name: p.Name, sa: p.Spec.ServiceAccountName}
	if info.sa == "" {
		info.sa = "default"
	}
	info.ownerKind, info.ownerName = PodOwner(p)
	if wl := WorkloadFromPod(p); wl != nil {
		info.ips = wl.IPs
	}
	w.mu.Lock()
	w.pods[p.Namespace+"/"+p.Name] = info
	w.mu.Unlock()
	poke(w.kick)
}

func (w *QuarantineWatcher) setQuarantine(u *unstructured.Unstructured) {
	q := quarantine{ns: u.GetNamespace(), name: u.GetName()}
	if err := specOf(u, &q.spec); err != nil {
		w.Logger.Warn("quarantine ignored", "namespace", q.ns, "name", q.name, "error", err)
		return
	}
	w.mu.Lock()
	w.quars[q.ns+"/"+q.name] = q
	w.mu.Unlock()
	poke(w.kick)
}

// Enforced is the current set for this node's pods, sorted.
func (w *QuarantineWatcher) Enforced() []QuarantinedPod {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []QuarantinedPod
	for _, p := range w.pods {
		qp := QuarantinedPod{Namespace: p.ns, Pod: p.name, IPs: p.ips, Domains: map[string]string{}, Addresses: map[netip.Addr]string{}}
		for _, q := range w.quars {
			if !q.selects(&p) {
				continue
			}
			for _, d := range q.spec.Domains {
				qp.Domains[strings.ToLower(strings.TrimSuffix(d, "."))] = q.ns + "/" + q.name
			}
			for _, a := range q.spec.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil {
					qp.Addresses[ip.Unmap()] = q.ns + "/" + q.name
				}
			}
		}
		if len(qp.Domains)+len(qp.Addresses) > 0 {
			out = append(out, qp)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Namespace+"/"+out[i].Pod < out[j].Namespace+"/"+out[j].Pod
	})
	return out
}

func (w *QuarantineWatcher) apply() {
	if w.Apply == nil {
		return
	}
	if err := w.Apply(w.Enforced()); err != nil {
		// Fail closed as soon as the cause passes (a netlink error, say):
		// applying again without waiting for the next change.
		w.Logger.Warn("quarantines not applied, retrying", "node", w.Node, "error", err)
		time.AfterFunc(quarantineRetry, func() { poke(w.kick) })
	}
}

// quarantineRetry is how long after a failed Apply it is tried again.
const quarantineRetry = 5 * time.Second
