package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// newMeteredCA is newTestCA with its metrics in reg.
func newMeteredCA(t *testing.T, clk *fakeClock, reg *prometheus.Registry) *CA {
	t.Helper()
	ca, err := New(context.Background(), Config{Store: &FileStore{Path: filepath.Join(t.TempDir(), "ca.json")}, Now: clk.Now, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// TestRotationSchedule walks one root through SPIRE's schedule: the next
// root is published at half-life, signs from when a sixth is left, and the
// old one leaves the bundle once every SVID it signed has expired.
func TestRotationSchedule(t *testing.T) {
	t.Parallel()
	clk, reg := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}, prometheus.NewRegistry()
	ca := newMeteredCA(t, clk, reg)
	first := ca.ActiveCertificate()
	steps := []struct {
		at            time.Duration // after the first root was made
		want          Rotation
		roots         int
		activeIsFirst bool
	}{
		{at: 11*time.Hour + 59*time.Minute, want: Rotation{}, roots: 1, activeIsFirst: true},
		{at: 12 * time.Hour, want: Rotation{Prepared: true}, roots: 2, activeIsFirst: true},
		{at: 19*time.Hour + 59*time.Minute, want: Rotation{}, roots: 2, activeIsFirst: true},
		{at: 20 * time.Hour, want: Rotation{Activated: true}, roots: 2},
		{at: 24 * time.Hour, want: Rotation{Prepared: true}, roots: 3}, // the second root's half-life
		{at: 24*time.Hour + time.Second, want: Rotation{Pruned: 1}, roots: 2},
	}
	start := clk.Now()
	for _, s := range steps {
		clk.now = start.Add(s.at)
		got, err := ca.RotateIfDue(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if got != s.want {
			t.Errorf("at +%s: %+v, want %+v", s.at, got, s.want)
		}
		if n := len(ca.Roots()); n != s.roots {
			t.Errorf("at +%s: %d roots in the bundle, want %d", s.at, n, s.roots)
		}
		if ca.ActiveCertificate().Equal(first) != s.activeIsFirst {
			t.Errorf("at +%s: first root active %v, want %v", s.at, !s.activeIsFirst, s.activeIsFirst)
		}
	}
	want := map[string]float64{"prepared": 2, "activated": 1, "pruned": 1}
	for ev, n := range want {
		if got := testutil.ToFloat64(ca.metrics.rotations.WithLabelValues(ev)); got != n {
			t.Errorf("kordon_identity_ca_rotation_events_total{event=%q} = %v, want %v", ev, got, n)
		}
	}
}

// TestLatePreparation: a CA whose leader was down past both thresholds
// publishes first and waits before signing with the new root, unless the
// active root has expired.
func TestLatePreparation(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		downUntil time.Duration
		want      Rotation
	}{
		{name: "past-activation-threshold", downUntil: 22 * time.Hour, want: Rotation{Prepared: true}},
		{name: "past-expiry", downUntil: 25 * time.Hour, want: Rotation{Prepared: true, Activated: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := &fakeClock{now: start}
			ca := newTestCA(t, clk)
			clk.now = start.Add(tc.downUntil)
			got, err := ca.RotateIfDue(context.Background())
			if err != nil || got != tc.want {
				t.Fatalf("%+v %v, want %+v", got, err, tc.want)
			}
			if tc.want.Activated {
				return
			}
			// Half the usual window (8 h / 2) would end after the root
			// expires at +24 h, so the switch waits for the expiry.
			clk.now = start.Add(24*time.Hour - time.Second)
			if got, _ := ca.RotateIfDue(context.Background()); got.Activated {
				t.Fatal("activated a root published less than 4 h ago while the active one still signs")
			}
			clk.now = start.Add(24 * time.Hour)
			if got, _ := ca.RotateIfDue(context.Background()); !got.Activated {
				t.Fatal("not activated when the active root expired")
			}
		})
	}
}

// TestFollowerReloadsAndStaleLeaderDoesNotDoubleRotate: two replicas on one
// store; the follower sees each step after Reload, and a replica with a
// stale view that also steps the schedule (a former leader) reloads
// instead of preparing a second root.
func TestFollowerReloadsAndStaleLeaderDoesNotDoubleRotate(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	store := &FileStore{Path: filepath.Join(t.TempDir(), "ca.json")}
	leader, err := New(context.Background(), Config{Store: store, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	follower, err := New(context.Background(), Config{Store: store, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(12 * time.Hour)
	if _, err := leader.RotateIfDue(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, err := follower.RotateIfDue(context.Background()); err != nil || got.Changed() {
		t.Fatalf("stale replica stepped again: %+v %v", got, err)
	}
	if n := len(follower.Roots()); n != 2 {
		t.Fatalf("follower has %d roots after the leader prepared, want 2", n)
	}
	clk.Add(8 * time.Hour)
	if got, err := leader.RotateIfDue(context.Background()); err != nil || !got.Activated {
		t.Fatalf("%+v %v", got, err)
	}
	if err := follower.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !follower.ActiveCertificate().Equal(leader.ActiveCertificate()) {
		t.Fatal("follower signs with another root than the leader after Reload")
	}
}

// holder is a workload in the simulation: its SVID and key, and the
// bundle it was last sent.
type holder struct {
	id     spiffeid.ID
	svid   *SVID
	key    *ecdsa.PrivateKey
	bundle *x509bundle.Bundle
}

func (h *holder) renew(t *testing.T, ca *CA) {
	t.Helper()
	h.key = p256(t)
	s, err := ca.SignPublicKey(h.key.Public(), h.id, 0)
	if err != nil {
		t.Fatal(err)
	}
	h.svid = s
}

func (h *holder) tlsCert() tls.Certificate {
	c := tls.Certificate{PrivateKey: h.key, Leaf: h.svid.Chain[0]}
	for _, x := range h.svid.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// verifyPeer checks a peer's chain with go-spiffe's verifier against the
// holder's own bundle at the simulated time, and its ID.
func (h *holder) verifyPeer(now func() time.Time, want spiffeid.ID) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		var certs []*x509.Certificate
		for _, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return err
			}
			certs = append(certs, c)
		}
		id, _, err := x509svid.Verify(certs, h.bundle, x509svid.WithTime(now()))
		if err != nil {
			return err
		}
		if id != want {
			return fmt.Errorf("peer is %s, want %s", id, want)
		}
		return nil
	}
}

// mtls runs a TLS 1.3 handshake with client certificates between two
// holders, each verifying the other with its own bundle.
func mtls(client, server *holder, now func() time.Time) error {
	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	scfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{server.tlsCert()},
		ClientAuth: tls.RequireAnyClientCert, VerifyPeerCertificate: server.verifyPeer(now, client.id), Time: now}
	ccfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{client.tlsCert()},
		InsecureSkipVerify: true, VerifyPeerCertificate: client.verifyPeer(now, server.id), Time: now} //nolint:gosec // verified by go-spiffe in VerifyPeerCertificate
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(sc, scfg)
		err := s.Handshake()
		if err == nil {
			_, err = s.Write([]byte("ok"))
		}
		errc <- err
	}()
	c := tls.Client(cc, ccfg)
	if err := c.Handshake(); err != nil {
		return fmt.Errorf("client: %w (server: %v)", err, <-errc)
	}
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil {
		return fmt.Errorf("client read: %w", err)
	}
	return <-errc
}

// TestNinetyDaysOfRotation simulates 90 days of a CA with the default
// lifetimes: the leader steps the schedule every 15 minutes, workloads
// renew at half-life and receive each new bundle one step after it
// changes. Every workload holds a valid SVID that every peer's bundle
// verifies at every step; at each switch a workload still holding an
// old-root SVID and one holding a new-root SVID complete mTLS both ways.
func TestNinetyDaysOfRotation(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ca := newTestCA(t, clk)
	first := ca.ActiveCertificate()
	td := ca.TrustDomain()
	old := &holder{id: spiffeid.RequireFromPath(td, "/ns/shop/sa/frontend")}
	fresh := &holder{id: spiffeid.RequireFromPath(td, "/ns/shop/sa/payments")}
	holders := []*holder{old, fresh}
	for _, h := range holders {
		h.renew(t, ca)
		h.bundle = ca.X509Bundle()
	}
	const step = 15 * time.Minute
	end := clk.Now().Add(90 * 24 * time.Hour)
	var activations, switchHandshakes int
	type verified struct {
		svid   *SVID
		bundle *x509bundle.Bundle
	}
	checked := map[verified][]*x509.Certificate{}
	pending := ca.X509Bundle() // what workloads receive at the next step
	for clk.Now().Before(end) {
		clk.Add(step)
		now := clk.Now()
		for _, h := range holders {
			h.bundle = pending
		}
		res, err := ca.RotateIfDue(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if res.Changed() {
			pending = ca.X509Bundle()
		}
		if !now.Before(ca.ActiveCertificate().NotAfter) {
			t.Fatalf("%s: the active root has expired", now)
		}
		if res.Activated {
			activations++
			// fresh renews from the new root at once; old keeps the SVID
			// the previous root signed.
			fresh.renew(t, ca)
			if err := old.svid.Chain[0].CheckSignatureFrom(ca.ActiveCertificate()); err == nil {
				t.Fatal("old SVID is signed by the new root: no switch happened")
			}
			for _, pair := range [][2]*holder{{old, fresh}, {fresh, old}} {
				if err := mtls(pair[0], pair[1], clk.Now); err != nil {
					t.Fatalf("%s: mTLS %s -> %s across the switch: %v", now, pair[0].id, pair[1].id, err)
				}
			}
			switchHandshakes += 2
		}
		for _, h := range holders {
			if !now.Before(RenewAt(h.svid.Chain[0])) {
				h.renew(t, ca)
			}
			// Why a full TTL: CA TTL >= 6 SVID TTLs means the cap at the
			// issuer's NotAfter never shortens an SVID.
			if got := h.svid.NotAfter().Sub(h.svid.Chain[0].NotBefore); got != DefaultSVIDTTL+backdate {
				t.Fatalf("%s: %s has an SVID of %s", now, h.id, got)
			}
		}
		for _, h := range holders {
			for _, peer := range holders {
				// go-spiffe's verifier runs whenever the SVID or the bundle
				// changed; in between only time moves, so checking the
				// validity windows of the verified chain is the same check
				// at a fraction of the cost.
				key := verified{h.svid, peer.bundle}
				chain, ok := checked[key]
				if !ok {
					_, chains, err := x509svid.Verify(h.svid.Chain, peer.bundle, x509svid.WithTime(now))
					if err != nil {
						t.Fatalf("%s: %s's SVID fails with %s's bundle: %v", now, h.id, peer.id, err)
					}
					chain = chains[0]
					checked[key] = chain
				}
				for _, c := range chain {
					if now.Before(c.NotBefore) || now.After(c.NotAfter) {
						t.Fatalf("%s: %s's chain (verified by %s's bundle) has %q outside its validity", now, h.id, peer.id, c.Subject)
					}
				}
			}
		}
		if n := len(ca.Roots()); n > 3 {
			t.Fatalf("%s: %d roots in the bundle", now, n)
		}
	}
	// A 24 h root first switches at 20 h, then every 12 h: 179 switches
	// in 90 days.
	if activations < 179 || activations > 180 {
		t.Errorf("%d activations in 90 days, want 180", activations)
	}
	t.Logf("90 days: %d root switches, %d mTLS handshakes across them", activations, switchHandshakes)
	// Retired roots really leave: none of the roots from the start is
	// still trusted.
	for _, r := range ca.Roots() {
		if r.Equal(first) {
			t.Fatal("the first root is still in the bundle after 90 days")
		}
	}
}

// TestIdentityMetrics: signings by kind and result, and the expiry gauges.
func TestIdentityMetrics(t *testing.T) {
	t.Parallel()
	clk, reg := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}, prometheus.NewRegistry()
	ca := newMeteredCA(t, clk, reg)
	svid, err := ca.SignPublicKey(p256(t).Public(), shopFrontend, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.SignCSR([]byte("not a csr"), shopFrontend, 0); err == nil {
		t.Fatal("garbage CSR signed")
	}
	if _, _, err := ca.SignJWTSVID(shopFrontend, []string{"payments"}, 0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		kind, result string
		want         float64
	}{
		{kind: "x509", result: "ok", want: 1},
		{kind: "x509", result: "rejected", want: 1},
		{kind: "x509", result: "error", want: 0},
		{kind: "jwt", result: "ok", want: 1},
	} {
		if got := testutil.ToFloat64(ca.metrics.signed.WithLabelValues(c.kind, c.result)); got != c.want {
			t.Errorf("kordon_identity_svids_signed_total{kind=%q,result=%q} = %v, want %v", c.kind, c.result, got, c.want)
		}
	}
	if got, want := testutil.ToFloat64(ca.metrics.svidExpiry), float64(svid.NotAfter().Unix()); got != want {
		t.Errorf("svid expiry %v, want %v", got, want)
	}
	if got, want := testutil.ToFloat64(ca.metrics.caExpiry.WithLabelValues("active")), float64(ca.ActiveCertificate().NotAfter.Unix()); got != want {
		t.Errorf("active CA expiry %v, want %v", got, want)
	}
	if n, err := testutil.GatherAndCount(reg, "kordon_identity_svid_signing_duration_seconds"); err != nil || n != 2 {
		t.Errorf("signing latency series: %d %v, want 2 (x509, jwt)", n, err)
	}
}
