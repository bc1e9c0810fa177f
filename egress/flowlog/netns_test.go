package flowlog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/kordon-dev/kordon/egress"
	"github.com/kordon-dev/kordon/internal/netns"
	"github.com/kordon-dev/kordon/internal/workload"
)

// lines collects the flow log, one Record per line, and signals each write.
type lines struct {
	mu   sync.Mutex
	buf  []byte
	recs []Record
	ch   chan struct{}
}

func newLines() *lines { return &lines{ch: make(chan struct{}, 1)} }

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		var r Record
		if err := json.Unmarshal(l.buf[:i], &r); err == nil {
			l.recs = append(l.recs, r)
		}
		l.buf = l.buf[i+1:]
	}
	l.mu.Unlock()
	select {
	case l.ch <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (l *lines) all() []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Record(nil), l.recs...)
}

// wait returns the first record matching ok, failing t after timeout.
func (l *lines) wait(t *testing.T, timeout time.Duration, what string, ok func(*Record) bool) Record {
	t.Helper()
	return waitFor(t, timeout, what+" record", l.ch, l.all, ok)
}

// waitFor returns the first item of all() matching ok, looking again each
// time changed signals, and fails t after timeout.
func waitFor[T any](t *testing.T, timeout time.Duration, what string, changed <-chan struct{}, all func() []T, ok func(*T) bool) T {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		for _, v := range all() {
			if ok(&v) {
				return v
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no %s within %s; have: %+v", what, timeout, all())
		}
	}
}

// sink records published alerts.
type sink struct {
	mu     sync.Mutex
	alerts []Alert
	ch     chan struct{}
}

func newSink() *sink { return &sink{ch: make(chan struct{}, 1)} }

func (s *sink) Publish(_ context.Context, a Alert) error {
	s.mu.Lock()
	s.alerts = append(s.alerts, a)
	s.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
	default:
	}
	return nil
}

func (s *sink) all() []Alert {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Alert(nil), s.alerts...)
}

// wait returns the first alert matching ok, failing t after timeout.
func (s *sink) wait(t *testing.T, timeout time.Duration, what string, ok func(*Alert) bool) Alert {
	t.Helper()
	return waitFor(t, timeout, what+" alert", s.ch, s.all, ok)
}

// fakeNames answers for a fixed set of (client, dst).
type fakeNames map[[2]netip.Addr]string

func (f fakeNames) Lookup(c, d netip.Addr) (string, bool) {
	n, ok := f[[2]netip.Addr{c, d}]
	return n, ok
}
func (f fakeNames) Learned(c, d netip.Addr) bool { _, ok := f[[2]netip.Addr{c, d}]; return ok }

// installRules programs the node's forward chain as kordon's rules would,
// in miniature: packets to blocked are logged to kordon's NFLOG group
// with PrefixBlockPolicy and rejected, TCP to port 853 likewise with
// PrefixBlockDoT, UDP to port 53 gets MarkBypass, and every other new
// connection MarkUnmanaged.
func installRules(t *testing.T, fd int, blocked ...netip.Addr) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "flowlogtest"})
	policy := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "fwd", Table: tbl, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policy})
	for _, a := range blocked {
		proto, off := byte(unix.NFPROTO_IPV4), uint32(16)
		if a.Is6() {
			proto, off = unix.NFPROTO_IPV6, 24
		}
		c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(a.BitLen() / 8)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
			&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: egress.LogGroup, Data: []byte(egress.PrefixBlockPolicy)},
			&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED},
		}})
	}
	c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(853)},
		&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: egress.LogGroup, Data: []byte(egress.PrefixBlockDoT)},
		&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED},
	}})
	// Stands in for DNS interception: the real rules redirect to dnsguard.
	c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(53)},
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(egress.MarkBypass)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(egress.MarkUnmanaged)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}})
	if err := c.Flush(); err != nil {
		t.Fatalf("nftables: %v", err)
	}
}

// listen starts a listener in ns.
func listen(t *testing.T, ns *netns.NS, network string, addr netip.AddrPort) (ln net.Listener, pc net.PacketConn) {
	t.Helper()
	err := ns.Do(func() (err error) {
		if network == "udp" {
			pc, err = net.ListenPacket("udp", addr.String())
		} else {
			ln, err = net.Listen("tcp", addr.String())
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if ln != nil {
			ln.Close()
		}
		if pc != nil {
			pc.Close()
		}
	})
	return ln, pc
}

// dial connects from ns.
func dial(t *testing.T, ns *netns.NS, network, addr string) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout(network, addr, 5*time.Second)
		return err
	})
	return c, err
}

func addrPort(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

// upload sends n bytes over a new TCP connection from pod to dst, closes
// its side and waits until the server has read everything and closed.
func upload(t *testing.T, pod *netns.Pod, ln net.Listener, n int) netip.AddrPort {
	t.Helper()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		k, _ := io.Copy(io.Discard, c)
		_, _ = c.Write([]byte("ok"))
		c.Close()
		got <- k
	}()
	local, err := send(pod, ln.Addr().String(), n)
	if err != nil {
		t.Fatal(err)
	}
	if k := <-got; k != int64(n) {
		t.Fatalf("server read %d bytes, want %d", k, n)
	}
	return local
}

// send uploads n bytes from pod to addr over a new connection and waits
// for the server's answer and close.
func send(pod *netns.Pod, addr string, n int) (netip.AddrPort, error) {
	var c net.Conn
	if err := pod.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(make([]byte, n)); err != nil {
		return netip.AddrPort{}, err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return netip.AddrPort{}, err
	}
	if b, err := io.ReadAll(c); err != nil || string(b) != "ok" {
		return netip.AddrPort{}, fmt.Errorf("answer %q: %v", b, err)
	}
	return netip.ParseAddrPort(c.LocalAddr().String())
}

// serveSends answers send's connections on ln until ln is closed: each
// is read to EOF and answered "ok".
func serveSends(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			_, _ = io.Copy(io.Discard, c)
			_, _ = c.Write([]byte("ok"))
		}()
	}
}

// TestFlowLogNetns drives real traffic from a pod through the node's
// forward hook to outside servers and checks the records and alerts.
func TestFlowLogNetns(t *testing.T) {
	tp := netns.NewTopology(t, 1)
	pod := tp.Pods[0]
	fd := tp.Node.Fd(t)
	// Short UDP timeouts so the UDP flow ends within the test (the Dump
	// evicts expired entries, which sends their Destroy).
	tp.Node.Sysctl(t, "net.netfilter.nf_conntrack_udp_timeout", "1")
	tp.Node.Sysctl(t, "net.netfilter.nf_conntrack_udp_timeout_stream", "1")

	named := tp.OutsideAddr(t, "203.0.113.10")
	leak := tp.OutsideAddr(t, "198.51.100.7")
	blocked := tp.OutsideAddr(t, "203.0.113.66")
	udpDst := tp.OutsideAddr(t, "198.51.100.9")
	longDst := tp.OutsideAddr(t, "2001:db8:100::20")
	resolver := tp.OutsideAddr(t, "198.51.100.53")
	dotResolver := tp.OutsideAddr(t, "198.51.100.54")
	manyDst := tp.OutsideAddr(t, "203.0.113.30")
	blocked6 := tp.OutsideAddr(t, "2001:db8:100::66")
	installRules(t, fd, blocked, blocked6)

	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{{Name: "cache-0", Namespace: "shop", ServiceAccount: "cache", IPs: []netip.Addr{pod.IP4, pod.IP6}}})
	log, alerts := newLines(), newSink()
	l, err := New(Config{
		NetNSFd: fd, Registry: reg, Node: "node-a", Log: log, Alerts: alerts,
		Names:    fakeNames{{pod.IP4, named}: "api.example.com"},
		Interval: time.Second, VolumeThreshold: 512 << 10, Internal: tp.Internal,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- l.Run(ctx) }()
	t.Cleanup(func() {
		// Close stops Run, which writes out what is queued.
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
		cancel()
		if err := l.Run(ctx); !errors.Is(err, ErrClosed) {
			t.Errorf("Run after Close: %v, want ErrClosed", err)
		}
	})

	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, r := range log.all() {
			b, _ := json.Marshal(r)
			t.Logf("record %s", b)
		}
		for _, a := range alerts.all() {
			b, _ := json.Marshal(a)
			t.Logf("alert %s", b)
		}
	})
	const size = 1 << 20
	t.Run("tcp upload", func(t *testing.T) {
		ln, _ := listen(t, tp.Outside, "tcp", netip.AddrPortFrom(named, 0))
		local := upload(t, pod, ln, size)
		r := log.wait(t, 10*time.Second, "final upload", func(r *Record) bool { return r.Final && r.SPort == local.Port() && r.Dst == named })
		// Headers: at most 80 bytes (IPv4 + TCP with options) a packet;
		// under load a few retransmitted bytes (conntrack counts them).
		if r.BytesOut < size || r.BytesOut > size+80*r.PacketsOut+size/50 {
			t.Errorf("bytesOut %d (%d packets), want %d plus headers", r.BytesOut, r.PacketsOut, size)
		}
		if r.BytesIn == 0 || r.BytesIn > 64<<10 {
			t.Errorf("bytesIn %d, want a few ACKs", r.BytesIn)
		}
		want := Client{IP: pod.IP4, Namespace: "shop", Pod: "cache-0", ServiceAccount: "cache", SPIFFEID: "spiffe://cluster.local/ns/shop/sa/cache", Node: "node-a"}
		if r.Client != want || r.Proto != "tcp" || r.Verdict != VerdictAllowed || r.DNSName != "api.example.com" || r.Src != pod.IP4 || r.DPort != addrPort(t, ln.Addr()).Port() {
			t.Errorf("record %+v, want client %+v, tcp, allowed, dnsName api.example.com", r, want)
		}
		if r.Duration <= 0 {
			t.Errorf("durationSeconds %v", r.Duration)
		}
		a := alerts.wait(t, 5*time.Second, "egress-volume", func(a *Alert) bool { return a.Kind == KindEgressVolume && a.Dst.Addr() == named })
		if a.Client.Pod != "cache-0" || a.Severity != "medium" || a.Evidence["bytes"].(int64) <= 512<<10 || a.Evidence["dnsName"] != "api.example.com" {
			t.Errorf("volume alert %+v", a)
		}

		// A flush destroys the TIME_WAIT entry: its Destroy must not write
		// the flow again. A second upload's final record is the marker
		// that the Destroy events before it were handled.
		ct, err := conntrack.Dial(&netlink.Config{NetNS: fd})
		if err != nil {
			t.Fatal(err)
		}
		defer ct.Close()
		if err := ct.Flush(); err != nil {
			t.Fatal(err)
		}
		marker := upload(t, pod, ln, 1000)
		log.wait(t, 10*time.Second, "marker", func(r *Record) bool { return r.Final && r.SPort == marker.Port() && r.Dst == named })
		n := 0
		for _, r := range log.all() {
			if r.Final && r.SPort == local.Port() && r.Dst == named {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d final records for the upload, want 1", n)
		}
		for _, a := range alerts.all() {
			if a.Kind == KindDirectEgress && a.Dst.Addr() == named {
				t.Errorf("direct-egress for an address a DNS answer gave: %+v", a)
			}
		}
	})

	t.Run("reset", func(t *testing.T) {
		// An RST moves the entry to CLOSE at once; its Destroy would come
		// only with the garbage collector's sweep.
		ln, _ := listen(t, tp.Outside, "tcp", netip.AddrPortFrom(named, 0))
		read := make(chan int64, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				read <- -1
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			n, _ := io.CopyN(io.Discard, c, 5000)
			read <- n
			_, _ = io.Copy(io.Discard, c)
		}()
		c, err := dial(t, pod.NS, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		local := addrPort(t, c.LocalAddr())
		if _, err := c.Write(make([]byte, 5000)); err != nil {
			t.Fatal(err)
		}
		if n := <-read; n != 5000 {
			t.Fatalf("server read %d", n)
		}
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close() // RST
		r := log.wait(t, 10*time.Second, "final reset", func(r *Record) bool { return r.Final && r.SPort == local.Port() && r.Dst == named })
		if r.BytesOut < 5000 || r.BytesOut > 5000+80*r.PacketsOut {
			t.Errorf("record %+v, want 5000 bytes out plus headers", r)
		}
	})

	t.Run("direct egress", func(t *testing.T) {
		// The backdoored-image case: a Redis image talks to an outside
		// address no DNS answer gave it.
		ln, _ := listen(t, tp.Outside, "tcp", netip.AddrPortFrom(leak, 6379))
		local := upload(t, pod, ln, 4000)
		r := log.wait(t, 10*time.Second, "final leak", func(r *Record) bool { return r.Final && r.SPort == local.Port() && r.Dst == leak })
		if r.DNSName != "" || r.DPort != 6379 || r.BytesOut < 4000 {
			t.Errorf("record %+v", r)
		}
		a := alerts.wait(t, 5*time.Second, "direct-egress", func(a *Alert) bool { return a.Kind == KindDirectEgress && a.Dst.Addr() == leak })
		if a.Action != ActionAlerted || a.Severity != "high" || a.Dst.Port() != 6379 || a.Proto != "tcp" || a.Client.Pod != "cache-0" {
			t.Errorf("alert %+v", a)
		}
	})

	t.Run("blocked attempt", func(t *testing.T) {
		_, err := dial(t, pod.NS, "tcp", netip.AddrPortFrom(blocked, 6379).String())
		if err == nil {
			t.Fatal("connection to the blocked address succeeded")
		}
		r := log.wait(t, 10*time.Second, "blocked", func(r *Record) bool { return r.Verdict == VerdictBlocked && r.Dst == blocked })
		if r.Reason != "policy" || r.DPort != 6379 || r.Proto != "tcp" || !r.Final || r.BytesOut != 0 || r.Client.Pod != "cache-0" {
			t.Errorf("record %+v", r)
		}
		a := alerts.wait(t, 5*time.Second, "direct-egress (blocked)", func(a *Alert) bool { return a.Kind == KindDirectEgress && a.Dst.Addr() == blocked })
		if a.Action != ActionBlocked || a.Evidence["reason"] != "policy" {
			t.Errorf("alert %+v", a)
		}
		// IPv6, UDP: the parser walks the IPv6 header to the ports.
		c, err := dial(t, pod.NS, "udp", netip.AddrPortFrom(blocked6, 5353).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		r6 := log.wait(t, 10*time.Second, "blocked ipv6", func(r *Record) bool { return r.Verdict == VerdictBlocked && r.Dst == blocked6 })
		if r6.Proto != "udp" || r6.DPort != 5353 || r6.Src != pod.IP6 || r6.SPort != addrPort(t, c.LocalAddr()).Port() || r6.Client.Pod != "cache-0" {
			t.Errorf("record %+v", r6)
		}
	})

	t.Run("udp", func(t *testing.T) {
		_, pc := listen(t, tp.Outside, "udp", netip.AddrPortFrom(udpDst, 0))
		go func() {
			buf := make([]byte, 2048)
			for range 3 {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo(buf[:n/2], from)
			}
		}()
		c, err := dial(t, pod.NS, "udp", pc.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		for range 3 {
			if _, err := c.Write(make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Read(buf); err != nil {
				t.Fatal(err)
			}
		}
		local := addrPort(t, c.LocalAddr())
		r := log.wait(t, 20*time.Second, "final udp", func(r *Record) bool { return r.Final && r.SPort == local.Port() && r.Dst == udpDst })
		// Exactly: 3 datagrams of 1000 bytes plus 28 bytes of headers, and
		// 3 replies of 500.
		if r.Proto != "udp" || r.PacketsOut != 3 || r.BytesOut != 3*1028 || r.PacketsIn != 3 || r.BytesIn != 3*528 {
			t.Errorf("record %+v, want 3x1028 bytes out, 3x528 in", r)
		}
	})

	t.Run("resolver bypass", func(t *testing.T) {
		_, pc := listen(t, tp.Outside, "udp", netip.AddrPortFrom(resolver, 53))
		go func() {
			buf := make([]byte, 512)
			n, from, err := pc.ReadFrom(buf)
			if err == nil {
				_, _ = pc.WriteTo(buf[:n], from)
			}
		}()
		c, err := dial(t, pod.NS, "udp", pc.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("a dns query")); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Read(make([]byte, 512)); err != nil {
			t.Fatal(err)
		}
		a := alerts.wait(t, 5*time.Second, "resolver-bypass", func(a *Alert) bool { return a.Kind == KindResolverBypass && a.Dst.Port() == 53 })
		if a.Evidence["resolver"] != resolver.String() || a.Evidence["resolverPort"] != uint16(53) || a.Action != ActionAlerted || a.Severity != "medium" {
			t.Errorf("alert %+v", a)
		}
		local := addrPort(t, c.LocalAddr())
		r := log.wait(t, 20*time.Second, "final bypass", func(r *Record) bool { return r.Final && r.SPort == local.Port() && r.Dst == resolver })
		if r.Verdict != VerdictAllowed || r.BytesOut != 28+11 || r.DPort != 53 {
			t.Errorf("record %+v", r)
		}
	})

	t.Run("dot blocked", func(t *testing.T) {
		if _, err := dial(t, pod.NS, "tcp", netip.AddrPortFrom(dotResolver, 853).String()); err == nil {
			t.Fatal("DoT connection succeeded")
		}
		r := log.wait(t, 10*time.Second, "blocked dot", func(r *Record) bool { return r.Verdict == VerdictBlocked && r.DPort == 853 })
		if r.Reason != "dot" || r.Dst != dotResolver {
			t.Errorf("record %+v", r)
		}
		a := alerts.wait(t, 5*time.Second, "resolver-bypass (dot)", func(a *Alert) bool { return a.Kind == KindResolverBypass && a.Dst.Port() == 853 })
		if a.Action != ActionBlocked || a.Evidence["reason"] != "dot" {
			t.Errorf("alert %+v", a)
		}
	})

	t.Run("many flows", func(t *testing.T) {
		ln, _ := listen(t, tp.Outside, "tcp", netip.AddrPortFrom(manyDst, 0))
		go serveSends(ln)
		const flows, workers = 400, 8
		sizes := make(map[uint16]int, flows)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < flows; i += workers {
					n := 1000 + 37*i
					local, err := send(pod, ln.Addr().String(), n)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					sizes[local.Port()] = n
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		log.wait(t, 20*time.Second, "all many-flow finals", func(*Record) bool {
			n := 0
			for _, r := range log.all() {
				if r.Final && r.Dst == manyDst {
					n++
				}
			}
			return n >= flows
		})
		seen := map[uint16]int{}
		for _, r := range log.all() {
			if !r.Final || r.Dst != manyDst {
				continue
			}
			seen[r.SPort]++
			n, ok := sizes[r.SPort]
			if !ok {
				t.Errorf("record for an unknown flow %+v", r)
				continue
			}
			if r.BytesOut < uint64(n) || r.BytesOut > uint64(n)+80*r.PacketsOut {
				t.Errorf("sport %d: bytesOut %d (%d packets) for %d bytes sent", r.SPort, r.BytesOut, r.PacketsOut, n)
			}
		}
		for port := range sizes {
			if seen[port] != 1 {
				t.Errorf("sport %d: %d final records, want 1", port, seen[port])
			}
		}
	})

	t.Run("long flow", func(t *testing.T) {
		ln, _ := listen(t, tp.Outside, "tcp", netip.AddrPortFrom(longDst, 0))
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}()
		c, err := dial(t, pod.NS, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		local := addrPort(t, c.LocalAddr())
		// Keep sending until an interval record shows up (bounded).
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for range 400 {
				select {
				case <-stop:
					return
				case <-tick.C:
					if _, err := c.Write(make([]byte, 1000)); err != nil {
						return
					}
				}
			}
		}()
		r := log.wait(t, 15*time.Second, "interval", func(r *Record) bool { return !r.Final && r.SPort == local.Port() && r.Dst == longDst && r.BytesOut > 0 })
		close(stop)
		<-done
		if r.Src != pod.IP6 || r.Dst != longDst || r.Client.Pod != "cache-0" || r.PacketsOut == 0 || r.Duration <= 0 {
			t.Errorf("interval record %+v", r)
		}
		c.Close()
		f := log.wait(t, 10*time.Second, "final long", func(r *Record) bool { return r.Final && r.SPort == local.Port() && r.Dst == longDst })
		if f.BytesOut < r.BytesOut || f.Duration < r.Duration {
			t.Errorf("final %+v has less than the interval record %+v", f, r)
		}
	})
}

// stallNames blocks the first Lookup until release is closed, stalling the
// event loop so that the event socket overruns.
type stallNames struct {
	once    sync.Once
	release chan struct{}
}

func (s *stallNames) Lookup(netip.Addr, netip.Addr) (string, bool) {
	s.once.Do(func() { <-s.release })
	return "", false
}
func (s *stallNames) Learned(netip.Addr, netip.Addr) bool { return false }

// TestFlowLogOverrun stalls the event loop while thousands of connections
// come and go, so the kernel drops events (ENOBUFS); the overrun is
// counted, a Dump resynchronises, and every connection still gets exactly
// one final record.
func TestFlowLogOverrun(t *testing.T) {
	tp := netns.NewTopology(t, 1)
	pod := tp.Pods[0]
	fd := tp.Node.Fd(t)
	dst := tp.OutsideAddr(t, "203.0.113.40")
	installRules(t, fd, tp.OutsideAddr(t, "203.0.113.66"))
	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{{Name: "burst", Namespace: "shop", IPs: []netip.Addr{pod.IP4}}})
	names := &stallNames{release: make(chan struct{})}
	log := newLines()
	l, err := New(Config{NetNSFd: fd, Registry: reg, Log: log, Names: names, Interval: time.Second, Internal: tp.Internal})
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- l.Run(context.Background()) }()
	t.Cleanup(func() {
		l.Close()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	released := false
	release := func() {
		if !released {
			released = true
			close(names.release)
		}
	}
	t.Cleanup(release)

	ln, _ := listen(t, tp.Outside, "tcp", netip.AddrPortFrom(dst, 80))
	go serveSends(ln)
	// About 7 events a connection; 8 MiB of socket buffer holds fewer than
	// 10,000 of them, plus 1,024 queued batches.
	const flows, workers = 3000, 8
	ports := make(chan uint16, flows)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < flows; i += workers {
				local, err := send(pod, ln.Addr().String(), 100)
				if err != nil {
					t.Error(err)
					return
				}
				ports <- local.Port()
			}
		}()
	}
	wg.Wait()
	close(ports)
	if t.Failed() {
		return
	}
	release()
	want := map[uint16]bool{}
	for p := range ports {
		want[p] = true
	}
	finals := func() map[uint16]int {
		got := map[uint16]int{}
		for _, r := range log.all() {
			if r.Final && r.Dst == dst {
				got[r.SPort]++
			}
		}
		return got
	}
	log.wait(t, 60*time.Second, "all finals", func(*Record) bool { return len(finals()) >= len(want) })
	if n := testutil.ToFloat64(l.metrics.overruns); n == 0 {
		t.Errorf("no overrun counted; the test did not overrun the socket")
	}
	got := finals()
	for p := range want {
		if got[p] != 1 {
			t.Errorf("sport %d: %d final records, want 1", p, got[p])
		}
	}
	t.Logf("overruns %v, events %v, records %v", testutil.ToFloat64(l.metrics.overruns), testutil.ToFloat64(l.metrics.events), len(log.all()))
}

// TestFlowLogWithoutFirewall: with no rule using conntrack in the node the
// kernel tracks nothing; New's own table (a hookless chain with a ct
// expression) turns tracking on, so flows are logged, and Close removes
// the table.
func TestFlowLogWithoutFirewall(t *testing.T) {
	tp := netns.NewTopology(t, 1)
	pod := tp.Pods[0]
	fd := tp.Node.Fd(t)
	dst := tp.OutsideAddr(t, "203.0.113.50")
	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{{Name: "web", Namespace: "shop", IPs: []netip.Addr{pod.IP4}}})
	log := newLines()
	l, err := New(Config{NetNSFd: fd, Registry: reg, Log: log, Interval: time.Second, Internal: tp.Internal})
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- l.Run(context.Background()) }()
	closed := false
	t.Cleanup(func() {
		if !closed {
			l.Close()
			<-runErr
		}
	})
	ln, _ := listen(t, tp.Outside, "tcp", netip.AddrPortFrom(dst, 443))
	local := upload(t, pod, ln, 20000)
	r := log.wait(t, 10*time.Second, "final", func(r *Record) bool { return r.Final && r.SPort == local.Port() && r.Dst == dst })
	if r.BytesOut < 20000 || r.Verdict != VerdictAllowed || r.Client.Pod != "web" {
		t.Errorf("record %+v", r)
	}
	closed = true
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-runErr; err != nil {
		t.Errorf("Run: %v", err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tbl := range tables {
		if tbl.Name == conntrackTable {
			t.Errorf("table %s left after Close", tbl.Name)
		}
	}
}

// TestGetMissingEntry: a Get for an entry that is gone is recognised as
// such (the flow then waits for its Destroy instead of being written with
// old counters).
func TestGetMissingEntry(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "get")
	d, err := dialDump(ns.Fd(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	f := tcpFlow(1, netip.MustParseAddr("10.244.0.2"), 40000, netip.MustParseAddrPort("198.51.100.7:6379"), 0)
	if _, err := d.get(f.TupleOrig, 0); !errNotFound(err) {
		t.Errorf("get of a missing entry: %v, want ENOENT", err)
	}
}
