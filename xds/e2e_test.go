package xds

import (
	"crypto/tls"
	"fmt"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kordon-dev/kordon/internal/workload"
)

func shopWorkloads() []*workload.Workload {
	return []*workload.Workload{
		loopbackWorkload("shop", "echo-0", "echo", map[string]string{"app": "echo"}),
		loopbackWorkload("shop", "frontend-0", "frontend", map[string]string{"app": "frontend"}),
		loopbackWorkload("shop", "intruder-0", "intruder", map[string]string{"app": "intruder"}),
	}
}

func codeOf(err error) codes.Code { return status.Code(err) }

// TestProxylessEndToEnd runs real grpc-go xDS servers and clients against
// the kordon ADS server: mTLS with SVIDs, RBAC allow/deny, a runtime
// policy flip, a NACK that keeps the last good policy, a foreign trust
// domain refused, and SVID rotation.
func TestProxylessEndToEnd(t *testing.T) {
	m := startMesh(t, shopWorkloads(), nil)
	lis, port := m.echoService(t)
	m.srv.SetPolicies(mustPolicies(t, allowPolicy("frontend")))

	echoBS, echoFiles := m.bootstrap(t, "shop/echo-0")
	conns := startEcho(t, echoBS, lis)

	target := "echo.shop:" + strconv.Itoa(int(port))
	frontBS, _ := m.bootstrap(t, "shop/frontend-0")
	front := dialXDS(t, frontBS, target)
	intruderBS, _ := m.bootstrap(t, "shop/intruder-0")
	intruder := dialXDS(t, intruderBS, target)

	t.Run("allowed call succeeds", func(t *testing.T) {
		eventually(t, 20*time.Second, "frontend allowed", func() error { return check(front) })
	})
	t.Run("denied call gets PermissionDenied", func(t *testing.T) {
		eventually(t, 20*time.Second, "intruder denied", func() error {
			if err := check(intruder); codeOf(err) != codes.PermissionDenied {
				return fmt.Errorf("got %v", err)
			}
			return nil
		})
	})
	t.Run("mTLS with SPIFFE IDs both ways", func(t *testing.T) {
		var p peer.Peer
		if err := check(front, grpc.Peer(&p)); err != nil {
			t.Fatal(err)
		}
		info, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok || len(info.State.PeerCertificates) == 0 {
			t.Fatalf("not TLS: %T", p.AuthInfo)
		}
		if got := info.State.PeerCertificates[0].URIs[0].String(); got != "spiffe://cluster.local/ns/shop/sa/echo" {
			t.Fatalf("server identity %s", got)
		}
	})
	t.Run("policy change flips the decision at runtime", func(t *testing.T) {
		before := conns.n.Load()
		if before == 0 {
			t.Fatal("the connection counter saw no connection")
		}
		m.srv.SetPolicies(mustPolicies(t, allowPolicy("intruder")))
		took := eventually(t, 10*time.Second, "decision flipped", func() error {
			if err := check(intruder); err != nil {
				return err
			}
			if err := check(front); codeOf(err) != codes.PermissionDenied {
				return fmt.Errorf("frontend: %v", err)
			}
			return nil
		})
		t.Logf("flip took %v", took)
		m.srv.SetPolicies(mustPolicies(t, allowPolicy("frontend")))
		eventually(t, 10*time.Second, "decision flipped back", func() error { return check(front) })
		// The policy travels in the RouteConfiguration: the server keeps its
		// Listener, so the clients' connections were not drained.
		if after := conns.n.Load(); after != before {
			t.Fatalf("connections accepted during the flips: %d -> %d", before, after)
		}
	})
	t.Run("another trust domain is refused", func(t *testing.T) {
		// Adversaries: another trust domain's CA, and a CA of its own that
		// claims this trust domain.
		evil := newMeshCA(t, "evil.example", nil)
		forger := newMeshCA(t, testTD, nil)
		dial := func(cert tls.Certificate) error {
			creds := credentials.NewTLS(&tls.Config{
				Certificates: []tls.Certificate{cert},
				// The server is checked elsewhere; this subtest is about the
				// server checking the client.
				InsecureSkipVerify: true, //nolint:gosec
			})
			cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(creds))
			if err != nil {
				return err
			}
			defer cc.Close()
			return check(cc)
		}
		// Control: a frontend SVID from the mesh CA passes TLS and RBAC.
		if err := dial(m.ca.tlsCert(t, "spiffe://cluster.local/ns/shop/sa/frontend")); err != nil {
			t.Fatalf("mesh SVID: %v", err)
		}
		// The same identity in another trust domain, signed by its own CA.
		err := dial(evil.tlsCert(t, "spiffe://evil.example/ns/shop/sa/frontend"))
		if codeOf(err) != codes.Unavailable {
			t.Fatalf("foreign SVID: got %v, want Unavailable (handshake refused)", err)
		}
		// A foreign CA claiming this trust domain is refused as well.
		err = dial(forger.tlsCert(t, "spiffe://cluster.local/ns/shop/sa/frontend"))
		if codeOf(err) != codes.Unavailable {
			t.Fatalf("forged SVID: got %v, want Unavailable", err)
		}
	})
	t.Run("SVID rotation keeps traffic flowing", func(t *testing.T) {
		w, _ := m.reg.ByPod("shop", "echo-0")
		_, serial := writeSVID(t, echoFiles.dir, m.ca, w.SPIFFEID(testTD))
		// The open connection keeps working while the new cert is picked up.
		if err := check(front); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "new SVID served", func() error {
			cc := dialXDS(t, frontBS, target)
			var p peer.Peer
			if err := check(cc, grpc.Peer(&p)); err != nil {
				return err
			}
			info := p.AuthInfo.(credentials.TLSInfo)
			if got := info.State.PeerCertificates[0].SerialNumber.String(); got != serial {
				return fmt.Errorf("serial %s, want %s", got, serial)
			}
			return nil
		})
		if err := check(front); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("status reports ACKs per node", func(t *testing.T) {
		for _, id := range []string{"shop/echo-0", "shop/frontend-0", "shop/intruder-0"} {
			st, ok := m.srv.NodeStatus(id)
			if !ok || !st.Connected {
				t.Fatalf("%s: %+v", id, st)
			}
			for typ, ts := range st.Types {
				if ts.Acked == "" || ts.Acked != ts.Sent {
					t.Errorf("%s %s: sent %s acked %s", id, typ, ts.Sent, ts.Acked)
				}
			}
		}
	})
}
