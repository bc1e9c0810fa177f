package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/kube"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// startController runs one kordon controller replica in namespace ns and
// returns its output, its issuance address and its HTTP address.
func startController(t *testing.T, bin, kubeconfig, ns, name string, extra ...string) (*syncBuffer, string, string) {
	t.Helper()
	args, issuance, httpAddr, _ := controllerArgs(t, kubeconfig, ns, name, extra...)
	out := startProcess(t, bin, args...)
	waitReady(t, "http://"+httpAddr+"/readyz")
	return out, issuance, httpAddr
}

// controllerArgs are the arguments of one controller replica in ns, with
// its issuance, HTTP and feed addresses.
func controllerArgs(t *testing.T, kubeconfig, ns, name string, extra ...string) (args []string, issuance, httpAddr, feed string) {
	httpAddr, issuance, feed = freeAddr(t), freeAddr(t), freeAddr(t)
	args = append([]string{"controller", "--kubeconfig", kubeconfig, "--namespace", ns, "--root-namespace", ns,
		"--xds-listen", "127.0.0.1:0", "--issuance-listen", issuance, "--http-listen", httpAddr,
		"--alerts-dir", t.TempDir(), "--pod-name", name, "--feed-listen", feed}, extra...)
	return args, issuance, httpAddr, feed
}

func leaseHolder(t *testing.T, ns string) string {
	t.Helper()
	l, err := clients.Kube.CoordinationV1().Leases(ns).Get(context.Background(), "kordon-controller", metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func bundleConfigMapExists(t *testing.T, ns string) bool {
	t.Helper()
	_, err := clients.Kube.CoreV1().ConfigMaps(ns).Get(context.Background(), kube.BundleConfigMap, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	return err == nil
}

// TestLeaderRecampaignsAfterLosingLease: the only controller replica
// leads; another holder takes its Lease (what a network partition longer
// than the renew deadline amounts to); the replica notices it lost the
// Lease, stops its leader work, campaigns again and, once the other
// holder's Lease has expired, leads again and resumes that work (it
// re-publishes the trust bundle ConfigMap deleted meanwhile).
func TestLeaderRecampaignsAfterLosingLease(t *testing.T) {
	bin := buildKordon(t)
	ns := newNamespace(t)
	// The leader republishes the bundle every second (30 s by default), so
	// a replica that kept publishing after losing the Lease would do so
	// several times within the observation window below.
	const resync = time.Second
	out, _, _ := startController(t, bin, writeKubeconfig(t), ns, "controller-0", "--bundle-resync", resync.String())
	eventually(t, 30*time.Second, "controller-0 holds the Lease and published the bundle", func() bool {
		return leaseHolder(t, ns) == "controller-0" && bundleConfigMapExists(t, ns)
	})

	ctx := context.Background()
	// While leading, a deleted bundle ConfigMap is back within an interval
	// or so: what the check after losing the Lease would see if the
	// publisher had not stopped.
	if err := clients.Kube.CoreV1().ConfigMaps(ns).Delete(ctx, kube.BundleConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*resync, "the leader republishes the deleted bundle within its resync interval", func() bool {
		return bundleConfigMapExists(t, ns)
	})
	leases := clients.Kube.CoordinationV1().Leases(ns)
	l, err := leases.Get(ctx, "kordon-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	thief, now, dur := "thief", metav1.NewMicroTime(time.Now()), int32(15)
	l.Spec.HolderIdentity, l.Spec.AcquireTime, l.Spec.RenewTime, l.Spec.LeaseDurationSeconds = &thief, &now, &now, &dur
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "controller-0 notices it lost the Lease", func() bool {
		return strings.Contains(out.String(), `"msg":"lost leadership"`)
	})
	if err := clients.Kube.CoreV1().ConfigMaps(ns).Delete(ctx, kube.BundleConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The observation window is three resync intervals (the thief's Lease
	// lasts 15 s, so controller-0 cannot lead again within it); a
	// publisher still running would recreate the ConfigMap in the first.
	for end := time.Now().Add(3 * resync); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if bundleConfigMapExists(t, ns) {
			t.Fatal("a replica that lost the Lease still publishes the bundle")
		}
	}
	eventually(t, 60*time.Second, "controller-0 leads again and re-publishes the bundle", func() bool {
		return leaseHolder(t, ns) == "controller-0" && bundleConfigMapExists(t, ns)
	})
	if n := strings.Count(out.String(), `"msg":"became leader"`); n != 2 {
		t.Errorf("became leader %d times, want 2", n)
	}
}

// activeRoot reads the CA Secret and returns the active authority's
// certificate.
func activeRoot(t *testing.T, ns string) *x509.Certificate {
	t.Helper()
	st, _, err := (&kube.SecretStore{Client: clients.Kube, Namespace: ns, Name: "kordon-ca"}).Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range st.Authorities {
		if a.RetireAfter.IsZero() && !a.Prepared {
			return firstCert(t, []byte(a.CertPEM))
		}
	}
	t.Fatal("CA Secret has no active authority")
	return nil
}

func firstCert(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// publishedRoots is the bundle the leader published for node agents.
func publishedRoots(t *testing.T, ns string) []*x509.Certificate {
	t.Helper()
	cm, err := clients.Kube.CoreV1().ConfigMaps(ns).Get(context.Background(), kube.BundleConfigMap, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	var out []*x509.Certificate
	for rest := []byte(cm.Data["bundle.pem"]); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return out
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

// servedLeaf is the certificate a replica's issuance API presents.
func servedLeaf(addr string) (*x509.Certificate, error) {
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // only reading the certificate
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// TestCARotationPublishedFirstAndFollowed: two replicas with --ca-ttl 30s
// --svid-ttl 5s. The leader publishes the next root in the bundle
// ConfigMap before it activates it in the CA Secret, and both replicas,
// the follower included, then present certificates from the new root.
func TestCARotationPublishedFirstAndFollowed(t *testing.T) {
	bin := buildKordon(t)
	ns := newNamespace(t)
	kubeconfig := writeKubeconfig(t)
	ttls := []string{"--ca-ttl", "30s", "--svid-ttl", "5s"}
	_, iss0, http0 := startController(t, bin, kubeconfig, ns, "controller-0", ttls...)
	_, iss1, http1 := startController(t, bin, kubeconfig, ns, "controller-1", ttls...)
	issuance := map[string]string{"controller-0": iss0, "controller-1": iss1}
	httpAddr := map[string]string{"controller-0": http0, "controller-1": http1}
	var leader string
	eventually(t, 30*time.Second, "a leader", func() bool { leader = leaseHolder(t, ns); return leader != "" })
	follower := "controller-0"
	if leader == follower {
		follower = "controller-1"
	}
	first := activeRoot(t, ns)

	var next *x509.Certificate
	var publishedAt, activatedAt time.Time
	eventually(t, 45*time.Second, "the next root published, then activated", func() bool {
		now := time.Now()
		if publishedAt.IsZero() {
			for _, r := range publishedRoots(t, ns) {
				if !r.Equal(first) {
					next, publishedAt = r, now
				}
			}
		}
		if a := activeRoot(t, ns); !a.Equal(first) {
			activatedAt = now
			if next == nil || !a.Equal(next) {
				t.Fatalf("the root activated at %s was never published in %s", now, kube.BundleConfigMap)
			}
			return true
		}
		return false
	})
	if !publishedAt.Before(activatedAt) {
		t.Fatalf("published at %s, activated at %s", publishedAt, activatedAt)
	}
	t.Logf("next root published %s before it signed", activatedAt.Sub(publishedAt).Round(time.Second))
	for _, name := range []string{leader, follower} {
		eventually(t, 20*time.Second, name+" presents a certificate from the new root", func() bool {
			leaf, err := servedLeaf(issuance[name])
			return err == nil && leaf.CheckSignatureFrom(next) == nil
		})
	}
	// The follower's new certificate is one the published bundle verifies.
	leaf, err := servedLeaf(issuance[follower])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, r := range publishedRoots(t, ns) {
		pool.AddCert(r)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("follower's certificate not verified by the published bundle: %v", err)
	}
	// The metrics say the same: the leader counted the switch, and the
	// follower reports the new root's expiry as the active one's.
	if v, ok := metricValue(metricsOf(t, httpAddr[leader]), `kordon_identity_ca_rotation_events_total{event="activated"}`); !ok || v < 1 {
		t.Errorf("leader's kordon_identity_ca_rotation_events_total{event=\"activated\"} = %v (present %v), want >= 1", v, ok)
	}
	eventually(t, 10*time.Second, "follower's kordon_identity_ca_expiry_timestamp_seconds{status=\"active\"} is the new root's", func() bool {
		a := activeRoot(t, ns) // the schedule may have moved on since
		v, ok := metricValue(metricsOf(t, httpAddr[follower]), `kordon_identity_ca_expiry_timestamp_seconds{status="active"}`)
		return ok && v == float64(a.NotAfter.Unix())
	})
}

// metricValue finds one sample in Prometheus text output.
func metricValue(text, series string) (float64, bool) {
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

func metricsOf(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
