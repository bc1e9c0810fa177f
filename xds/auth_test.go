package xds

import "testing"

// TestParseSPIFFEID: workload IDs of the mesh's trust domain parse; the
// rest is refused with go-spiffe's reason or kordon's.
func TestParseSPIFFEID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in string
		want     Identity
		err      string
	}{
		{name: "workload", in: "spiffe://cluster.local/ns/shop/sa/frontend",
			want: Identity{SPIFFEID: "spiffe://cluster.local/ns/shop/sa/frontend", Namespace: "shop", ServiceAccount: "frontend"}},
		{name: "other trust domain", in: "spiffe://cluster.local.evil/ns/a/sa/b",
			err: `xds: SPIFFE ID "spiffe://cluster.local.evil/ns/a/sa/b" is not in trust domain "cluster.local"`},
		{name: "empty segment", in: "spiffe://cluster.local/ns//sa/x",
			err: `xds: SPIFFE ID "spiffe://cluster.local/ns//sa/x": path cannot contain empty segments`},
		{name: "extra segment", in: "spiffe://cluster.local/ns/a/sa/b/extra",
			err: `xds: SPIFFE ID "spiffe://cluster.local/ns/a/sa/b/extra" is not a workload ID (/ns/<ns>/sa/<sa>): identity: not a workload SPIFFE ID: invalid service account "b/extra"`},
		{name: "not a workload path", in: "spiffe://cluster.local/agent/node-1",
			err: `xds: SPIFFE ID "spiffe://cluster.local/agent/node-1" is not a workload ID (/ns/<ns>/sa/<sa>): identity: not a workload SPIFFE ID: spiffe://cluster.local/agent/node-1`},
		{name: "upper case trust domain", in: "spiffe://Cluster.local/ns/a/sa/b",
			err: `xds: SPIFFE ID "spiffe://Cluster.local/ns/a/sa/b": trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores`},
		{name: "not spiffe", in: "https://cluster.local/ns/a/sa/b",
			err: `xds: SPIFFE ID "https://cluster.local/ns/a/sa/b": scheme is missing or invalid`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseSPIFFEID(tc.in, "cluster.local")
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("error %v, want %s", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}
