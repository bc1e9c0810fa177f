package kube

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	watchtools "k8s.io/client-go/tools/watch"
)

// KubeconfigOptions select a kubeconfig, its context and a namespace as
// kubectl's --kubeconfig, --context and -n do.
type KubeconfigOptions struct {
	// Path is an explicit kubeconfig file (--kubeconfig); it must exist.
	Path string
	// Search are the files merged when Path is empty, in precedence order
	// (kubectl: $KUBECONFIG's list, else ~/.kube/config). With neither,
	// the in-cluster service account is used.
	Search []string
	// Context overrides the kubeconfig's current-context.
	Context string
	// Namespace overrides the context's namespace.
	Namespace string
}

// LoadKubeconfig builds clients from the kubeconfig o selects and returns
// the namespace to work in: o.Namespace, else the context's namespace,
// else "default" (kubectl's rule).
func LoadKubeconfig(o KubeconfigOptions) (*Clients, string, error) {
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: o.Path, Precedence: o.Search}
	overrides := &clientcmd.ConfigOverrides{CurrentContext: o.Context}
	overrides.Context.Namespace = o.Namespace
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("kube: kubeconfig: %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, "", fmt.Errorf("kube: kubeconfig: %w", err)
	}
	c, err := ClientsFor(cfg)
	if err != nil {
		return nil, "", err
	}
	return c, ns, nil
}

// StateClient reads and deletes one cluster-state kind (EgressAlerts or
// Quarantines) for a person: kordon alerts and kordon quarantine.
type StateClient struct {
	Dynamic dynamic.Interface
	// Resource is EgressAlertGVR or QuarantineGVR.
	Resource schema.GroupVersionResource
}

func (s StateClient) in(namespace string) dynamic.ResourceInterface {
	return s.Dynamic.Resource(s.Resource).Namespace(namespace)
}

// List returns the objects of namespace ("" for every namespace) and
// the list's resourceVersion, from which Watch continues.
func (s StateClient) List(ctx context.Context, namespace string) (*unstructured.UnstructuredList, error) {
	l, err := s.in(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("kube: list %s: %w", s.Resource.GroupResource(), err)
	}
	return l, nil
}

// Watch calls fn with each change to the objects of namespace ("" for
// every namespace) after resourceVersion, in order, until ctx ends
// (then it returns nil) or fn returns an error. A dropped watch is
// resumed from the last version seen (client-go's RetryWatcher), so no
// change is missed; a version too old to resume from (410 Gone) is an
// error.
func (s StateClient) Watch(ctx context.Context, namespace, resourceVersion string, fn func(watch.EventType, *unstructured.Unstructured) error) error {
	rw, err := watchtools.NewRetryWatcherWithContext(ctx, resourceVersion, watcherFunc(func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		o.AllowWatchBookmarks = true
		return s.in(namespace).Watch(ctx, o)
	}))
	if err != nil {
		return fmt.Errorf("kube: watch %s: %w", s.Resource.GroupResource(), err)
	}
	defer rw.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-rw.Done():
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("kube: watch %s ended", s.Resource.GroupResource())
		case ev, ok := <-rw.ResultChan():
			if !ok {
				continue // Done is closed next
			}
			switch ev.Type {
			case watch.Bookmark:
				continue
			case watch.Error:
				return fmt.Errorf("kube: watch %s: %w", s.Resource.GroupResource(), apierrors.FromObject(ev.Object))
			}
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				return fmt.Errorf("kube: watch %s: unexpected %T", s.Resource.GroupResource(), ev.Object)
			}
			if err := fn(ev.Type, u); err != nil {
				return err
			}
		}
	}
}

// Delete deletes the object namespace/name (lifting a Quarantine).
func (s StateClient) Delete(ctx context.Context, namespace, name string) error {
	if err := s.in(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("kube: delete %s %s/%s: %w", s.Resource.GroupResource(), namespace, name, err)
	}
	return nil
}

// watcherFunc adapts a function to client-go's cache.WatcherWithContext.
type watcherFunc func(context.Context, metav1.ListOptions) (watch.Interface, error)

func (f watcherFunc) WatchWithContext(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	return f(ctx, o)
}

// APIStatus is the API server's status of err (NotFound, Forbidden ...)
// when err came from it.
func APIStatus(err error) (metav1.Status, bool) {
	var s apierrors.APIStatus
	if errors.As(err, &s) {
		return s.Status(), true
	}
	return metav1.Status{}, false
}

// DecodeSpec decodes u's spec into out (a *policy.EgressAlertSpec or
// *policy.QuarantineSpec).
func DecodeSpec(u *unstructured.Unstructured, out any) error { return specOf(u, out) }
