package egress

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/kordon-dev/kordon/internal/netns"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
)

// env is a topology with a firewall programming its node.
type env struct {
	t   testing.TB
	tp  *netns.Topology
	reg *workload.Registry
	fw  *Firewall
	cfg Config
}

// newEnv builds a topology of pods pods, registers pod i as workload
// default/pod<i> with label pod=<i>, and starts a firewall on the node.
func newEnv(t testing.TB, pods int, mod func(*Config)) *env {
	t.Helper()
	tp := netns.NewTopology(t, pods)
	reg := workload.NewRegistry()
	var ws []*workload.Workload
	for _, p := range tp.Pods {
		ws = append(ws, &workload.Workload{Name: fmt.Sprintf("pod%d", p.Index), Namespace: "default",
			ServiceAccount: "default", Labels: map[string]string{"pod": strconv.Itoa(p.Index)}, IPs: []netip.Addr{p.IP4, p.IP6}})
	}
	reg.Replace(ws)
	cfg := Config{
		NetNSFd:  tp.Node.Fd(t),
		Registry: reg,
		Internal: tp.Internal,
		DNS4:     netip.AddrPortFrom(tp.DNS4, 53),
		DNS6:     netip.AddrPortFrom(tp.DNS6, 53),
		TTLGrace: time.Second,
		// Generous under -race on two cores; the bench measures latency.
		AdmitTimeout: 2 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	e := &env{t: t, tp: tp, reg: reg, cfg: cfg}
	e.start()
	// Warm each pod's link and neighbour entries (a closed port on its
	// gateway answers RST), so first-packet latency does not show up as
	// a slow verdict.
	for _, p := range tp.Pods {
		gw4 := netip.AddrFrom4([4]byte{10, 244, byte(p.Index), 1})
		gw6 := p.IP6.Prev() // fd00:244:i::1
		for _, gw := range []netip.Addr{gw4, gw6} {
			eventually(t, 5*time.Second, "pod link up", func() error {
				c, err := e.dial(p.Index, netip.AddrPortFrom(gw, 9))
				if err == nil {
					c.Close()
					return nil
				}
				if isRefused(err) {
					return nil
				}
				return err
			})
		}
	}
	return e
}

func (e *env) start() {
	e.t.Helper()
	fw, err := New(e.cfg)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	e.t.Cleanup(func() { fw.Close() })
	e.fw = fw
}

// pol is a short EgressPolicy constructor selecting pod i.
type pol struct {
	pod   int
	mode  policy.EgressMode
	allow []string
	cidrs []string
	ports []policy.EgressPort
}

func (e *env) setPolicies(ps ...pol) {
	e.t.Helper()
	set := &policy.Set{}
	for i, p := range ps {
		set.Egress = append(set.Egress, &policy.EgressPolicy{
			Metadata: policy.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: "default"},
			Spec: policy.EgressPolicySpec{
				Selector:   &policy.WorkloadSelector{MatchLabels: map[string]string{"pod": strconv.Itoa(p.pod)}},
				Allow:      p.allow,
				AllowCIDRs: p.cidrs,
				Ports:      p.ports,
				Mode:       p.mode,
			},
		})
	}
	if err := e.fw.SetPolicies(set, policy.EgressOptions{}); err != nil {
		e.t.Fatalf("SetPolicies: %v", err)
	}
}

func (e *env) admit(pod int, name string, ttl uint32, addrs ...netip.Addr) {
	e.t.Helper()
	p := e.tp.Pods[pod]
	if err := e.fw.Admit([]Grant{{Client: p.IP4, Name: name, Addrs: addrs, TTL: ttl}}); err != nil {
		e.t.Fatalf("Admit: %v", err)
	}
}

// server is an echo server in the outside namespace.
type server struct {
	addr netip.AddrPort
	ln   net.Listener
}

// tcpServer listens on addr:port in the outside namespace and echoes.
func (e *env) tcpServer(addr netip.Addr, port uint16) *server {
	e.t.Helper()
	var ln net.Listener
	if err := e.tp.Outside.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, port).String())
		return err
	}); err != nil {
		e.t.Fatalf("listen: %v", err)
	}
	var wg sync.WaitGroup
	e.t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return &server{addr: netip.AddrPortFrom(addr, port), ln: ln}
}

// dial connects from pod to dst over TCP (3s bound).
func (e *env) dial(pod int, dst netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := e.tp.Pods[pod].Do(func() (err error) {
		c, err = net.DialTimeout("tcp", dst.String(), 3*time.Second)
		return err
	})
	return c, err
}

// echo checks that c moves data both ways.
func echo(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// mustConnect dials and echoes.
func (e *env) mustConnect(pod int, dst netip.AddrPort) {
	e.t.Helper()
	c, err := e.dial(pod, dst)
	if err != nil {
		e.t.Fatalf("pod%d -> %s: %v", pod, dst, err)
	}
	defer c.Close()
	if err := echo(c, "hello"); err != nil {
		e.t.Fatalf("pod%d -> %s: echo: %v", pod, dst, err)
	}
}

// mustRefuse dials and expects a fast TCP reset.
func (e *env) mustRefuse(pod int, dst netip.AddrPort) {
	e.t.Helper()
	start := time.Now()
	c, err := e.dial(pod, dst)
	if err == nil {
		c.Close()
		e.t.Fatalf("pod%d -> %s: connected, want refused", pod, dst)
	}
	if !isRefused(err) {
		e.t.Fatalf("pod%d -> %s: %v, want connection refused", pod, dst, err)
	}
	if d := time.Since(start); d > time.Second {
		e.t.Fatalf("pod%d -> %s: refused after %v, want fast", pod, dst, d)
	}
}

var errConnected = fmt.Errorf("connected")

func isRefused(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection refused")
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	var err error
	for i := 0; i < 100000; i++ {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
	t.Fatalf("%s: not within %v: %v", what, within, err)
}

// ctMark returns the conntrack mark of the node's flow from src to dst
// (original direction), polling until it appears.
func (e *env) ctMark(src, dst netip.Addr, dport uint16) uint32 {
	e.t.Helper()
	c, err := conntrack.Dial(&netlink.Config{NetNS: e.tp.Node.Fd(e.t)})
	if err != nil {
		e.t.Fatalf("conntrack: %v", err)
	}
	defer c.Close()
	var mark uint32
	eventually(e.t, 3*time.Second, "conntrack flow", func() error {
		flows, err := c.Dump(nil)
		if err != nil {
			return err
		}
		for _, f := range flows {
			o := f.TupleOrig
			if o.IP.SourceAddress == src && o.IP.DestinationAddress == dst && o.Proto.DestinationPort == dport {
				mark = f.Mark
				return nil
			}
		}
		return fmt.Errorf("no flow %s -> %s:%d among %d", src, dst, dport, len(flows))
	})
	return mark
}
