package kube

import (
	"context"
	"errors"
	"fmt"
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
	// Lead runs while this replica leads (a run.Group of the leader's
	// components, for example). Its context ends when the Lease is lost or
	// Run's context ends; Lead must then return promptly, and the next
	// campaign starts only after it has. An error Lead returns while its
	// context is still live ends Run with that error: the process exits
	// and is restarted, as controller-runtime's manager does.
	Lead func(ctx context.Context) error
	// OnLeading, if set, is told each change (true when Lead starts,
	// false when it has returned).
	OnLeading func(leading bool)
	// Timings (default: DefaultLeaseDuration, DefaultRenewDeadline,
	// DefaultRetryPeriod).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	Logger                                    *slog.Logger
}

// Run campaigns, leads and campaigns again until ctx ends (then it
// returns nil) or Lead fails; on the way out it releases the Lease if it
// holds it.
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
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		le.Run(ctx)
	}()
	select {
	case lctx := <-started:
		err := l.lead(lctx)
		if err != nil {
			// Step down: releasing the Lease lets another replica lead
			// while this process exits.
			cancel()
		}
		<-done
		return err
	case <-done:
		// Run may return (ctx ended) just after starting to lead.
		select {
		case lctx := <-started:
			return l.lead(lctx)
		default:
		}
	}
	return nil
}

// lead runs Lead for one term; it returns Lead's error unless the term
// ended first (then the error is Lead stopping as asked).
func (l *LeaderElection) lead(lctx context.Context) error {
	l.Logger.Info("became leader", "lease", l.Namespace+"/"+l.Name, "identity", l.Identity)
	if l.OnLeading != nil {
		l.OnLeading(true)
	}
	err := l.Lead(lctx)
	if l.OnLeading != nil {
		l.OnLeading(false)
	}
	l.Logger.Info("lost leadership", "lease", l.Namespace+"/"+l.Name, "identity", l.Identity)
	if lctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kube: leader %s: %w", l.Identity, err)
	}
	return nil
}
