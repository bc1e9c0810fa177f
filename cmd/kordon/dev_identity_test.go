package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/workload"
)

func readLeaf(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, identity.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM in svid.pem")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDevIdentityRenewsAtHalfLifeAndFollowsTheFolder(t *testing.T) {
	state := t.TempDir()
	now := time.Now()
	di, err := newDevIdentity(context.Background(), devIdentityConfig{StateDir: state, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	web := &workload.Workload{Name: "web", Namespace: "shop", ServiceAccount: "web", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.10")}}
	if err := di.files.Sync([]*workload.Workload{web}); err != nil {
		t.Fatal(err)
	}
	dir := di.svidDir("shop", "web")
	first := readLeaf(t, dir)
	if got := first.URIs[0].String(); got != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("SVID for %s", got)
	}
	life := first.NotAfter.Sub(first.NotBefore)

	now = first.NotBefore.Add(life/2 - time.Minute)
	if err := di.files.Sync([]*workload.Workload{web}); err != nil {
		t.Fatal(err)
	}
	if readLeaf(t, dir).SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Error("re-issued before half life")
	}
	now = first.NotBefore.Add(life/2 + time.Minute)
	if err := di.files.Sync([]*workload.Workload{web}); err != nil {
		t.Fatal(err)
	}
	if readLeaf(t, dir).SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Error("not re-issued after half life")
	}

	// A new service account is a new identity, issued at once.
	moved := *web
	moved.ServiceAccount = "web-v2"
	if err := di.files.Sync([]*workload.Workload{&moved}); err != nil {
		t.Fatal(err)
	}
	if got := readLeaf(t, dir).URIs[0].String(); got != "spiffe://cluster.local/ns/shop/sa/web-v2" {
		t.Errorf("after the service account changed: %s", got)
	}
	// A workload that leaves the folder loses its files.
	if err := di.files.Sync(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("SVID files kept for a removed workload: %v", err)
	}

	// A restart keeps the root.
	again, err := newDevIdentity(context.Background(), devIdentityConfig{StateDir: state, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if !again.ca.ActiveCertificate().Equal(di.ca.ActiveCertificate()) {
		t.Error("a restart created a new root")
	}
}

// TestDevIdentityRotationKeepsFilesVerifiable is kordon dev --ca-ttl 60s
// --svid-ttl 15s on an injected clock for 10 minutes in 250 ms steps: the
// root rotates every 30 s and after every step each workload's SVID file
// is verified by the bundle file beside it.
func TestDevIdentityRotationKeepsFilesVerifiable(t *testing.T) {
	t.Parallel()
	clk := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	di, err := newDevIdentity(context.Background(), devIdentityConfig{StateDir: t.TempDir(), CATTL: time.Minute, SVIDTTL: 15 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return clk }})
	if err != nil {
		t.Fatal(err)
	}
	ws := []*workload.Workload{
		{Name: "web", Namespace: "shop", ServiceAccount: "web"},
		{Name: "db", Namespace: "shop", ServiceAccount: "db"},
	}
	roots := map[string]bool{}
	for i := 0; i < 2400; i++ {
		clk = clk.Add(250 * time.Millisecond)
		if err := di.files.Step(context.Background(), ws); err != nil {
			t.Fatalf("at %s: %v", clk, err)
		}
		roots[string(di.ca.ActiveCertificate().Raw)] = true
		for _, w := range ws {
			svid, bundle, err := identity.ReadSVIDFiles(di.svidDir(w.Namespace, w.Name))
			if err != nil {
				t.Fatal(err)
			}
			if err := identity.VerifySVIDWithBundle(svid, bundle, di.ca.TrustDomain(), clk); err != nil {
				t.Fatalf("at %s: %s's SVID file is not verified by its bundle file: %v", clk, w.Key(), err)
			}
		}
	}
	// First switch at 50 s, then every 30 s: 20 roots in 10 minutes.
	if n := len(roots); n < 19 {
		t.Errorf("%d roots signed in 10 minutes, want about 20", n)
	}
}

// TestDevIdentityRotationRealTime runs the renewal loop for real with
// short lifetimes (CA 6 s, SVID 2 s) while readers keep checking the files
// as a workload would see them, including between the writes of one
// renewal.
func TestDevIdentityRotationRealTime(t *testing.T) {
	t.Parallel()
	reg := workload.NewRegistry()
	di, err := newDevIdentity(context.Background(), devIdentityConfig{StateDir: t.TempDir(), CATTL: 6 * time.Second, SVIDTTL: 2 * time.Second,
		Workloads: reg.List, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	web := &workload.Workload{Name: "web", Namespace: "shop", ServiceAccount: "web", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.10")}}
	reg.Replace([]*workload.Workload{web})
	if err := di.files.Sync(reg.List()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); _ = di.files.Run(ctx) }()
	dir := di.svidDir("shop", "web")
	roots := map[string]bool{}
	checks := 0
	for ctx.Err() == nil {
		now := time.Now()
		svid, bundle, err := identity.ReadSVIDFiles(dir)
		if err != nil {
			t.Fatal(err)
		}
		// What is checked is that the bundle beside the SVID verifies it;
		// on a loaded machine a renewal may run late and let the SVID
		// lapse, which is not that failure: verify inside its validity.
		at := now
		if leaf := svid.Chain[0]; at.After(leaf.NotAfter) {
			at = leaf.NotAfter.Add(-time.Millisecond)
		}
		if err := identity.VerifySVIDWithBundle(svid, bundle, di.ca.TrustDomain(), at); err != nil {
			t.Fatalf("SVID file not verified by its bundle file: %v", err)
		}
		roots[string(svid.Chain[0].RawIssuer)+string(svid.Chain[0].AuthorityKeyId)] = true
		checks++
		time.Sleep(time.Millisecond)
	}
	<-done
	if len(roots) < 2 {
		// Switches at 5 s and 8 s; under load the second may come late.
		t.Errorf("SVIDs from %d roots in 10 s, want at least 2", len(roots))
	}
	t.Logf("%d checks, SVIDs from %d roots", checks, len(roots))
}
