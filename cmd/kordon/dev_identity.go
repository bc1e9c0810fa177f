package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/kordon-dev/kordon/identity"
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

// newDevSockets serves the SPIFFE Workload API on one Unix socket per
// workload, --state-dir/agent/<namespace>_<name>.sock. With no pods and no
// cgroups in dev mode, the socket a process opens is what attests it: the
// state folder is 0700, so only the user running kordon dev can connect.
func newDevSockets(stateDir string, reg *workload.Registry, ca *identity.CA, log *slog.Logger) (*identity.WorkloadSockets, error) {
	return identity.NewWorkloadSockets(identity.WorkloadSocketsConfig{
		Dir:      filepath.Join(stateDir, "agent"),
		Registry: reg,
		Issuer:   &identity.LocalIssuer{CA: ca},
		Logger:   log,
	})
}
