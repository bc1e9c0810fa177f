package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/handover"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// workloadAPIFlags configure the node agent's SPIFFE Workload API, which
// fetches SVIDs for this node's pods from the controller's issuance API.
type workloadAPIFlags struct {
	socket, tokenFile, issuance, namespace, procRoot string
}

func (w *workloadAPIFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&w.socket, "workload-api-socket", "/run/kordon/sockets/agent.sock", "SPIFFE Workload API Unix socket for pods (empty: off)")
	fl.StringVar(&w.tokenFile, "token-file", "/var/run/secrets/kordon/token", "this agent's service-account token (audience kordon, bound to its pod)")
	fl.StringVar(&w.issuance, "controller-issuance", "kordon-controller.kordon-system.svc:15012", "controller issuance API address")
	fl.StringVar(&w.namespace, "namespace", "kordon-system", "kordon's namespace (trust bundle ConfigMap, controller identity)")
	fl.StringVar(&w.procRoot, "proc-root", "/proc", "procfs used to attest callers (PID -> cgroup -> pod); the DaemonSet runs with hostPID")
}

// dialIssuance connects to the controller's issuance API with this
// agent's token, verifying the controller's SVID.
func (w *workloadAPIFlags) dialIssuance(ctx context.Context, clients *kube.Clients, td spiffeid.TrustDomain) (*identity.IssuanceClient, error) {
	ctrlID, err := identity.WorkloadID(td, w.namespace, "kordon-controller")
	if err != nil {
		return nil, err
	}
	// The roots are read at each handshake: the controller's certificate
	// comes from the current CA root, which rotates.
	roots := func() ([]*x509.Certificate, error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		b, err := kube.ReadBundle(rctx, clients.Kube, w.namespace)
		if err != nil {
			return nil, err
		}
		return b.X509Authorities(), nil
	}
	return identity.DialIssuanceRoots(w.issuance, roots, ctrlID, func() (string, error) {
		b, err := os.ReadFile(w.tokenFile)
		return strings.TrimSpace(string(b)), err
	})
}

// nodeWorkloadAPI is the node agent's Workload API as a component: it
// waits (at most two minutes) for the controller's trust bundle, dials
// the issuance API, listens on the socket (then closes listening) and
// serves until ctx ends.
type nodeWorkloadAPI struct {
	flags     workloadAPIFlags
	clients   *kube.Clients
	pods      *workload.Registry
	log       *slog.Logger
	listening chan struct{}
}

// Run serves the Workload API until ctx ends.
func (a *nodeWorkloadAPI) Run(ctx context.Context) error {
	w, clients, reg, log := &a.flags, a.clients, a.pods, a.log
	var bundle *spiffebundle.Bundle
	var err error
	for deadline := time.Now().Add(2 * time.Minute); ; {
		bundle, err = kube.ReadBundle(ctx, clients.Kube, w.namespace)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("workload API: %w (is the controller running?)", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second): // waiting for the controller to publish, bounded
		}
	}
	client, err := w.dialIssuance(ctx, clients, bundle.TrustDomain())
	if err != nil {
		return err
	}
	defer client.Close()
	issuer := &identity.RemoteIssuer{Client: client, TrustBundles: func(ctx context.Context) ([]*spiffebundle.Bundle, error) {
		b, err := kube.ReadBundle(ctx, clients.Kube, w.namespace)
		if err != nil {
			return nil, err
		}
		return []*spiffebundle.Bundle{b}, nil
	}}
	api, err := identity.NewWorkloadAPI(identity.WorkloadAPIConfig{Issuer: issuer, Attestor: &identity.ProcAttestor{ProcRoot: w.procRoot, Pods: reg}, Logger: log})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(w.socket), 0o755); err != nil {
		return err
	}
	// Bound on a temporary name and renamed over the socket of the agent
	// it succeeds (or a stale one): pods connecting meanwhile find one of
	// the two. Pods mount the directory; the API itself attests every
	// caller.
	ln, err := handover.ListenUnix(w.socket, 0o777)
	if err != nil {
		return err
	}
	close(a.listening)
	return api.Serve(ctx, ln)
}
