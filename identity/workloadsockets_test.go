package identity

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/handover"
	"github.com/kordon-dev/kordon/internal/testtool"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func newTestSockets(t *testing.T, reg *workload.Registry, listen func(string) (net.Listener, error)) *WorkloadSockets {
	t.Helper()
	s, err := NewWorkloadSockets(WorkloadSocketsConfig{
		Dir:      filepath.Join(t.TempDir(), "agent"),
		Registry: reg,
		Issuer:   &LocalIssuer{CA: newTestCA(t, nil)},
		Listen:   listen,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startRun runs s.Run until the test ends. wait returns Run's error, or
// fails the test if Run has not returned within 10s; ended reports whether
// it has returned.
func startRun(t *testing.T, s *WorkloadSockets) (cancel context.CancelFunc, wait func() error, ended func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var err error
	go func() { err = s.Run(ctx); close(done) }()
	wait = func() error {
		select {
		case <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return")
			return nil
		}
	}
	ended = func() bool {
		select {
		case <-done:
			return true
		default:
			return false
		}
	}
	t.Cleanup(func() { cancel(); <-done })
	return cancel, wait, ended
}

// TestWorkloadSocketsFollowRegistry: a workload added to the registry gets
// a socket that answers go-spiffe's own client with its SVID; a removed
// one's socket goes; Run returns nil when its context ends and leaves no
// socket behind.
func TestWorkloadSocketsFollowRegistry(t *testing.T) {
	reg := workload.NewRegistry()
	s := newTestSockets(t, reg, nil)
	cancel, wait, _ := startRun(t, s)

	reg.Upsert(&workload.Workload{Namespace: "shop", Name: "checkout", ServiceAccount: "checkout"})
	reg.Upsert(&workload.Workload{Namespace: "shop", Name: "catalog", ServiceAccount: "catalog-sa"})
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	for _, name := range []string{"checkout", "catalog"} {
		testtool.WaitFor(t, name+"'s socket", func() bool { return exists(s.Path("shop", name)) })
	}
	ctx, c := context.WithTimeout(context.Background(), 10*time.Second)
	defer c()
	for name, want := range map[string]string{
		"checkout": "spiffe://cluster.local/ns/shop/sa/checkout",
		"catalog":  "spiffe://cluster.local/ns/shop/sa/catalog-sa",
	} {
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+s.Path("shop", name)))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := svid.ID.String(); got != want {
			t.Errorf("%s: SVID for %s, want %s", name, got, want)
		}
	}

	reg.Delete("shop", "catalog")
	testtool.WaitFor(t, "the catalog's socket to go", func() bool { return !exists(s.Path("shop", "catalog")) })
	if _, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+s.Path("shop", "checkout"))); err != nil {
		t.Errorf("checkout after catalog's removal: %v", err)
	}

	cancel()
	if err := wait(); err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
	if exists(s.Path("shop", "checkout")) {
		t.Error("checkout's socket left after Run returned")
	}
	// Sync after Close opens nothing.
	if err := s.Sync(reg.List()); err != nil || exists(s.Path("shop", "checkout")) {
		t.Errorf("Sync after Close: %v, socket %v", err, exists(s.Path("shop", "checkout")))
	}
}

// TestWorkloadSocketsServeFailureEndsRun: a socket whose listener dies
// under its Serve (closed by something else than Run) ends Run with that
// error, naming the workload, instead of leaving it without a Workload API.
func TestWorkloadSocketsServeFailureEndsRun(t *testing.T) {
	reg := workload.NewRegistry()
	var mu sync.Mutex
	lns := map[string]net.Listener{}
	s := newTestSockets(t, reg, func(path string) (net.Listener, error) {
		ln, err := handover.ListenUnix(path, 0o777)
		if err == nil {
			mu.Lock()
			lns[filepath.Base(path)] = ln
			mu.Unlock()
		}
		return ln, err
	})
	reg.Upsert(&workload.Workload{Namespace: "shop", Name: "checkout", ServiceAccount: "checkout"})
	reg.Upsert(&workload.Workload{Namespace: "shop", Name: "catalog", ServiceAccount: "catalog"})
	// Sync before Run serves at once (kordon dev applies its first
	// snapshot so); Run then owns those sockets.
	if err := s.Sync(reg.List()); err != nil {
		t.Fatal(err)
	}
	_, wait, ended := startRun(t, s)
	ctx, c := context.WithTimeout(context.Background(), 10*time.Second)
	defer c()
	if _, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+s.Path("shop", "catalog"))); err != nil {
		t.Fatal(err)
	}
	if ended() {
		t.Fatalf("Run returned early: %v", wait())
	}

	mu.Lock()
	ln := lns["shop_catalog.sock"]
	mu.Unlock()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if err := wait(); err == nil || !strings.Contains(err.Error(), "workload API socket for shop/catalog") || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Run returned %v, want shop/catalog's Serve error", err)
	}
	if _, err := os.Stat(s.Path("shop", "checkout")); !os.IsNotExist(err) {
		t.Errorf("checkout's socket left after Run failed: %v", err)
	}
}
