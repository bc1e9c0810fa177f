package kube

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/kordon-dev/kordon/identity"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TokenReviewer authenticates service-account tokens with the TokenReview
// API. Pod-bound tokens (TokenRequest) carry the pod and node in the
// review's extra fields.
type TokenReviewer struct {
	Client kubernetes.Interface
}

var _ identity.TokenReviewer = (*TokenReviewer)(nil)

// Review implements identity.TokenReviewer.
func (r *TokenReviewer) Review(ctx context.Context, token, audience string) (*identity.TokenInfo, error) {
	tr, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kube: token review: %w", err)
	}
	if !tr.Status.Authenticated {
		return nil, fmt.Errorf("kube: token not authenticated: %s", tr.Status.Error)
	}
	ns, sa, err := identity.ParseServiceAccountUsername(tr.Status.User.Username)
	if err != nil {
		return nil, err
	}
	first := func(k string) string {
		if v := tr.Status.User.Extra[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	return &identity.TokenInfo{
		Namespace: ns, ServiceAccount: sa,
		PodName:  first("authentication.kubernetes.io/pod-name"),
		PodUID:   first("authentication.kubernetes.io/pod-uid"),
		NodeName: first("authentication.kubernetes.io/node-name"),
	}, nil
}

// SecretStore keeps the CA state in a Secret. Create maps to create
// (AlreadyExists -> identity.ErrExists) and Update to an update with the
// resourceVersion read (Conflict -> identity.ErrConflict), so replicas
// racing at start-up end with one root.
type SecretStore struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string
}

var _ identity.Store = (*SecretStore)(nil)

const stateKey = "ca-state.json"

// Load reads the Secret.
func (s *SecretStore) Load(ctx context.Context) (*identity.State, string, error) {
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, "", identity.ErrNotFound
	}
	if err != nil {
		return nil, "", err
	}
	var st identity.State
	if err := json.Unmarshal(sec.Data[stateKey], &st); err != nil {
		return nil, "", fmt.Errorf("kube: secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return &st, sec.ResourceVersion, nil
}

// Create makes the Secret if it does not exist.
func (s *SecretStore) Create(ctx context.Context, st *identity.State) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, err = s.Client.CoreV1().Secrets(s.Namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, Labels: map[string]string{"app.kubernetes.io/part-of": "kordon"}},
		Type:       "kordon.dev/ca",
		Data:       map[string][]byte{stateKey: b},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return identity.ErrExists
	}
	return err
}

// Update replaces the state if the Secret still has version.
func (s *SecretStore) Update(ctx context.Context, st *identity.State, version string) (string, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return "", err
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, ResourceVersion: version, Labels: map[string]string{"app.kubernetes.io/part-of": "kordon"}},
		Type:       "kordon.dev/ca",
		Data:       map[string][]byte{stateKey: b},
	}
	out, err := s.Client.CoreV1().Secrets(s.Namespace).Update(ctx, sec, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return "", identity.ErrConflict
	}
	if err != nil {
		return "", err
	}
	return out.ResourceVersion, nil
}
