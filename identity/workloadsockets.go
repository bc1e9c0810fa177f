package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/kordon-dev/kordon/internal/handover"
	"github.com/kordon-dev/kordon/internal/workload"
)

// WorkloadSocketsConfig configures NewWorkloadSockets.
type WorkloadSocketsConfig struct {
	// Dir holds the sockets, Dir/<namespace>_<name>.sock; it is created
	// 0700.
	Dir string
	// Registry is followed by Run and attests each socket's callers,
	// looked up per call: a workload removed from it gets nothing.
	Registry *workload.Registry
	Issuer   Issuer
	Logger   *slog.Logger
	// Listen binds one socket (default: handover.ListenUnix with mode
	// 0777, bound beside a predecessor's socket and renamed over it, so
	// a socket left by a killed run is replaced the same way).
	Listen func(path string) (net.Listener, error)
}

// WorkloadSockets serves the SPIFFE Workload API on one Unix socket per
// workload, for hosts with no pods and no cgroups to attest by (kordon
// dev): the socket a process opens is what attests it, so Dir's parent
// must let only the user it serves reach it. Sync (and Run, on every
// change of the registry) opens a socket for each new workload and closes
// those of workloads that are gone. Run is its component: a socket whose
// Serve fails ends Run with that error.
type WorkloadSockets struct {
	cfg WorkloadSocketsConfig
	log *slog.Logger
	// base is the context of every Serve; stop ends them all.
	base context.Context
	stop context.CancelFunc
	// failed receives the first Serve error.
	failed chan error

	mu      sync.Mutex
	closed  bool
	serving map[string]workloadSocket // by workload key
}

type workloadSocket struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// NewWorkloadSockets checks cfg and fills its defaults; no socket is
// opened before Sync or Run.
func NewWorkloadSockets(cfg WorkloadSocketsConfig) (*WorkloadSockets, error) {
	if cfg.Dir == "" || cfg.Registry == nil || cfg.Issuer == nil {
		return nil, errors.New("identity: WorkloadSocketsConfig needs Dir, Registry and Issuer")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Listen == nil {
		cfg.Listen = func(path string) (net.Listener, error) { return handover.ListenUnix(path, 0o777) }
	}
	base, stop := context.WithCancel(context.Background())
	return &WorkloadSockets{cfg: cfg, log: cfg.Logger, base: base, stop: stop,
		failed: make(chan error, 1), serving: map[string]workloadSocket{}}, nil
}

// Dir is the folder of the sockets.
func (s *WorkloadSockets) Dir() string { return s.cfg.Dir }

// Path is the Workload API socket of namespace/name.
func (s *WorkloadSockets) Path(namespace, name string) string {
	return filepath.Join(s.cfg.Dir, namespace+"_"+name+".sock")
}

// Sync opens a socket for each workload of ws that has none and closes
// those of workloads not in ws. After Close it does nothing.
func (s *WorkloadSockets) Sync(ws []*workload.Workload) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	if err := os.MkdirAll(s.cfg.Dir, 0o700); err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, w := range ws {
		keep[w.Key()] = true
		if _, ok := s.serving[w.Key()]; ok {
			continue
		}
		if err := s.open(w.Namespace, w.Name); err != nil {
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

func (s *WorkloadSockets) open(namespace, name string) error {
	key := namespace + "/" + name
	api, err := NewWorkloadAPI(WorkloadAPIConfig{
		Issuer: s.cfg.Issuer,
		Attestor: AttestorFunc(func(context.Context, int32) (*workload.Workload, error) {
			w, ok := s.cfg.Registry.ByPod(namespace, name)
			if !ok {
				return nil, ErrUnknownCaller
			}
			return w, nil
		}),
		Logger: s.log,
	})
	if err != nil {
		return err
	}
	ln, err := s.cfg.Listen(s.Path(namespace, name))
	if err != nil {
		return fmt.Errorf("workload API socket for %s: %w", key, err)
	}
	ctx, cancel := context.WithCancel(s.base)
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := api.Serve(ctx, ln)
		// Serve returns once its listener is closed; close it in any case
		// so a failed socket's path goes too.
		_ = ln.Close()
		if err != nil && ctx.Err() == nil {
			select {
			case s.failed <- fmt.Errorf("workload API socket for %s: %w", key, err):
			default:
			}
		}
	}()
	s.serving[key] = workloadSocket{cancel: cancel, done: done}
	return nil
}

// Run syncs the sockets with the registry on every change until ctx ends
// (nil) or a socket's Serve fails (that error), then closes every socket.
// A failed sync (a socket that cannot be bound) is logged and retried at
// the next change, as SVIDFiles.Run retries its steps.
func (s *WorkloadSockets) Run(ctx context.Context) error {
	defer s.Close()
	changed, unsubscribe := s.cfg.Registry.Subscribe()
	defer unsubscribe()
	step := func() {
		if err := s.Sync(s.cfg.Registry.List()); err != nil {
			s.log.Error("workload API sockets: sync failed", "error", err)
		}
	}
	step()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-s.failed:
			return err
		case <-changed:
			step()
		}
	}
}

// Close stops every socket and waits for their Serve calls; each listener
// removes its path unless a successor's socket replaced it. Later Syncs do
// nothing.
func (s *WorkloadSockets) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.stop()
	for key, sock := range s.serving {
		<-sock.done
		delete(s.serving, key)
	}
}
