package xds

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/kordon-dev/kordon/identity"
)

// The test binary doubles as a proxyless workload: with
// KORDON_XDS_TEST_WORKLOAD set it runs as one instead of running tests.
// grpc-go reads GRPC_XDS_BOOTSTRAP_CONFIG and
// GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE at package init, so these run in their
// own process with their own environment.
const workloadEnv = "KORDON_XDS_TEST_WORKLOAD"

func TestMain(m *testing.M) {
	switch os.Getenv(workloadEnv) {
	case "":
		os.Exit(m.Run())
	case "server":
		os.Exit(workloadServer())
	case "client":
		os.Exit(workloadClient(os.Getenv("KORDON_XDS_TARGET"), os.Getenv("KORDON_XDS_EXPECT")))
	default:
		fmt.Fprintln(os.Stderr, "unknown workload mode")
		os.Exit(2)
	}
}

// workloadServer serves the health service as an xDS server on
// 127.0.0.1:0, prints "LISTENING <addr>" and stops when stdin closes.
func workloadServer() int {
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	gs, err := grpcxds.NewGRPCServer(grpc.Creds(creds))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	healthpb.RegisterHealthServer(gs, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("LISTENING %s\n", lis.Addr())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		gs.Stop()
	}()
	if err := gs.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// workloadClient calls the target until the outcome is expect ("ok" or a
// gRPC code name) or 20s pass.
func workloadClient(target, expect string) int {
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(creds))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cc.Close()
	deadline := time.Now().Add(20 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		last = check(cc)
		got := "ok"
		if last != nil {
			got = codeOf(last).String()
		}
		if got == expect {
			fmt.Println("GOT", got)
			return 0
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintln(os.Stderr, "last result:", last)
	return 1
}

// startWorkload re-executes the test binary as a workload with its own
// bootstrap in the environment.
func startWorkload(t *testing.T, mode string, bootstrap []byte, extra ...string) (*exec.Cmd, *bufio.Reader, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		workloadEnv+"="+mode,
		"GRPC_XDS_BOOTSTRAP_CONFIG="+string(bootstrap),
		"GRPC_EXPERIMENTAL_XDS_MTLS_SPIFFE=true",
	)
	cmd.Env = append(cmd.Env, extra...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = tWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return cmd, bufio.NewReader(stdout), stdin
}

// TestSubprocessWorkloadsWithSPIFFEBundleMap runs the echo server and a
// client as separate processes configured only by GRPC_XDS_BOOTSTRAP_CONFIG,
// with a SPIFFE trust bundle map that trusts a partner trust domain: the
// partner's SVIDs pass TLS and are then subject to RBAC, while a third
// trust domain fails the handshake.
func TestSubprocessWorkloadsWithSPIFFEBundleMap(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	m := startMesh(t, shopWorkloads(), nil)
	partner := newMeshCA(t, "partner.example", nil)
	m.srv.SetPolicies(mustPolicies(t, allowPolicy("frontend")))

	bootstrapWithMap := func(nodeID string) []byte {
		bs, files := m.bootstrap(t, nodeID)
		mapFile := filepath.Join(files.dir, "bundles.json")
		bm, err := identity.BundleMap(m.ca.SPIFFEBundle(), partner.SPIFFEBundle())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(mapFile, bm, 0o600); err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := json.Unmarshal(bs, &doc); err != nil {
			t.Fatal(err)
		}
		cfg := doc["certificate_providers"].(map[string]any)[DefaultCertProviderInstance].(map[string]any)["config"].(map[string]any)
		cfg["spiffe_trust_bundle_map_file"] = mapFile
		out, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	_, stdout, _ := startWorkload(t, "server", bootstrapWithMap("shop/echo-0"))
	line, err := stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("server did not start: %v", err)
	}
	addr := strings.TrimSpace(strings.TrimPrefix(line, "LISTENING "))
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	if err := m.srv.SetServices([]Service{{Name: "echo", Namespace: "shop", Port: uint32(port), Selector: map[string]string{"app": "echo"}}}); err != nil {
		t.Fatal(err)
	}
	target := fmt.Sprintf("echo.shop:%d", port)

	t.Run("subprocess client allowed", func(t *testing.T) {
		cmd, out, _ := startWorkload(t, "client", bootstrapWithMap("shop/frontend-0"), "KORDON_XDS_TARGET="+target, "KORDON_XDS_EXPECT=ok")
		got, _ := out.ReadString('\n')
		if err := cmd.Wait(); err != nil || strings.TrimSpace(got) != "GOT ok" {
			t.Fatalf("client: %v %q", err, got)
		}
	})
	t.Run("subprocess client denied", func(t *testing.T) {
		cmd, out, _ := startWorkload(t, "client", bootstrapWithMap("shop/intruder-0"), "KORDON_XDS_TARGET="+target, "KORDON_XDS_EXPECT=PermissionDenied")
		got, _ := out.ReadString('\n')
		if err := cmd.Wait(); err != nil || strings.TrimSpace(got) != "GOT PermissionDenied" {
			t.Fatalf("client: %v %q", err, got)
		}
	})

	dial := func(cert tls.Certificate) error {
		creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}) //nolint:gosec // the server is not under test here
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer cc.Close()
		return check(cc)
	}
	partnerFront := partner.tlsCert(t, "spiffe://partner.example/ns/shop/sa/frontend")
	t.Run("federated trust domain passes TLS and meets RBAC", func(t *testing.T) {
		eventually(t, 10*time.Second, "partner server up", func() error {
			if err := dial(partnerFront); codeOf(err) != codes.PermissionDenied {
				return fmt.Errorf("got %v, want PermissionDenied", err)
			}
			return nil
		})
		m.srv.SetPolicies(mustPolicies(t, strings.Replace(allowPolicy("frontend"), `"cluster.local/ns/shop/sa/frontend"`,
			`"cluster.local/ns/shop/sa/frontend", "partner.example/ns/shop/sa/frontend"`, 1)))
		eventually(t, 10*time.Second, "partner allowed", func() error { return dial(partnerFront) })
	})
	t.Run("untrusted trust domain fails the handshake", func(t *testing.T) {
		stranger := newMeshCA(t, "stranger.example", nil)
		if err := dial(stranger.tlsCert(t, "spiffe://stranger.example/ns/shop/sa/frontend")); codeOf(err) != codes.Unavailable {
			t.Fatalf("got %v, want Unavailable", err)
		}
		// A CA of its own claiming the partner's trust domain fails too.
		forger := newMeshCA(t, "partner.example", nil)
		if err := dial(forger.tlsCert(t, "spiffe://partner.example/ns/shop/sa/frontend")); codeOf(err) != codes.Unavailable {
			t.Fatalf("got %v, want Unavailable", err)
		}
	})
}
