package main

import (
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
	"github.com/kordon-dev/kordon/internal/workload"
)

// devIdentity is dev mode's identity wiring: the CA (state in
// --state-dir/ca.json, so a restart keeps the root) and an SVID file set per
// workload under --state-dir/svids/<namespace>/<name>/, renewed at half
// life, which proxyless gRPC workloads read through the file_watcher
// certificate provider (see kordon xds bootstrap).
type devIdentity struct {
	ca  *identity.CA
	dir string
	log *slog.Logger
	now func() time.Time

	mu     sync.Mutex
	issued map[string]issuedSVID // by workload key
}

// issuedSVID is what was last written for one workload.
type issuedSVID struct {
	id        string
	notBefore time.Time
	notAfter  time.Time
}

func newDevIdentity(ctx context.Context, stateDir string, log *slog.Logger) (*devIdentity, error) {
	ca, err := identity.New(ctx, identity.Config{
		TrustDomain: xdsTrustDomain,
		Store:       &identity.FileStore{Path: filepath.Join(stateDir, "ca.json")},
		Logger:      log,
	})
	if err != nil {
		return nil, err
	}
	return &devIdentity{ca: ca, dir: filepath.Join(stateDir, "svids"), log: log, now: time.Now, issued: map[string]issuedSVID{}}, nil
}

// xdsTrustDomain is dev mode's trust domain.
const xdsTrustDomain = "cluster.local"

// svidDir is where the files of workload namespace/name are written.
func (di *devIdentity) svidDir(namespace, name string) string {
	return filepath.Join(di.dir, namespace, name)
}

// sync issues SVID files for workloads that have none, whose identity
// changed, or whose SVID is past half of its life, and removes the files of
// workloads that are gone.
func (di *devIdentity) sync(ws []*workload.Workload) error {
	di.mu.Lock()
	defer di.mu.Unlock()
	now := di.now()
	keep := map[string]bool{}
	for _, w := range ws {
		keep[w.Key()] = true
		id := w.SPIFFEID(xdsTrustDomain)
		prev, ok := di.issued[w.Key()]
		if ok && prev.id == id && now.Before(prev.notBefore.Add(prev.notAfter.Sub(prev.notBefore)/2)) {
			continue
		}
		svid, key, err := di.sign(w.Namespace, w.ServiceAccount)
		if err != nil {
			return fmt.Errorf("identity for %s: %w", w.Key(), err)
		}
		if err := identity.WriteSVIDFiles(di.svidDir(w.Namespace, w.Name), svid, key, di.ca.BundlePEM()); err != nil {
			return err
		}
		leaf := svid.Chain[0]
		di.issued[w.Key()] = issuedSVID{id: id, notBefore: leaf.NotBefore, notAfter: leaf.NotAfter}
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

// run renews SVIDs until ctx is done.
func (di *devIdentity) run(ctx context.Context, reg *workload.Registry, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := di.sync(reg.List()); err != nil {
				di.log.Error("svid renewal failed", "err", err.Error())
			}
		}
	}
}
