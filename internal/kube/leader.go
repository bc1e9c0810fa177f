package kube

import (
	"context"
	"errors"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Leader election timings: controller-runtime's defaults.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// LeaderElection campaigns for a Lease for as long as its Run's context
// lives. client-go's LeaderElector campaigns once: a replica whose renewal
// fails (a network blip, an API server restart, another holder) would
// never lead again, and with every replica in that state nobody writes
// status, publishes bundles or rotates the CA. Run therefore campaigns
// again, with a fresh elector, each time leadership is lost.
type LeaderElection struct {
	Client    kubernetes.Interface
	Namespace string
	Name      string // the Lease
	Identity  string // this replica
	// Lead runs while this replica leads. Its context ends when the Lease
	// is lost or Run's context ends; Lead must then return promptly, and
	// the next campaign starts only after it has.
	Lead func(ctx context.Context)
	// OnLeading, if set, is told each change (true when Lead starts,
	// false when it has returned).
	OnLeading func(leading bool)
	// Timings (default: DefaultLeaseDuration, DefaultRenewDeadline,
	// DefaultRetryPeriod).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Logger                                    *slog.Logger
}

// Run campaigns, leads and campaigns again until ctx ends; on the way out
// it releases the Lease if it holds it.
func (l *LeaderElection) Run(ctx context.Context) error {
	if l.Client == nil || l.Name == "" || l.Identity == "" || l.Lead == nil {
		return errors.New("kube: LeaderElection needs Client, Name, Identity and Lead")
	}
	if l.LeaseDuration <= 0 {
		l.LeaseDuration = DefaultLeaseDuration
	}
	if l.RenewDeadline <= 0 {
		l.RenewDeadline = DefaultRenewDeadline
	}
	if l.RetryPeriod <= 0 {
		l.RetryPeriod = DefaultRetryPeriod
	}
	if l.Logger == nil {
		l.Logger = slog.Default()
	}
	lock := &resourcelock.LeaseLock{LeaseMeta: metav1.ObjectMeta{Name: l.Name, Namespace: l.Namespace},
		Client: l.Client.CoordinationV1(), LockConfig: resourcelock.ResourceLockConfig{Identity: l.Identity}}
	for term := 1; ctx.Err() == nil; term++ {
		if err := l.campaign(ctx, lock, term); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
		case <-time.After(l.RetryPeriod):
		}
	}
	return nil
}

// campaign runs one elector until it stops leading (or never led and ctx
// ended), with Lead on this goroutine so that two terms never overlap.
func (l *LeaderElection) campaign(ctx context.Context, lock resourcelock.Interface, term int) error {
	started := make(chan context.Context, 1)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, Name: l.Name,
		LeaseDuration: l.LeaseDuration, RenewDeadline: l.RenewDeadline, RetryPeriod: l.RetryPeriod,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) { started <- lctx },
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		return err
	}
	l.Logger.Info("campaigning for leadership", "lease", l.Namespace+"/"+l.Name, "identity", l.Identity, "term", term)
	done := make(chan struct{})
	go func() {
		defer close(done)
		le.Run(ctx)
	}()
	select {
	case lctx := <-started:
		l.lead(lctx)
		<-done
	case <-done:
		// Run may return (ctx ended) just after starting to lead.
		select {
		case lctx := <-started:
			l.lead(lctx)
		default:
		}
	}
	return nil
}

func (l *LeaderElection) lead(lctx context.Context) {
	l.Logger.Info("became leader", "lease", l.Namespace+"/"+l.Name, "identity", l.Identity)
	if l.OnLeading != nil {
		l.OnLeading(true)
	}
	l.Lead(lctx)
	if l.OnLeading != nil {
		l.OnLeading(false)
	}
	l.Logger.Info("lost leadership", "lease", l.Namespace+"/"+l.Name, "identity", l.Identity)
}
