package kube

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/policy"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
)

// QuarantineStore is the controller's alert.QuarantineStore: the
// Quarantine objects, listed and deleted with the controller's own
// credentials once the feed's authentication has checked the caller's
// (SubjectAccessReview list or delete on quarantines).
type QuarantineStore struct {
	Dynamic dynamic.Interface
}

var _ alert.QuarantineStore = QuarantineStore{}

func (s QuarantineStore) client() StateClient {
	return StateClient{Dynamic: s.Dynamic, Resource: QuarantineGVR}
}

// List returns namespace's quarantines ("" for every namespace), by
// namespace and name.
func (s QuarantineStore) List(ctx context.Context, namespace string) ([]alert.ClusterQuarantine, error) {
	l, err := s.client().List(ctx, namespace)
	if err != nil {
		return nil, err
	}
	out := make([]alert.ClusterQuarantine, 0, len(l.Items))
	for i := range l.Items {
		q, err := ClusterQuarantineFrom(&l.Items[i])
		if err != nil {
			return nil, err
		}
		out = append(out, q)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Lift deletes namespace/name: the node agents stop enforcing it when
// their informers see it go.
func (s QuarantineStore) Lift(ctx context.Context, namespace, name string) error {
	err := s.client().Delete(ctx, namespace, name)
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%w: %s/%s", alert.ErrNoQuarantine, namespace, name)
	}
	return err
}

// ClusterQuarantineFrom is the feed's record of a Quarantine object; its
// workload is namespace/Kind/name for an owner, namespace/sa:NAME for a
// service account.
func ClusterQuarantineFrom(u *unstructured.Unstructured) (alert.ClusterQuarantine, error) {
	var spec policy.QuarantineSpec
	if err := specOf(u, &spec); err != nil {
		return alert.ClusterQuarantine{}, err
	}
	ns, name := u.GetNamespace(), u.GetName()
	workload := ns + "/sa:" + spec.ServiceAccount
	if spec.Owner != nil {
		workload = ns + "/" + spec.Owner.Kind + "/" + spec.Owner.Name
	}
	return alert.ClusterQuarantine{
		ID: ns + "/" + name, Namespace: ns, Name: name, Workload: workload,
		Domain:  strings.Join(append(append([]string{}, spec.Domains...), spec.Addresses...), ", "),
		Domains: spec.Domains, Addresses: spec.Addresses,
		Since:  u.GetCreationTimestamp().UTC(),
		Reason: spec.Reason, Pod: spec.Pod, Node: spec.Node, Alert: spec.Alert,
	}, nil
}
