package kube

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/kordon-dev/kordon/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// BundleConfigMap is where the controller publishes the trust bundle for
// node agents (which may not read the CA Secret).
const BundleConfigMap = "kordon-trust-bundle"

// DefaultPublishInterval is how often a BundlePublisher rewrites the
// bundle ConfigMap when nothing changed (someone may have edited or
// deleted it).
const DefaultPublishInterval = 30 * time.Second

// BundlePublisher is what the leader runs for the CA: it steps the
// rotation schedule (identity.CA.RunRotation) and keeps the trust bundle
// ConfigMap current, at once after each rotation step (node agents must
// trust a new root as soon as it is prepared, before it signs) and every
// Interval.
type BundlePublisher struct {
	Client    kubernetes.Interface
	Namespace string
	CA        *identity.CA
	// Interval between publications (default DefaultPublishInterval);
	// RotationInterval between rotation checks (0: the CA's
	// CheckInterval).
	Interval, RotationInterval time.Duration
	Logger                     *slog.Logger
}

// Run rotates and publishes until ctx ends; it returns nil then. A failed
// publication is logged and retried at the next tick: the bundle already
// published keeps verifying every SVID the active root signs.
func (p *BundlePublisher) Run(ctx context.Context) error {
	if p.Client == nil || p.CA == nil {
		return fmt.Errorf("kube: BundlePublisher needs Client and CA")
	}
	interval := p.Interval
	if interval <= 0 {
		interval = DefaultPublishInterval
	}
	log := p.Logger
	if log == nil {
		log = slog.Default()
	}
	publish := func() {
		if err := PublishBundle(ctx, p.Client, p.Namespace, p.CA); err != nil && ctx.Err() == nil {
			log.Warn("trust bundle not published", "error", err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.CA.RunRotation(ctx, p.RotationInterval, publish)
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		publish()
		select {
		case <-ctx.Done():
			<-done
			return nil
		case <-t.C:
		}
	}
}

// PublishBundle writes the CA's SPIFFE bundle to the ConfigMap if it changed.
func PublishBundle(ctx context.Context, c kubernetes.Interface, namespace string, ca *identity.CA) error {
	raw, err := ca.SPIFFEBundle().Marshal()
	if err != nil {
		return err
	}
	data := map[string]string{"bundle.spiffe": string(raw), "bundle.pem": string(ca.BundlePEM()), "trustDomain": ca.TrustDomain().Name()}
	cms := c.CoreV1().ConfigMaps(namespace)
	cur, err := cms.Get(ctx, BundleConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: BundleConfigMap, Namespace: namespace,
			Labels: map[string]string{"app.kubernetes.io/part-of": "kordon"}}, Data: data}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if cur.Data["bundle.spiffe"] == data["bundle.spiffe"] && cur.Data["bundle.pem"] == data["bundle.pem"] {
		return nil
	}
	cur.Data = data
	_, err = cms.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

// ReadBundle reads the published bundle.
func ReadBundle(ctx context.Context, c kubernetes.Interface, namespace string) (*spiffebundle.Bundle, error) {
	cm, err := c.CoreV1().ConfigMaps(namespace).Get(ctx, BundleConfigMap, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("kube: trust bundle: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(cm.Data["trustDomain"])
	if err != nil {
		return nil, fmt.Errorf("kube: trust bundle: %w", err)
	}
	return spiffebundle.Parse(td, []byte(cm.Data["bundle.spiffe"]))
}
