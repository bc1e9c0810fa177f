package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
)

// SVIDFilesConfig configures NewSVIDFiles.
type SVIDFilesConfig struct {
	// CA signs the SVIDs.
	CA *CA
	// Dir holds one folder per workload, Dir/<namespace>/<name>/.
	Dir string
	// Workloads lists the workloads Run keeps files for (a registry's
	// List); Sync is handed them instead.
	Workloads func() []*workload.Workload
	// Rotate makes each step also advance the CA's rotation schedule
	// (RotateIfDue): for a process that is the CA's only user, kordon dev.
	Rotate bool
	// Interval between Run's steps (default: the CA's CheckInterval).
	Interval time.Duration
	Logger   *slog.Logger
	// Now is the clock (default: the CA's).
	Now func() time.Time
}

// SVIDFiles keeps an SVID file set (WriteSVIDFiles: bundle, key, chain)
// per workload, for workloads that read their identity from files
// (grpc-go's file_watcher certificate provider, what kordon dev gives
// proxyless gRPC): issued for a new workload or a changed identity,
// renewed at RenewAt, given each new bundle as soon as the CA publishes
// it (a new root must be trusted before a peer presents an SVID from
// it), removed when the workload goes. Run is its component.
type SVIDFiles struct {
	cfg SVIDFilesConfig
	log *slog.Logger

	mu     sync.Mutex
	issued map[string]issuedSVID // by workload key
}

// issuedSVID is what was last written for one workload.
type issuedSVID struct {
	id      string
	renewAt time.Time
	bundle  []byte
}

// NewSVIDFiles checks cfg and fills its defaults.
func NewSVIDFiles(cfg SVIDFilesConfig) (*SVIDFiles, error) {
	if cfg.CA == nil || cfg.Dir == "" {
		return nil, errors.New("identity: SVIDFilesConfig needs CA and Dir")
	}
	if cfg.Now == nil {
		cfg.Now = cfg.CA.cfg.Now
	}
	if cfg.Interval <= 0 {
		cfg.Interval = cfg.CA.CheckInterval()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &SVIDFiles{cfg: cfg, log: cfg.Logger, issued: map[string]issuedSVID{}}, nil
}

// WorkloadDir is where the files of workload namespace/name are written.
func (f *SVIDFiles) WorkloadDir(namespace, name string) string {
	return filepath.Join(f.cfg.Dir, namespace, name)
}

// Sync issues SVID files for workloads that have none, whose identity
// changed, or whose SVID is past RenewAt; rewrites the bundle of the
// others when the CA's bundle changed; and removes the files of workloads
// that are gone.
func (f *SVIDFiles) Sync(ws []*workload.Workload) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	ca := f.cfg.CA
	now := f.cfg.Now()
	bundle := ca.BundlePEM()
	keep := map[string]bool{}
	for _, w := range ws {
		keep[w.Key()] = true
		id := w.SPIFFEID(ca.TrustDomain().Name())
		dir := f.WorkloadDir(w.Namespace, w.Name)
		prev, ok := f.issued[w.Key()]
		if ok && prev.id == id && now.Before(prev.renewAt) {
			if !bytes.Equal(prev.bundle, bundle) {
				// A root was published or pruned: the workload must
				// trust a new root before any peer presents an SVID from
				// it. The SVID on disk keeps verifying (see
				// WriteSVIDFiles).
				if err := WriteBundleFile(dir, bundle); err != nil {
					return err
				}
				prev.bundle = bundle
				f.issued[w.Key()] = prev
				f.log.Info("trust bundle updated", "workload", w.Key())
			}
			continue
		}
		svid, key, err := f.sign(w.Namespace, w.ServiceAccount)
		if err != nil {
			return fmt.Errorf("identity for %s: %w", w.Key(), err)
		}
		// Read after signing, so that it holds the signing root.
		b := ca.BundlePEM()
		// Why: fail closed. A workload must never be handed an SVID that
		// the bundle beside it does not verify.
		if err := VerifySVIDWithBundle(svid, b, ca.TrustDomain(), now); err != nil {
			return fmt.Errorf("identity for %s: signed SVID does not verify with the bundle: %w", w.Key(), err)
		}
		if err := WriteSVIDFiles(dir, svid, key, b); err != nil {
			return err
		}
		leaf := svid.Chain[0]
		f.issued[w.Key()] = issuedSVID{id: id, renewAt: RenewAt(leaf), bundle: b}
		f.log.Info("svid issued", "workload", w.Key(), "spiffe_id", id, "not_after", leaf.NotAfter)
	}
	for key := range f.issued {
		if keep[key] {
			continue
		}
		delete(f.issued, key)
		ns, name, _ := strings.Cut(key, "/")
		// A workload that is gone loses its identity.
		if err := os.RemoveAll(f.WorkloadDir(ns, name)); err != nil {
			return err
		}
		f.log.Info("svid removed", "workload", key)
	}
	return nil
}

// sign makes a key pair and an SVID for namespace/serviceAccount.
func (f *SVIDFiles) sign(namespace, serviceAccount string) (*SVID, *ecdsa.PrivateKey, error) {
	id, err := WorkloadID(f.cfg.CA.TrustDomain(), namespace, serviceAccount)
	if err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	svid, err := f.cfg.CA.SignPublicKey(key.Public(), id, 0)
	if err != nil {
		return nil, nil, err
	}
	return svid, key, nil
}

// Step rotates the CA if due (with Rotate) and syncs the files of ws.
func (f *SVIDFiles) Step(ctx context.Context, ws []*workload.Workload) error {
	if f.cfg.Rotate {
		if _, err := f.cfg.CA.RotateIfDue(ctx); err != nil {
			return err
		}
	}
	return f.Sync(ws)
}

// Run steps every Interval, for the workloads Workloads lists, until ctx
// ends; it returns nil then. A failed step is logged and retried at the
// next tick: the files already written keep verifying until their SVIDs
// expire.
func (f *SVIDFiles) Run(ctx context.Context) error {
	if f.cfg.Workloads == nil {
		return errors.New("identity: SVIDFiles.Run needs Workloads")
	}
	t := time.NewTicker(f.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := f.Step(ctx, f.cfg.Workloads()); err != nil && ctx.Err() == nil {
				f.log.Error("svid renewal failed", "error", err)
			}
		}
	}
}
