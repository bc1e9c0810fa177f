package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/handover"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/prometheus/client_golang/prometheus"
)

// devIdentity is dev mode's identity wiring: the CA (state in
// --state-dir/ca.json, so a restart keeps the root), rotated on SPIRE's
// schedule (--ca-ttl) with dev mode as its own leader, and an SVID file
// set per workload under --state-dir/svids/<namespace>/<name>/
// (identity.SVIDFiles: renewed at half-life, --svid-ttl, and given each
// new bundle as soon as the CA publishes it), which proxyless gRPC
// workloads read through the file_watcher certificate provider (see
// kordon xds bootstrap).
type devIdentity struct {
	ca      *identity.CA
	files   *identity.SVIDFiles
	dir     string
	caTTL   time.Duration
	svidTTL time.Duration
}

// devIdentityConfig configures newDevIdentity.
type devIdentityConfig struct {
	StateDir string
	// CATTL and SVIDTTL are the lifetimes (0: identity's defaults).
	CATTL, SVIDTTL time.Duration
	// Workloads lists the workloads whose files the renewal loop keeps.
	Workloads func() []*workload.Workload
	Logger    *slog.Logger
	Metrics   prometheus.Registerer
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
	dir := filepath.Join(cfg.StateDir, "svids")
	files, err := identity.NewSVIDFiles(identity.SVIDFilesConfig{CA: ca, Dir: dir, Workloads: cfg.Workloads, Rotate: true,
		// The CA's check interval, or the xDS server's SVID refresh (a
		// tenth of a short SVID TTL) if that is shorter.
		Interval: min(ca.CheckInterval(), svidRefresh(cfg.SVIDTTL)),
		Logger:   cfg.Logger, Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	return &devIdentity{ca: ca, files: files, dir: dir, caTTL: cfg.CATTL, svidTTL: cfg.SVIDTTL}, nil
}

// xdsTrustDomain is dev mode's trust domain.
const xdsTrustDomain = "cluster.local"

// svidDir is where the files of workload namespace/name are written.
func (di *devIdentity) svidDir(namespace, name string) string {
	return di.files.WorkloadDir(namespace, name)
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
