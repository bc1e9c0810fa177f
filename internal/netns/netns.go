// Package netns builds test topologies in Linux network namespaces: a node
// namespace that forwards, pod namespaces on veth pairs, and an outside
// namespace holding servers on TEST-NET addresses. Tests that program a
// firewall or watch flows use it so that nothing they do reaches the
// machine's real interfaces: the initial namespace's routes, sysctls and
// nftables are never touched, and every namespace is deleted when the test
// ends, failed or not.
//
// It needs root and ip(8) (iproute2). RequireRoot skips loudly elsewhere;
// with KORDON_NETNS_REQUIRED=1 (set by make test) it fails instead, so CI
// cannot pass by skipping.
package netns

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kordon-dev/kordon/internal/netns/setns"
)

// RequiredEnv, when "1", turns a skip for missing root or ip(8) into a
// failure.
const RequiredEnv = "KORDON_NETNS_REQUIRED"

// RequireRoot skips t (loudly) unless the process is root and ip(8) is
// installed; with KORDON_NETNS_REQUIRED=1 it fails t instead.
func RequireRoot(t testing.TB) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "not root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "ip(8) not installed (apt-get install iproute2)"
	}
	if why == "" {
		return
	}
	msg := fmt.Sprintf("NETWORK NAMESPACE TEST NOT RUN: %s; these tests need root (CI runs them as root)", why)
	if os.Getenv(RequiredEnv) == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// NS is a network namespace created by this process.
type NS struct {
	// Name is the namespace's name under /run/netns.
	Name string
}

var seq atomic.Uint32

// uniqueName makes a namespace name unique to this process and call.
func uniqueName(base string) string {
	return fmt.Sprintf("kt%d-%d-%s", os.Getpid()%100000, seq.Add(1), base)
}

// New creates a namespace (its name is made unique from name) with its
// loopback up, and deletes it at the end of the test.
func New(t testing.TB, name string) *NS {
	t.Helper()
	n := &NS{Name: uniqueName(name)}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.Name, err, out)
	}
	t.Cleanup(func() { n.delete(t) })
	// No duplicate address detection: addresses (link-local ones too) are
	// usable at once instead of seconds later.
	n.Sysctl(t, "net.ipv6.conf.default.accept_dad", "0")
	n.Sysctl(t, "net.ipv6.conf.all.accept_dad", "0")
	n.Exec(t, "ip", "link", "set", "lo", "up")
	return n
}

// delete kills every process still in the namespace, then removes it.
func (n *NS) delete(t testing.TB) {
	if out, err := exec.Command("ip", "netns", "pids", n.Name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 && pid != os.Getpid() {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
	}
}

// Path is the namespace's bind mount.
func (n *NS) Path() string { return "/run/netns/" + n.Name }

// Fd opens the namespace for netlink sockets and setns; the fd is closed at
// the end of the test.
func (n *NS) Fd(t testing.TB) int {
	t.Helper()
	fd, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open %s: %v", n.Path(), err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// Do runs f on a locked OS thread that has entered the namespace (see
// setns.Do). Sockets created in f stay in the namespace after Do returns,
// so a test can listen or dial from a namespace and keep using the socket
// anywhere.
func (n *NS) Do(f func() error) error {
	target, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	defer unix.Close(target)
	// f's own error is returned as is; only switching errors are wrapped.
	var ferr error
	if err := setns.Do(target, func() error { ferr = f(); return nil }); err != nil {
		return fmt.Errorf("netns: %s: %w", n.Name, err)
	}
	return ferr
}

// Exec runs a command in the namespace (ip netns exec) and returns its
// combined output; it fails the test on error.
func (n *NS) Exec(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Command(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns exec %s %s: %v: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Command returns a command that runs in the namespace.
func (n *NS) Command(args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// Sysctl writes a sysctl inside the namespace (net.* keys are per namespace).
func (n *NS) Sysctl(t testing.TB, key, value string) {
	t.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	if err := n.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) }); err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", key, value, n.Name, err)
	}
}

// Pod is a pod namespace attached to the node by a veth pair.
type Pod struct {
	*NS
	// Index is the pod's number in the topology.
	Index int
	// IP4 and IP6 are the pod's addresses; the node ends of its veth are
	// the gateways (10.244.i.1, fd00:244:i::1).
	IP4, IP6 netip.Addr
}

// Topology is a node namespace forwarding between pods and an outside
// namespace.
//
//	pod i:   10.244.i.2/24, fd00:244:i::2/64, default via the node
//	node:    10.244.i.1 / fd00:244:i::1 per pod veth; DNS4 10.96.0.53 and
//	         DNS6 fd00:96::53 on lo; 192.0.2.1/24 and 2001:db8::1/64 to outside
//	outside: 192.0.2.2/24, 2001:db8::2/64; test addresses from
//	         198.51.100.0/24, 203.0.113.0/24 and 2001:db8:100::/48 (OutsideAddr)
type Topology struct {
	Node, Outside *NS
	Pods          []*Pod
	// DNS4 and DNS6 are addresses on the node for a local resolver.
	DNS4, DNS6 netip.Addr
	// Internal are the pod and service ranges.
	Internal []netip.Prefix
	// Gateway4 and Gateway6 are the outside namespace's addresses on the
	// link to the node.
	Gateway4, Gateway6 netip.Addr
}

// NewTopology builds a node, an outside namespace and pods (at most 250).
func NewTopology(t testing.TB, pods int) *Topology {
	t.Helper()
	RequireRoot(t)
	if pods > 250 {
		t.Fatalf("netns: at most 250 pods, got %d", pods)
	}
	tp := &Topology{
		Node:     New(t, "node"),
		Outside:  New(t, "out"),
		DNS4:     netip.MustParseAddr("10.96.0.53"),
		DNS6:     netip.MustParseAddr("fd00:96::53"),
		Gateway4: netip.MustParseAddr("192.0.2.2"),
		Gateway6: netip.MustParseAddr("2001:db8::2"),
		Internal: []netip.Prefix{
			netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("10.96.0.0/12"),
			netip.MustParsePrefix("fd00:244::/32"), netip.MustParsePrefix("fd00:96::/64"),
		},
	}
	node, out := tp.Node, tp.Outside
	node.Sysctl(t, "net.ipv4.ip_forward", "1")
	node.Sysctl(t, "net.ipv6.conf.all.forwarding", "1")
	node.Exec(t, "ip", "addr", "add", tp.DNS4.String()+"/32", "dev", "lo")
	node.Exec(t, "ip", "-6", "addr", "add", tp.DNS6.String()+"/128", "dev", "lo", "nodad")

	// node <-> outside
	node.Exec(t, "ip", "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", out.Name)
	node.Exec(t, "ip", "addr", "add", "192.0.2.1/24", "dev", "ext0")
	node.Exec(t, "ip", "-6", "addr", "add", "2001:db8::1/64", "dev", "ext0", "nodad")
	node.Exec(t, "ip", "link", "set", "ext0", "up")
	out.Exec(t, "ip", "addr", "add", "192.0.2.2/24", "dev", "eth0")
	out.Exec(t, "ip", "-6", "addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad")
	out.Exec(t, "ip", "link", "set", "eth0", "up")
	for _, p := range []string{"198.51.100.0/24", "203.0.113.0/24"} {
		node.Exec(t, "ip", "route", "add", p, "via", "192.0.2.2")
	}
	node.Exec(t, "ip", "-6", "route", "add", "2001:db8:100::/48", "via", "2001:db8::2")
	out.Exec(t, "ip", "route", "add", "10.244.0.0/16", "via", "192.0.2.1")
	out.Exec(t, "ip", "route", "add", "10.96.0.0/12", "via", "192.0.2.1")
	out.Exec(t, "ip", "-6", "route", "add", "fd00:244::/32", "via", "2001:db8::1")
	out.Exec(t, "ip", "-6", "route", "add", "fd00:96::/64", "via", "2001:db8::1")

	for i := 0; i < pods; i++ {
		tp.Pods = append(tp.Pods, tp.addPod(t, i))
	}
	return tp
}

func (tp *Topology) addPod(t testing.TB, i int) *Pod {
	t.Helper()
	p := &Pod{
		NS:    New(t, fmt.Sprintf("pod%d", i)),
		Index: i,
		IP4:   netip.MustParseAddr(fmt.Sprintf("10.244.%d.2", i)),
		IP6:   netip.MustParseAddr(fmt.Sprintf("fd00:244:%x::2", i)),
	}
	gw4, gw6 := fmt.Sprintf("10.244.%d.1", i), fmt.Sprintf("fd00:244:%x::1", i)
	veth := fmt.Sprintf("vp%d", i)
	node := tp.Node
	node.Exec(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", p.Name)
	node.Exec(t, "ip", "addr", "add", gw4+"/24", "dev", veth)
	node.Exec(t, "ip", "-6", "addr", "add", gw6+"/64", "dev", veth, "nodad")
	node.Exec(t, "ip", "link", "set", veth, "up")
	p.Exec(t, "ip", "addr", "add", p.IP4.String()+"/24", "dev", "eth0")
	p.Exec(t, "ip", "-6", "addr", "add", p.IP6.String()+"/64", "dev", "eth0", "nodad")
	p.Exec(t, "ip", "link", "set", "eth0", "up")
	p.Exec(t, "ip", "route", "add", "default", "via", gw4)
	p.Exec(t, "ip", "-6", "route", "add", "default", "via", gw6)
	return p
}

// OutsideAddr adds a TEST-NET address (a /32 or /128 in 198.51.100.0/24,
// 203.0.113.0/24 or 2001:db8:100::/48) to the outside namespace, where
// servers may listen on it; the node routes it to the outside.
func (tp *Topology) OutsideAddr(t testing.TB, addr string) netip.Addr {
	t.Helper()
	a := netip.MustParseAddr(addr)
	ok := false
	for _, p := range []string{"198.51.100.0/24", "203.0.113.0/24", "2001:db8:100::/48"} {
		if netip.MustParsePrefix(p).Contains(a) {
			ok = true
		}
	}
	if !ok {
		t.Fatalf("netns: %s is not in 198.51.100.0/24, 203.0.113.0/24 or 2001:db8:100::/48", a)
	}
	if a.Is4() {
		tp.Outside.Exec(t, "ip", "addr", "add", a.String()+"/32", "dev", "lo")
	} else {
		tp.Outside.Exec(t, "ip", "-6", "addr", "add", a.String()+"/128", "dev", "lo", "nodad")
	}
	return a
}
