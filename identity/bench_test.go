package identity

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
)

// BenchmarkSignX509SVID: SVID signings per second (ECDSA P-256 CA), with
// the caller's key generated outside the timed loop, as the node agent
// reuses keys per rotation.
func BenchmarkSignX509SVID(b *testing.B) {
	ca := newTestCA(b, nil)
	pub := p256(b).Public()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ca.SignPublicKey(pub, shopFrontend, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRotate10kWorkloads: time to re-issue SVIDs (new key + signing)
// for 10,000 workloads through the same path the Workload API uses.
func BenchmarkRotate10kWorkloads(b *testing.B) {
	ca, err := New(context.Background(), Config{Store: &FileStore{Path: filepath.Join(b.TempDir(), "ca.json")}})
	if err != nil {
		b.Fatal(err)
	}
	iss := &LocalIssuer{CA: ca}
	ws := make([]*workload.Workload, 10000)
	for i := range ws {
		ws[i] = &workload.Workload{Name: fmt.Sprintf("pod-%d", i), Namespace: fmt.Sprintf("ns-%d", i%100), ServiceAccount: "sa"}
	}
	for i := 0; i < b.N; i++ {
		start := time.Now()
		for _, w := range ws {
			if _, err := iss.IssueX509(context.Background(), w, p256(b)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/10k-rotation")
	}
}
