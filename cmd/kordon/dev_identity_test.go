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
	di, err := newDevIdentity(context.Background(), state, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	di.now = func() time.Time { return now }
	web := &workload.Workload{Name: "web", Namespace: "shop", ServiceAccount: "web", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.10")}}
	if err := di.sync([]*workload.Workload{web}); err != nil {
		t.Fatal(err)
	}
	dir := di.svidDir("shop", "web")
	first := readLeaf(t, dir)
	if got := first.URIs[0].String(); got != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("SVID for %s", got)
	}
	life := first.NotAfter.Sub(first.NotBefore)

	now = first.NotBefore.Add(life/2 - time.Minute)
	if err := di.sync([]*workload.Workload{web}); err != nil {
		t.Fatal(err)
	}
	if readLeaf(t, dir).SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Error("re-issued before half life")
	}
	now = first.NotBefore.Add(life/2 + time.Minute)
	if err := di.sync([]*workload.Workload{web}); err != nil {
		t.Fatal(err)
	}
	if readLeaf(t, dir).SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Error("not re-issued after half life")
	}

	// A new service account is a new identity, issued at once.
	moved := *web
	moved.ServiceAccount = "web-v2"
	if err := di.sync([]*workload.Workload{&moved}); err != nil {
		t.Fatal(err)
	}
	if got := readLeaf(t, dir).URIs[0].String(); got != "spiffe://cluster.local/ns/shop/sa/web-v2" {
		t.Errorf("after the service account changed: %s", got)
	}
	// A workload that leaves the folder loses its files.
	if err := di.sync(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("SVID files kept for a removed workload: %v", err)
	}

	// A restart keeps the root.
	again, err := newDevIdentity(context.Background(), state, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if !again.ca.ActiveCertificate().Equal(di.ca.ActiveCertificate()) {
		t.Error("a restart created a new root")
	}
}
