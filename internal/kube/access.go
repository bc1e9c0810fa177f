package kube

import (
	"context"
	"fmt"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// AccessReviewer authenticates the alert feed's bearer tokens with
// TokenReview and authorizes their users with SubjectAccessReview against
// the security.kordon.dev resources, so RBAC on egressalerts and
// quarantines governs the feed as it governs kubectl. The controller
// needs create on tokenreviews and subjectaccessreviews.
type AccessReviewer struct {
	Client kubernetes.Interface
	// Audiences the tokens must carry; empty: the API server's own
	// (kubectl's tokens, kubectl create token).
	Audiences []string
}

var (
	_ alert.TokenAuthenticator = (*AccessReviewer)(nil)
	_ alert.Authorizer         = (*AccessReviewer)(nil)
)

// AuthenticateToken implements alert.TokenAuthenticator.
func (a *AccessReviewer) AuthenticateToken(ctx context.Context, token string) (alert.User, error) {
	tr, err := a.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: a.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return alert.User{}, fmt.Errorf("kube: token review: %w", err)
	}
	if !tr.Status.Authenticated {
		return alert.User{}, fmt.Errorf("%w: %s", alert.ErrUnauthenticated, tr.Status.Error)
	}
	u := tr.Status.User
	extra := map[string][]string{}
	for k, v := range u.Extra {
		extra[k] = v
	}
	return alert.User{Name: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra}, nil
}

// Authorize implements alert.Authorizer.
func (a *AccessReviewer) Authorize(ctx context.Context, u alert.User, acc alert.Access) (alert.Decision, error) {
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = v
	}
	sar, err := a.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User: u.Name, UID: u.UID, Groups: u.Groups, Extra: extra,
			ResourceAttributes: &authzv1.ResourceAttributes{
				Group: alert.APIGroup, Resource: acc.Resource, Verb: acc.Verb, Namespace: acc.Namespace, Name: acc.Name,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return alert.Decision{}, fmt.Errorf("kube: subject access review: %w", err)
	}
	reason := sar.Status.Reason
	if sar.Status.EvaluationError != "" && !sar.Status.Allowed {
		reason += " (" + sar.Status.EvaluationError + ")"
	}
	return alert.Decision{Allowed: sar.Status.Allowed && !sar.Status.Denied, Reason: reason}, nil
}
