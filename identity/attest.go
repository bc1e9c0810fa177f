package identity

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/kordon-dev/kordon/internal/workload"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// Attestor maps a calling process to the workload it belongs to.
type Attestor interface {
	Attest(ctx context.Context, pid int32) (*workload.Workload, error)
}

// AttestorFunc adapts a function to Attestor (tests, dev mode).
type AttestorFunc func(ctx context.Context, pid int32) (*workload.Workload, error)

// Attest calls f.
func (f AttestorFunc) Attest(ctx context.Context, pid int32) (*workload.Workload, error) {
	return f(ctx, pid)
}

// ErrUnknownCaller is returned when a process cannot be tied to a pod.
var ErrUnknownCaller = errors.New("identity: caller is not a known workload")

// PodUIDLookup finds a workload by pod UID (internal/workload.Registry).
type PodUIDLookup interface {
	ByUID(uid string) (*workload.Workload, bool)
}

// ProcAttestor attests a PID as the kubelet lays pods out in cgroups:
// /proc/PID/cgroup names the pod UID (cgroupfs and systemd drivers,
// cgroup v1 and v2), and the registry maps the UID to the pod.
type ProcAttestor struct {
	// ProcRoot is normally /proc.
	ProcRoot string
	Pods     PodUIDLookup
}

// Attest implements Attestor.
func (a *ProcAttestor) Attest(_ context.Context, pid int32) (*workload.Workload, error) {
	root := a.ProcRoot
	if root == "" {
		root = "/proc"
	}
	f, err := os.Open(filepath.Join(root, strconv.Itoa(int(pid)), "cgroup"))
	if err != nil {
		return nil, fmt.Errorf("%w: pid %d: %v", ErrUnknownCaller, pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		uid, _, ok := ParseCgroupLine(sc.Text())
		if !ok {
			continue
		}
		if w, ok := a.Pods.ByUID(uid); ok {
			return w, nil
		}
		return nil, fmt.Errorf("%w: pid %d is in pod %s, which is not scheduled here", ErrUnknownCaller, pid, uid)
	}
	return nil, fmt.Errorf("%w: pid %d is not in a pod cgroup", ErrUnknownCaller, pid)
}

// The kubelet's cgroup layout: a kubepods cgroup, an optional QoS class,
// then one cgroup per pod, and in it one per container (runtime-named).
var (
	kubepodsRe = regexp.MustCompile(`^(?:[a-z0-9_]+-)*kubepods(?:\.slice)?$`)
	qosRe      = regexp.MustCompile(`^(?:besteffort|burstable|(?:[a-z0-9_]+-)*kubepods-(?:besteffort|burstable)\.slice)$`)
	podFSRe    = regexp.MustCompile(`^pod([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$`)
	podSDRe    = regexp.MustCompile(`^(?:[a-z0-9_]+-)*kubepods(?:-besteffort|-burstable)?-pod([0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12})\.slice$`)
	cidRe      = regexp.MustCompile(`^(?:[a-z]+-)*([0-9a-f]{64})(?:\.scope)?$`)
)

// ParseCgroupLine extracts the pod UID and container ID from one line of
// /proc/PID/cgroup ("hierarchy:controllers:path"), for the layouts the
// kubelet creates:
//
//	cgroupfs:  /kubepods/burstable/pod<uid>/<container-id>
//	systemd:   /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
//
// The kubepods cgroup may itself be nested (kind, kubelet-kubepods.slice).
// Only whole path components count, and the first pod cgroup under a
// kubepods cgroup wins: why: with cgroup v2 delegation a container can
// create cgroups below its own, and one named pod<other-uid> must not make
// it that pod. For the same reason the container ID is taken from the
// component right below the pod, the one the runtime created.
func ParseCgroupLine(line string) (podUID, containerID string, ok bool) {
	parts := strings.SplitN(line, ":", 3)
	if len(parts) != 3 {
		return "", "", false
	}
	comps := strings.Split(parts[2], "/")
	underKubepods, qos := false, false
	for i, c := range comps {
		if underKubepods {
			if m := podFSRe.FindStringSubmatch(c); m != nil {
				podUID = m[1]
			} else if m := podSDRe.FindStringSubmatch(c); m != nil {
				podUID = strings.ReplaceAll(m[1], "_", "-")
			}
			if podUID != "" {
				if i+1 < len(comps) {
					if m := cidRe.FindStringSubmatch(comps[i+1]); m != nil {
						containerID = m[1]
					}
				}
				return podUID, containerID, true
			}
			if !qos && qosRe.MatchString(c) {
				qos = true
				continue
			}
		}
		underKubepods, qos = kubepodsRe.MatchString(c), false
	}
	return "", "", false
}

// peerCreds is the AuthInfo of a Unix-socket caller.
type peerCreds struct {
	credentials.CommonAuthInfo
	PID int32
	UID uint32
}

func (peerCreds) AuthType() string { return "unix-peercred" }

// peerCredTransport reads SO_PEERCRED from Unix connections during the
// gRPC handshake. It adds no encryption: the Workload API socket is local
// and reachable only by pods that mount it.
type peerCredTransport struct{}

var _ credentials.TransportCredentials = peerCredTransport{}

func (peerCredTransport) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, peerCreds{}, nil
}

func (peerCredTransport) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("identity: workload API accepts only Unix sockets")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if credErr != nil {
		return nil, nil, fmt.Errorf("identity: SO_PEERCRED: %w", credErr)
	}
	return c, peerCreds{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, PID: cred.Pid, UID: cred.Uid}, nil
}

func (peerCredTransport) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}
func (t peerCredTransport) Clone() credentials.TransportCredentials { return t }
func (peerCredTransport) OverrideServerName(string) error           { return nil }
