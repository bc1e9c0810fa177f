package identity

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
)

// readSVIDFile reads a workload's chain and the bundle beside it.
func readSVIDFile(t *testing.T, dir string) (*SVID, []byte) {
	t.Helper()
	svid, bundle, err := ReadSVIDFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	return svid, bundle
}

// TestSVIDFilesRenewRotateAndRemove: files are issued, renewed only past
// RenewAt, stay verified by the bundle beside them across root rotations
// (Rotate), and go with their workload.
func TestSVIDFilesRenewRotateAndRemove(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ca, err := New(context.Background(), Config{TrustDomain: "cluster.local", Store: &FileStore{Path: filepath.Join(t.TempDir(), "ca.json")},
		CATTL: time.Minute, SVIDTTL: 15 * time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	web := &workload.Workload{Name: "web", Namespace: "shop", ServiceAccount: "web"}
	ws := []*workload.Workload{web}
	f, err := NewSVIDFiles(SVIDFilesConfig{CA: ca, Dir: t.TempDir(), Rotate: true, Workloads: func() []*workload.Workload { return ws }})
	if err != nil {
		t.Fatal(err)
	}
	dir := f.WorkloadDir("shop", "web")
	if err := f.Sync(ws); err != nil {
		t.Fatal(err)
	}
	first, _ := readSVIDFile(t, dir)
	if got := first.Chain[0].URIs[0].String(); got != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("SVID for %s", got)
	}
	roots := map[string]bool{}
	renewed := false
	for i := 0; i < 1200; i++ { // 5 minutes in 250 ms steps
		clk.Add(250 * time.Millisecond)
		if err := f.Step(context.Background(), ws); err != nil {
			t.Fatalf("at %s: %v", clk.Now(), err)
		}
		svid, bundle := readSVIDFile(t, dir)
		if err := VerifySVIDWithBundle(svid, bundle, ca.TrustDomain(), clk.Now()); err != nil {
			t.Fatalf("at %s: the SVID file is not verified by the bundle beside it: %v", clk.Now(), err)
		}
		leaf := svid.Chain[0]
		if leaf.SerialNumber.Cmp(first.Chain[0].SerialNumber) != 0 && !renewed {
			renewed = true
			if clk.Now().Before(RenewAt(first.Chain[0])) {
				t.Fatalf("renewed at %s, before RenewAt %s", clk.Now(), RenewAt(first.Chain[0]))
			}
		}
		roots[string(ca.ActiveCertificate().Raw)] = true
	}
	if !renewed {
		t.Error("never renewed")
	}
	// First switch at 50 s, then every 30 s: about 9 roots in 5 minutes.
	if n := len(roots); n < 8 {
		t.Errorf("%d roots signed in 5 minutes, want about 9", n)
	}
	if err := f.Sync(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("files kept for a removed workload: %v", err)
	}
}

func TestSVIDFilesConfigErrors(t *testing.T) {
	t.Parallel()
	if _, err := NewSVIDFiles(SVIDFilesConfig{Dir: t.TempDir()}); err == nil || err.Error() != "identity: SVIDFilesConfig needs CA and Dir" {
		t.Fatalf("no CA: %v", err)
	}
	f, err := NewSVIDFiles(SVIDFilesConfig{CA: newTestCA(t, nil), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Run(context.Background()); err == nil || err.Error() != "identity: SVIDFiles.Run needs Workloads" {
		t.Fatalf("Run without Workloads: %v", err)
	}
}
