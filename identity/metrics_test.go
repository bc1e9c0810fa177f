package identity

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestTTLGauges: the configured lifetimes are exported, defaults filled
// in, so the monitoring pack's rules can tell a stalled rotation or
// renewal from a short lifetime.
func TestTTLGauges(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		caTTL, svidTT time.Duration
		want          string
	}{
		{name: "defaults", want: "kordon_identity_ca_ttl_seconds 86400\nkordon_identity_svid_ttl_seconds 3600\n"},
		{name: "configured", caTTL: 30 * 24 * time.Hour, svidTT: 10 * time.Minute, want: "kordon_identity_ca_ttl_seconds 2.592e+06\nkordon_identity_svid_ttl_seconds 600\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := prometheus.NewRegistry()
			_, err := New(context.Background(), Config{TrustDomain: "cluster.local", Store: &FileStore{Path: filepath.Join(t.TempDir(), "ca.json")},
				CATTL: tc.caTTL, SVIDTTL: tc.svidTT, Metrics: reg})
			if err != nil {
				t.Fatal(err)
			}
			want := "# HELP kordon_identity_ca_ttl_seconds Configured lifetime of each root (or intermediate) the CA makes.\n# TYPE kordon_identity_ca_ttl_seconds gauge\n" +
				strings.Split(tc.want, "\n")[0] + "\n" +
				"# HELP kordon_identity_svid_ttl_seconds Configured default X.509-SVID lifetime.\n# TYPE kordon_identity_svid_ttl_seconds gauge\n" +
				strings.Split(tc.want, "\n")[1] + "\n"
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kordon_identity_ca_ttl_seconds", "kordon_identity_svid_ttl_seconds"); err != nil {
				t.Error(err)
			}
		})
	}
}
