package identity

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParseCgroupLine(t *testing.T) {
	t.Parallel()
	const uid = "2c48913c-b29f-11e7-9350-020968147796"
	const cid = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"
	cases := []struct {
		name, line string
		ok         bool
		cid        string
	}{
		{"cgroupfs v1 burstable", "11:memory:/kubepods/burstable/pod" + uid + "/" + cid, true, cid},
		{"cgroupfs v1 guaranteed", "4:cpu,cpuacct:/kubepods/pod" + uid + "/" + cid, true, cid},
		{"cgroupfs v2", "0::/kubepods/besteffort/pod" + uid + "/" + cid, true, cid},
		{"systemd containerd v2", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-" + cid + ".scope", true, cid},
		{"systemd crio v1", "1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2c48913c_b29f_11e7_9350_020968147796.slice/crio-" + cid + ".scope", true, cid},
		{"systemd docker guaranteed", "0::/kubepods.slice/kubepods-pod2c48913c_b29f_11e7_9350_020968147796.slice/docker-" + cid + ".scope", true, cid},
		{"pod sandbox without container", "0::/kubepods.slice/kubepods-pod2c48913c_b29f_11e7_9350_020968147796.slice", true, ""},
		{"host process", "0::/user.slice/user-1000.slice/session-3.scope", false, ""},
		{"docker without kubernetes", "0::/system.slice/docker-" + cid + ".scope", false, ""},
		{"garbage", "no colons", false, ""},
		{"kind node nested kubepods", "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-" + cid + ".scope", true, cid},
		{"child cgroup named for another pod", "0::/kubepods/burstable/pod" + uid + "/" + cid + "/pod11111111-2222-3333-4444-555555555555", true, cid},
		{"child systemd slice named for another pod", "0::/kubepods.slice/kubepods-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-" + cid + ".scope/kubepods-pod11111111_2222_3333_4444_555555555555.slice", true, cid},
		{"container id from below the pod, not a deeper child", "0::/kubepods/pod" + uid + "/x/" + cid, true, ""},
		{"pod segment not under kubepods", "0::/user.slice/kubepods-fake/x/pod" + uid, false, ""},
		{"pod prefix inside a component", "0::/kubepods/xpod" + uid, false, ""},
		{"uid with a longer last group", "0::/kubepods/pod" + uid + "0", false, ""},
	}
	for _, tc := range cases {
		gotUID, gotCID, ok := ParseCgroupLine(tc.line)
		if ok != tc.ok || (ok && (gotUID != uid || gotCID != tc.cid)) {
			t.Errorf("%s: got %q %q %v", tc.name, gotUID, gotCID, ok)
		}
	}
}

func TestProcAttestor(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	const uid = "2c48913c-b29f-11e7-9350-020968147796"
	write := func(pid, content string) {
		os.MkdirAll(filepath.Join(root, pid), 0o755)
		os.WriteFile(filepath.Join(root, pid, "cgroup"), []byte(content), 0o644)
	}
	write("100", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-abc.scope\n")
	write("200", "0::/user.slice/session-1.scope\n")
	write("300", "0::/kubepods/pod11111111-2222-3333-4444-555555555555/x\n")
	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{{Name: "frontend", Namespace: "shop", ServiceAccount: "frontend", UID: uid}})
	a := &ProcAttestor{ProcRoot: root, Pods: reg}
	if w, err := a.Attest(context.Background(), 100); err != nil || w.Name != "frontend" {
		t.Fatalf("pod process: %v %v", w, err)
	}
	for _, pid := range []int32{200, 300, 400} {
		if _, err := a.Attest(context.Background(), pid); err == nil {
			t.Errorf("pid %d attested", pid)
		}
	}
}

// startWorkloadAPI serves the Workload API on a socket in a temp dir,
// attesting this test process as shop/frontend when self is true.
func startWorkloadAPI(t *testing.T, ca *CA, self bool) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	me := int32(os.Getpid())
	att := AttestorFunc(func(_ context.Context, pid int32) (*workload.Workload, error) {
		if self && pid == me {
			return &workload.Workload{Name: "frontend", Namespace: "shop", ServiceAccount: "frontend"}, nil
		}
		return nil, ErrUnknownCaller
	})
	api, err := NewWorkloadAPI(WorkloadAPIConfig{Issuer: &LocalIssuer{CA: ca}, Attestor: att})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = api.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return "unix://" + sock
}

// TestWorkloadAPIWithGoSpiffeClient uses go-spiffe's own client as the
// real peer: it gets an SVID, verifies it against the bundle, and sees
// the rotation pushed at half-life.
func TestWorkloadAPIWithGoSpiffeClient(t *testing.T) {
	t.Parallel()
	ca, err := New(context.Background(), Config{Store: &FileStore{Path: filepath.Join(t.TempDir(), "ca.json")}, SVIDTTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	addr := startWorkloadAPI(t, ca, true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != shopFrontend {
		t.Fatalf("got %s", svid.ID)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
		t.Fatalf("SVID does not verify against the served bundle: %v", err)
	}
	first := svid.Certificates[0].SerialNumber
	for {
		s, err := src.GetX509SVID()
		if err == nil && s.Certificates[0].SerialNumber.Cmp(first) != 0 {
			break // rotated and pushed
		}
		select {
		case <-ctx.Done():
			t.Fatal("SVID was not rotated before the deadline")
		case <-time.After(50 * time.Millisecond): // polling the source, bounded by ctx
		}
	}
	// JWT-SVIDs: fetch and validate through the same API.
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	jwt, err := client.FetchJWTSVID(ctx, jwtParams("payments"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := client.ValidateJWTSVID(ctx, jwt.Marshal(), "payments")
	if err != nil || got.ID != shopFrontend {
		t.Fatalf("validate: %v %v", got, err)
	}
	if _, err := client.ValidateJWTSVID(ctx, jwt.Marshal(), "someone-else"); err == nil {
		t.Fatal("JWT-SVID accepted for the wrong audience")
	}
}

func TestWorkloadAPIUnknownCallerGetsNothing(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, nil)
	addr := startWorkloadAPI(t, ca, false)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	_, err = client.FetchX509SVID(ctx)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unknown caller: %v", err)
	}
}

func jwtParams(aud string) jwtsvid.Params { return jwtsvid.Params{Audience: aud} }
