package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
)

// AlertView is the controller's copy of every EgressAlert, from an
// informer: an alert.Source, so each replica serves the same
// GET /v1/alerts and event stream (ids are resourceVersions, the same on
// every replica), and the leader delivers webhooks and Events from it.
type AlertView struct {
	Clients *Clients
	Logger  *slog.Logger

	mu    sync.Mutex
	items map[string]viewItem // ns/name
	subs  map[chan struct{}]struct{}
	ready chan struct{}
}

type viewItem struct {
	ns, name, rv string
	a            alert.Alert
}

var _ alert.Source = (*AlertView)(nil)

// NewAlertView returns a view; Run fills it.
func NewAlertView(c *Clients, log *slog.Logger) *AlertView {
	if log == nil {
		log = slog.Default()
	}
	return &AlertView{Clients: c, Logger: log, items: map[string]viewItem{}, subs: map[chan struct{}]struct{}{}, ready: make(chan struct{})}
}

// Synced is closed once the initial list is in the view.
func (v *AlertView) Synced() <-chan struct{} { return v.ready }

// Run runs the informer until ctx ends.
func (v *AlertView) Run(ctx context.Context) error {
	f := dynamicinformer.NewDynamicSharedInformerFactory(v.Clients.Dynamic, 0)
	inf := f.ForResource(EgressAlertGVR).Informer()
	h, err := inf.AddEventHandler(unstructuredHandler(v.set, func(u *unstructured.Unstructured) {
		v.mu.Lock()
		delete(v.items, u.GetNamespace()+"/"+u.GetName())
		v.mu.Unlock()
	}))
	if err != nil {
		return fmt.Errorf("kube: %w", err)
	}
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), h.HasSynced) {
		return fmt.Errorf("kube: EgressAlert informer did not sync")
	}
	close(v.ready)
	<-ctx.Done()
	v.mu.Lock()
	for ch := range v.subs {
		close(ch)
		delete(v.subs, ch)
	}
	v.mu.Unlock()
	return nil
}

func (v *AlertView) set(u *unstructured.Unstructured) {
	a, err := AlertFromObject(u)
	if err != nil {
		v.Logger.Warn("egress alert ignored", "namespace", u.GetNamespace(), "name", u.GetName(), "error", err)
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.items[u.GetNamespace()+"/"+u.GetName()] = viewItem{ns: u.GetNamespace(), name: u.GetName(), rv: u.GetResourceVersion(), a: a}
	for ch := range v.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// List implements alert.Source: matching alerts in id order (the newest
// Limit when set). A Namespace filter selects by the object's namespace.
func (v *AlertView) List(flt alert.Filter) []alert.Alert {
	v.mu.Lock()
	out := make([]alert.Alert, 0, len(v.items))
	ns := flt.Namespace
	flt.Namespace = ""
	for _, it := range v.items {
		if ns != "" && it.ns != ns {
			continue
		}
		if flt.Matches(&it.a) {
			out = append(out, it.a)
		}
	}
	v.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	if flt.Limit > 0 && len(out) > flt.Limit {
		out = out[len(out)-flt.Limit:]
	}
	return out
}

// Subscribe implements alert.Source.
func (v *AlertView) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	v.mu.Lock()
	v.subs[ch] = struct{}{}
	v.mu.Unlock()
	return ch, func() {
		v.mu.Lock()
		delete(v.subs, ch)
		v.mu.Unlock()
	}
}

// objects lists the view's objects (for garbage collection).
func (v *AlertView) objects() []viewItem {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]viewItem, 0, len(v.items))
	for _, it := range v.items {
		out = append(out, it)
	}
	return out
}
