package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/handover"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/prometheus/client_golang/prometheus"
)

// devIdentity is dev mode's identity wiring: the CA (state in
// --state-dir/ca.json, so a restart keeps the root), rotated on SPIRE's
// schedule (--ca-ttl), and an SVID file set per workload under
// --state-dir/svids/<namespace>/<name>/, renewed at half-life (--svid-ttl)
// and given each new bundle as soon as the CA publishes it, which proxyless
// gRPC workloads read through the file_watcher certificate provider (see
// kordon xds bootstrap).
type devIdentity struct {
	ca      *identity.CA
	dir     string
	log     *slog.Logger
	now     func() time.Time
	caTTL   time.Duration
	svidTTL time.Duration

	mu     sync.Mutex
	issued map[string]issuedSVID // by workload key
}

// issuedSVID is what was last written for one workload.
type issuedSVID struct {
	id      string
	renewAt time.Time
	bundle  []byte
}

// devIdentityConfig configures newDevIdentity.
type devIdentityConfig struct {
	StateDir string
	// CATTL and SVIDTTL are the lifetimes (0: identity's defaults).
	CATTL, SVIDTTL time.Duration
	Logger         *slog.Logger
	Metrics        prometheus.Registerer
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func newDevIdentity(ctx context.Context, cfg devIdentityConfig) (*devIdentity, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SVIDTTL <= 0 {
		cfg.SVIDTTL = identity.DefaultSVIDTTL
	}
	if cfg.CATTL <= 0 {
		cfg.CATTL = identity.DefaultCATTL
	}
	ca, err := identity.New(ctx, identity.Config{
		TrustDomain: xdsTrustDomain,
		Store:       &identity.FileStore{Path: filepath.Join(cfg.StateDir, "ca.json")},
		CATTL:       cfg.CATTL,
		SVIDTTL:     cfg.SVIDTTL,
		Now:         cfg.Now,
		Logger:      cfg.Logger,
		Metrics:     cfg.Metrics,
	})
	if err != nil {
		return nil, err
	}
	return &devIdentity{ca: ca, dir: filepath.Join(cfg.StateDir, "svids"), log: cfg.Logger, now: cfg.Now,
		caTTL: cfg.CATTL, svidTTL: cfg.SVIDTTL, issued: map[string]issuedSVID{}}, nil
}

// xdsTrustDomain is dev mode's trust domain.
const xdsTrustDomain = "cluster.local"

// svidDir is where the files of workload namespace/name are written.
func (di *devIdentity) svidDir(namespace, name string) string {
	return filepath.Join(di.dir, namespace, name)
}

// sync issues SVID files for workloads that have none, whose identity
// changed, or whose SVID is past half of its life; rewrites the bundle of
// the others when the CA's bundle changed; and removes the files of
// workloads that are gone.
func (di *devIdentity) sync(ws []*workload.Workload) error {
	di.mu.Lock()
	defer di.mu.Unlock()
	now := di.now()
	bundle := di.ca.BundlePEM()
	keep := map[string]bool{}
	for _, w := range ws {
		keep[w.Key()] = true
		id := w.SPIFFEID(xdsTrustDomain)
		dir := di.svidDir(w.Namespace, w.Name)
		prev, ok := di.issued[w.Key()]
		if ok && prev.id == id && now.Before(prev.renewAt) {
			if !bytes.Equal(prev.bundle, bundle) {
				// A root was published or pruned: the workload must
				// trust a new root before any peer presents an SVID from
				// it. The SVID on disk keeps verifying (see
				// identity.WriteSVIDFiles).
				if err := identity.WriteBundleFile(dir, bundle); err != nil {
					return err
				}
				prev.bundle = bundle
				di.issued[w.Key()] = prev
				di.log.Info("trust bundle updated", "workload", w.Key())
			}
			continue
		}
		svid, key, err := di.sign(w.Namespace, w.ServiceAccount)
		if err != nil {
			return fmt.Errorf("identity for %s: %w", w.Key(), err)
		}
		// Read after signing, so that it holds the signing root.
		b := di.ca.BundlePEM()
		// Why: fail closed. A workload must never be handed an SVID that
		// the bundle beside it does not verify.
		if err := identity.VerifySVIDWithBundle(svid, b, di.ca.TrustDomain(), now); err != nil {
			return fmt.Errorf("identity for %s: signed SVID does not verify with the bundle: %w", w.Key(), err)
		}
		if err := identity.WriteSVIDFiles(dir, svid, key, b); err != nil {
			return err
		}
		leaf := svid.Chain[0]
		di.issued[w.Key()] = issuedSVID{id: id, renewAt: identity.RenewAt(leaf), bundle: b}
		di.log.Info("svid issued", "workload", w.Key(), "spiffe_id", id, "not_after", leaf.NotAfter)
	}
	for key := range di.issued {
		if keep[key] {
			continue
		}
		delete(di.issued, key)
		ns, name, _ := strings.Cut(key, "/")
		// A workload that left the folder loses its identity.
		if err := os.RemoveAll(di.svidDir(ns, name)); err != nil {
			return err
		}
		di.log.Info("svid removed", "workload", key)
	}
	return nil
}

// sign makes a key pair and an SVID for namespace/serviceAccount.
func (di *devIdentity) sign(namespace, serviceAccount string) (*identity.SVID, *ecdsa.PrivateKey, error) {
	id, err := identity.WorkloadID(di.ca.TrustDomain(), namespace, serviceAccount)
	if err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	svid, err := di.ca.SignPublicKey(key.Public(), id, 0)
	if err != nil {
		return nil, nil, err
	}
	return svid, key, nil
}

// interval is how often run steps the rotation schedule and the files:
// the CA's check interval, or the xDS server's SVID refresh (a tenth of a
// short SVID TTL) if that is shorter.
func (di *devIdentity) interval() time.Duration {
	return min(di.ca.CheckInterval(), svidRefresh(di.svidTTL))
}

// step rotates the CA if due (dev mode is its own leader) and syncs the files.
func (di *devIdentity) step(ctx context.Context, ws []*workload.Workload) error {
	if _, err := di.ca.RotateIfDue(ctx); err != nil {
		return err
	}
	return di.sync(ws)
}

// run rotates the CA and renews SVIDs until ctx is done.
func (di *devIdentity) run(ctx context.Context, reg *workload.Registry) {
	t := time.NewTicker(di.interval())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := di.step(ctx, reg.List()); err != nil && ctx.Err() == nil {
				di.log.Error("svid renewal failed", "err", err.Error())
			}
		}
	}
}

// devSockets serves the SPIFFE Workload API on one Unix socket per workload,
// --state-dir/agent/<namespace>_<name>.sock. With no pods and no cgroups in
// dev mode, the socket a process opens is what attests it: the state folder
// is 0700, so only the user running kordon dev can connect.
type devSockets struct {
	dir      string
	registry *workload.Registry
	issuer   identity.Issuer
	log      *slog.Logger

	mu      sync.Mutex
	serving map[string]devSocket // by workload key
}

type devSocket struct {
	path   string
	cancel context.CancelFunc
	done   chan struct{}
}

func newDevSockets(stateDir string, reg *workload.Registry, ca *identity.CA, log *slog.Logger) *devSockets {
	return &devSockets{
		dir:      filepath.Join(stateDir, "agent"),
		registry: reg,
		issuer:   &identity.LocalIssuer{CA: ca},
		log:      log,
		serving:  map[string]devSocket{},
	}
}

// socketPath is the Workload API socket of namespace/name.
func (s *devSockets) socketPath(namespace, name string) string {
	return filepath.Join(s.dir, namespace+"_"+name+".sock")
}

// sync opens a socket for each new workload and closes those of workloads
// that are gone.
func (s *devSockets) sync(ctx context.Context, ws []*workload.Workload) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, w := range ws {
		keep[w.Key()] = true
		if _, ok := s.serving[w.Key()]; ok {
			continue
		}
		if err := s.open(ctx, w.Namespace, w.Name); err != nil {
			return err
		}
	}
	for key, sock := range s.serving {
		if !keep[key] {
			sock.cancel()
			<-sock.done // Serve closed the listener, which removed its path
			delete(s.serving, key)
		}
	}
	return nil
}

func (s *devSockets) open(ctx context.Context, namespace, name string) error {
	key := namespace + "/" + name
	api, err := identity.NewWorkloadAPI(identity.WorkloadAPIConfig{
		Issuer: s.issuer,
		Attestor: identity.AttestorFunc(func(context.Context, int32) (*workload.Workload, error) {
			// Looked up per call: a workload removed from the folder gets nothing.
			w, ok := s.registry.ByPod(namespace, name)
			if !ok {
				return nil, identity.ErrUnknownCaller
			}
			return w, nil
		}),
		Logger: s.log,
	})
	if err != nil {
		return err
	}
	path := s.socketPath(namespace, name)
	// Bound beside a predecessor's socket and renamed over it (a socket
	// left by a killed run is replaced the same way).
	ln, err := handover.ListenUnix(path, 0o777)
	if err != nil {
		return fmt.Errorf("workload API socket for %s: %w", key, err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := api.Serve(sctx, ln); err != nil {
			s.log.Error("workload API stopped", "workload", key, "err", err.Error())
		}
	}()
	s.serving[key] = devSocket{path: path, cancel: cancel, done: done}
	return nil
}

// close stops every socket.
func (s *devSockets) close(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, sock := range s.serving {
		sock.cancel()
		// Serve closed the listener, which removed its path unless a
		// successor's socket replaced it.
		<-sock.done
		delete(s.serving, key)
	}
	return nil
}
