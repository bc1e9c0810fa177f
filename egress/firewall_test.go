package egress

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/miekg/dns"

	"github.com/kordon-dev/kordon/policy"
)

func TestEnforceAuditUnmanaged(t *testing.T) {
	e := newEnv(t, 3, nil)
	e.setPolicies(
		pol{pod: 0, allow: []string{"api.example.com"}},
		pol{pod: 1, mode: policy.EgressAudit, allow: []string{"api.example.com"}},
	)
	allowed := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.10"), 8080)
	literal := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.11"), 8080)
	p0, p1, p2 := e.tp.Pods[0].IP4, e.tp.Pods[1].IP4, e.tp.Pods[2].IP4

	// Before any answer, pod0 (Enforce) is refused at once.
	e.mustRefuse(0, allowed.addr)
	e.admit(0, "api.example.com", 300, allowed.addr.Addr())
	e.mustConnect(0, allowed.addr)
	if m := e.ctMark(p0, allowed.addr.Addr(), 8080); m != MarkDNS {
		t.Errorf("pod0 allowed flow mark %#x, want MarkDNS", m)
	}
	// An IP literal no answer gave stays refused.
	e.mustRefuse(0, literal.addr)
	// A name the policy does not allow grants nothing.
	e.admit(0, "evil.example.org", 300, literal.addr.Addr())
	e.mustRefuse(0, literal.addr)
	// Audit and unmanaged pods get through, marked.
	e.mustConnect(1, literal.addr)
	if m := e.ctMark(p1, literal.addr.Addr(), 8080); m != MarkAudit {
		t.Errorf("audit flow mark %#x, want MarkAudit", m)
	}
	e.mustConnect(2, literal.addr)
	if m := e.ctMark(p2, literal.addr.Addr(), 8080); m != MarkUnmanaged {
		t.Errorf("unmanaged flow mark %#x, want MarkUnmanaged", m)
	}
	// pod0's grant opens nothing for pod1 once pod1 enforces too.
	e.setPolicies(
		pol{pod: 0, allow: []string{"api.example.com"}},
		pol{pod: 1, allow: []string{"api.example.com"}},
	)
	e.mustRefuse(1, allowed.addr)
	e.mustConnect(0, allowed.addr)
	// Internal destinations are never filtered: pod0 reaches pod1.
	ln := e.listenPod(1, netip.AddrPortFrom(e.tp.Pods[1].IP4, 9000))
	defer ln.Close()
	e.mustConnect(0, netip.AddrPortFrom(e.tp.Pods[1].IP4, 9000))
	if m := e.ctMark(p0, e.tp.Pods[1].IP4, 9000); m != MarkInternal {
		t.Errorf("internal flow mark %#x, want MarkInternal", m)
	}

	if name, ok := e.fw.Lookup(p0, allowed.addr.Addr()); !ok || name != "api.example.com" {
		t.Fatalf("Lookup = %q, %v", name, ok)
	}
	// The workload's IPv6 address finds the answer given to its IPv4 one.
	if name, ok := e.fw.Lookup(e.tp.Pods[0].IP6, allowed.addr.Addr()); !ok || name != "api.example.com" {
		t.Fatalf("Lookup by IPv6 = %q, %v", name, ok)
	}
	if e.fw.Learned(p1, allowed.addr.Addr()) {
		t.Fatal("Learned for pod1, want false")
	}
	w, fw, ok := e.fw.Workload(e.tp.Pods[0].IP6)
	if !ok || w.Name != "pod0" || fw.Mode != policy.FirewallEnforce {
		t.Fatalf("Workload = %v %v %v", w, fw, ok)
	}
}

func TestUnmanagedNamesRemembered(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies()
	dst := netip.MustParseAddr("198.51.100.7")
	e.admit(0, "cdn.example.net", 300, dst)
	if name, ok := e.fw.Lookup(e.tp.Pods[0].IP4, dst); !ok || name != "cdn.example.net" {
		t.Fatalf("Lookup = %q, %v", name, ok)
	}
	// Not in the kernel: the workload is not managed.
	if n := e.setLen("dns4"); n != 0 {
		t.Fatalf("dns4 has %d elements, want 0", n)
	}
}

func TestExpiryKeepsEstablished(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name := "v4"
		if v6 {
			name = "v6"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, 1, nil) // TTLGrace 1s
			e.setPolicies(pol{pod: 0, allow: []string{"*.example.com"}})
			addr := "198.51.100.20"
			if v6 {
				addr = "2001:db8:100::20"
			}
			srv := e.tcpServer(e.tp.OutsideAddr(t, addr), 8080)
			client := e.tp.Pods[0].IP4
			if v6 {
				client = e.tp.Pods[0].IP6
			}
			admitted := time.Now()
			if err := e.fw.Admit([]Grant{{Client: client, Name: "a.example.com", Addrs: []netip.Addr{srv.addr.Addr()}, TTL: 1}}); err != nil {
				t.Fatal(err)
			}
			c, err := e.dial(0, srv.addr)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			if err := echo(c, "before"); err != nil {
				t.Fatal(err)
			}
			// TTL 1s + grace 1s: the kernel expires the element.
			eventually(t, 6*time.Second, "new connection refused after TTL+grace", func() error {
				c2, err := e.dial(0, srv.addr)
				if err == nil {
					c2.Close()
					return errConnected
				}
				if !isRefused(err) {
					t.Fatalf("dial after expiry: %v", err)
				}
				return nil
			})
			if d := time.Since(admitted); d < 1800*time.Millisecond {
				t.Fatalf("refused %v after Admit, before TTL+grace (2s)", d)
			}
			t.Logf("new connections refused %v after Admit", time.Since(admitted).Round(time.Millisecond))
			// The established connection keeps moving data.
			for i := 0; i < 3; i++ {
				if err := echo(c, strings.Repeat("x", 1000)); err != nil {
					t.Fatalf("established after expiry: %v", err)
				}
			}
		})
	}
}

func TestIPv6Enforce(t *testing.T) {
	e := newEnv(t, 2, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"v6.example.com"}}, pol{pod: 1, allow: []string{"v6.example.com"}})
	srv := e.tcpServer(e.tp.OutsideAddr(t, "2001:db8:100::10"), 8080)
	other := e.tcpServer(e.tp.OutsideAddr(t, "2001:db8:100::11"), 8080)
	e.mustRefuse(0, srv.addr)
	// The answer came over IPv4 (an AAAA query): the grant covers the
	// workload's IPv6 address.
	e.admit(0, "v6.example.com", 300, srv.addr.Addr())
	e.mustConnect(0, srv.addr)
	e.mustRefuse(0, other.addr)
	e.mustRefuse(1, srv.addr)
}

func TestDNSInterception(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	answer := netip.MustParseAddr("198.51.100.99")
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: answer.AsSlice()})
		w.WriteMsg(m)
	})
	for _, dnsAddr := range []netip.Addr{e.tp.DNS4, e.tp.DNS6} {
		ap := netip.AddrPortFrom(dnsAddr, 53).String()
		var pc net.PacketConn
		var ln net.Listener
		if err := e.tp.Node.Do(func() (err error) {
			if pc, err = net.ListenPacket("udp", ap); err != nil {
				return err
			}
			ln, err = net.Listen("tcp", ap)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
			started := make(chan struct{})
			s.NotifyStartedFunc = func() { close(started) }
			go s.ActivateAndServe()
			<-started
			t.Cleanup(func() { s.Shutdown() })
		}
	}
	q := new(dns.Msg)
	q.SetQuestion("api.example.com.", dns.TypeA)
	wire, _ := q.Pack()
	for _, resolver := range []netip.Addr{netip.MustParseAddr("203.0.113.53"), netip.MustParseAddr("2001:db8:100::53")} {
		// UDP: the reply's source is the resolver the pod asked.
		err := e.tp.Pods[0].Do(func() error {
			network := "udp4"
			if resolver.Is6() {
				network = "udp6"
			}
			pc, err := net.ListenPacket(network, ":0")
			if err != nil {
				return err
			}
			defer pc.Close()
			pc.SetDeadline(time.Now().Add(3 * time.Second))
			to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(resolver, 53))
			if _, err := pc.WriteTo(wire, to); err != nil {
				return err
			}
			buf := make([]byte, 1500)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return err
			}
			if got := from.(*net.UDPAddr).AddrPort(); got.Addr().Unmap() != resolver || got.Port() != 53 {
				t.Errorf("UDP answer from %s, want %s:53", got, resolver)
			}
			var m dns.Msg
			if err := m.Unpack(buf[:n]); err != nil || len(m.Answer) != 1 {
				t.Errorf("UDP answer %v %v", &m, err)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("UDP query to %s: %v", resolver, err)
		}
		// TCP.
		err = e.tp.Pods[0].Do(func() error {
			c := &dns.Client{Net: "tcp", Timeout: 3 * time.Second}
			r, _, err := c.Exchange(q, netip.AddrPortFrom(resolver, 53).String())
			if err != nil {
				return err
			}
			if len(r.Answer) != 1 {
				t.Errorf("TCP answer %v", r)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("TCP query to %s: %v", resolver, err)
		}
		if m := e.ctMark(e.podAddr(0, resolver), resolver, 53); m != MarkBypass {
			t.Errorf("bypass flow mark %#x, want MarkBypass", m)
		}
	}
}

func (e *env) podAddr(pod int, like netip.Addr) netip.Addr {
	if like.Is4() {
		return e.tp.Pods[pod].IP4
	}
	return e.tp.Pods[pod].IP6
}

func TestDoTRefused(t *testing.T) {
	e := newEnv(t, 2, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"dns.example.com"}}, pol{pod: 1, mode: policy.EgressAudit, allow: []string{"dns.example.com"}})
	srv := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.30"), 853)
	e.admit(0, "dns.example.com", 300, srv.addr.Addr())
	e.admit(1, "dns.example.com", 300, srv.addr.Addr())
	e.mustRefuse(0, srv.addr)
	e.mustConnect(1, srv.addr) // Audit: logged, let through
}

func TestPorts(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(
		pol{pod: 0, allow: []string{"web.example.com"}, ports: []policy.EgressPort{{Port: 8443}, {Port: 9000, EndPort: 9100}}},
		pol{pod: 0, allow: []string{"any.example.com"}},
		pol{pod: 0, allow: []string{"wide.example.com"}, ports: []policy.EgressPort{{Port: 9050, EndPort: 9300}}},
	)
	a := e.tp.OutsideAddr(t, "198.51.100.40")
	b := e.tp.OutsideAddr(t, "198.51.100.41")
	for _, p := range []uint16{8443, 8080, 9050} {
		e.tcpServer(a, p)
		e.tcpServer(b, p)
	}
	e.admit(0, "web.example.com", 300, a)
	e.mustConnect(0, netip.AddrPortFrom(a, 8443))
	e.mustConnect(0, netip.AddrPortFrom(a, 9050)) // the range (interval set)
	e.mustRefuse(0, netip.AddrPortFrom(a, 8080))  // address allowed, port not
	e.tcpServer(a, 9101)
	e.mustRefuse(0, netip.AddrPortFrom(a, 9101)) // just past the range
	// Another name on the same address with an overlapping range.
	e.admit(0, "wide.example.com", 300, a)
	e.mustConnect(0, netip.AddrPortFrom(a, 9101))
	e.mustConnect(0, netip.AddrPortFrom(a, 9050))
	// A name allowed on any port (another policy) opens every port.
	e.admit(0, "any.example.com", 300, b)
	e.mustConnect(0, netip.AddrPortFrom(b, 8080))
	e.mustConnect(0, netip.AddrPortFrom(b, 9050))
}

func TestCIDRGrant(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(
		pol{pod: 0, cidrs: []string{"203.0.113.0/25", "2001:db8:100:1::/64"}},
		pol{pod: 0, cidrs: []string{"198.51.100.128/25"}, ports: []policy.EgressPort{{Port: 8443}}},
		pol{pod: 0, cidrs: []string{"198.51.100.0/24"}, ports: []policy.EgressPort{{Port: 8440, EndPort: 8445}, {Port: 7000}}},
	)
	in := e.tp.OutsideAddr(t, "203.0.113.20")
	out := e.tp.OutsideAddr(t, "203.0.113.200")
	in6 := e.tp.OutsideAddr(t, "2001:db8:100:1::20")
	pp := e.tp.OutsideAddr(t, "198.51.100.140")
	// Overlapping port grants of two policies (a /25 inside a /24, port
	// ranges overlapping) must not make the kernel refuse the batch.
	for _, a := range []netip.Addr{in, out, in6} {
		e.tcpServer(a, 8080)
	}
	e.tcpServer(pp, 8443)
	e.tcpServer(pp, 8080)
	e.mustConnect(0, netip.AddrPortFrom(in, 8080))
	if m := e.ctMark(e.tp.Pods[0].IP4, in, 8080); m != MarkCIDR {
		t.Errorf("CIDR flow mark %#x, want MarkCIDR", m)
	}
	e.mustConnect(0, netip.AddrPortFrom(in6, 8080))
	e.mustRefuse(0, netip.AddrPortFrom(out, 8080))
	e.mustConnect(0, netip.AddrPortFrom(pp, 8443))
	e.mustRefuse(0, netip.AddrPortFrom(pp, 8080))
	// Dropping the policy withdraws the grant.
	e.setPolicies(pol{pod: 0, cidrs: []string{"203.0.113.128/25"}})
	e.mustRefuse(0, netip.AddrPortFrom(in, 8080))
	e.mustConnect(0, netip.AddrPortFrom(out, 8080))
}

func TestQuarantine(t *testing.T) {
	e := newEnv(t, 2, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}}) // pod1 unmanaged
	srv := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.50"), 8080)
	e.admit(0, "api.example.com", 300, srv.addr.Addr())
	e.mustConnect(0, srv.addr)
	for _, pod := range []int{0, 1} {
		if err := e.fw.QuarantineAddr(e.tp.Pods[pod].IP4, srv.addr.Addr()); err != nil {
			t.Fatal(err)
		}
		e.mustRefuse(pod, srv.addr)
		if err := e.fw.LiftAddr(e.tp.Pods[pod].IP4, srv.addr.Addr()); err != nil {
			t.Fatal(err)
		}
		e.mustConnect(pod, srv.addr)
	}
}

// TestClusterQuarantines: the cluster's set replaces the previous one in
// one call: a pair it drops is lifted (a local quarantine of that pair
// too), a pair it never held is left alone.
func TestClusterQuarantines(t *testing.T) {
	e := newEnv(t, 2, nil)
	e.setPolicies() // both pods unmanaged: everything connects
	a := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.70"), 8080)
	b := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.71"), 8080)
	p0, p1 := e.tp.Pods[0].IP4, e.tp.Pods[1].IP4
	if err := e.fw.QuarantineAddr(p1, b.addr.Addr()); err != nil { // local, never the cluster's
		t.Fatal(err)
	}
	if err := e.fw.SetClusterQuarantines([][2]netip.Addr{{p0, a.addr.Addr()}, {p0, b.addr.Addr()}}); err != nil {
		t.Fatal(err)
	}
	e.mustRefuse(0, a.addr)
	e.mustRefuse(0, b.addr)
	e.mustConnect(1, a.addr)
	if err := e.fw.QuarantineAddr(p0, a.addr.Addr()); err != nil { // local too
		t.Fatal(err)
	}
	if err := e.fw.SetClusterQuarantines([][2]netip.Addr{{p0, b.addr.Addr()}}); err != nil {
		t.Fatal(err)
	}
	e.mustConnect(0, a.addr) // the object was deleted: lifted, the local one with it
	e.mustRefuse(0, b.addr)
	e.mustRefuse(1, b.addr) // local, untouched
	if err := e.fw.SetClusterQuarantines(nil); err != nil {
		t.Fatal(err)
	}
	e.mustConnect(0, b.addr)
	e.mustRefuse(1, b.addr)
	if got := len(e.fw.Quarantines()); got != 1 {
		t.Errorf("%d quarantines left, want the local one", got)
	}
}

// TestRestart: Close leaves the table; a new Firewall adopts it with its
// elements, and established connections never notice.
func TestRestart(t *testing.T) {
	state := t.TempDir() + "/state.json"
	e := newEnv(t, 1, func(c *Config) { c.StateFile = state })
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	srv := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.60"), 8080)
	other := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.61"), 8080)
	e.admit(0, "api.example.com", 300, srv.addr.Addr())
	c, err := e.dial(0, srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := e.fw.QuarantineAddr(e.tp.Pods[0].IP4, netip.MustParseAddr("198.51.100.62")); err != nil {
		t.Fatal(err)
	}
	if err := e.fw.Close(); err != nil {
		t.Fatal(err)
	}
	// Agent down: still enforced.
	e.mustRefuse(0, other.addr)
	if err := echo(c, "during"); err != nil {
		t.Fatalf("established while down: %v", err)
	}
	e.start() // adopt: no SetPolicies yet, the kernel state stands
	if err := echo(c, "after"); err != nil {
		t.Fatalf("established after restart: %v", err)
	}
	e.mustConnect(0, srv.addr)
	e.mustRefuse(0, other.addr)
	if name, ok := e.fw.Lookup(e.tp.Pods[0].IP6, srv.addr.Addr()); !ok || name != "api.example.com" {
		t.Fatalf("Lookup after restart = %q, %v (state file)", name, ok)
	}
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	e.mustConnect(0, srv.addr)

	// A reboot: the table is gone; a new Firewall restores the grants and
	// the quarantine from the state file.
	if err := e.fw.Close(); err != nil {
		t.Fatal(err)
	}
	c2 := e.nft()
	c2.DelTable(&nftables.Table{Name: "kordon", Family: nftables.TableFamilyINet})
	if err := c2.Flush(); err != nil {
		t.Fatal(err)
	}
	e.start()
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	e.mustConnect(0, srv.addr)
	e.mustRefuse(0, other.addr)
	if n := e.setLen("quar4"); n != 1 {
		t.Fatalf("quar4 has %d elements after restore, want 1", n)
	}
	if err := e.fw.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Fatalf("state file after Remove: %v", err)
	}
}

func TestRemoveLeavesNothing(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	e.admit(0, "api.example.com", 300, netip.MustParseAddr("198.51.100.70"))
	if err := e.fw.Remove(); err != nil {
		t.Fatal(err)
	}
	if tables := e.tables(); len(tables) != 0 {
		t.Fatalf("tables after Remove: %v", tables)
	}
	if err := e.fw.Admit([]Grant{{Client: e.tp.Pods[0].IP4, Name: "x", Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.71")}, TTL: 1}}); err != ErrClosed {
		t.Fatalf("Admit after Remove: %v, want ErrClosed", err)
	}
}

func (e *env) nft() *nftables.Conn {
	e.t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(e.tp.Node.Fd(e.t)))
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) tables() []string {
	e.t.Helper()
	ts, err := e.nft().ListTables()
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, t := range ts {
		out = append(out, t.Name)
	}
	return out
}

// setElems reads a set of the firewall's table back from the kernel.
func (e *env) setElems(name string) []nftables.SetElement {
	e.t.Helper()
	c := e.nft()
	s, err := c.GetSetByName(&nftables.Table{Name: "kordon", Family: nftables.TableFamilyINet}, name)
	if err != nil {
		e.t.Fatal(err)
	}
	es, err := c.GetSetElements(s)
	if err != nil {
		e.t.Fatal(err)
	}
	return es
}

func (e *env) setLen(name string) int { return len(e.setElems(name)) }

func (e *env) listenPod(pod int, ap netip.AddrPort) net.Listener {
	e.t.Helper()
	var ln net.Listener
	if err := e.tp.Pods[pod].Do(func() (err error) {
		ln, err = net.Listen("tcp", ap.String())
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					c.Write(buf[:n])
				}
			}()
		}
	}()
	return ln
}

// TestQuarantineHTTP: the address quarantines are listed, added and lifted
// over HTTP, and the kernel follows.
func TestQuarantineHTTP(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies() // unmanaged: only a quarantine can block it
	srv := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.70"), 8080)
	e.mustConnect(0, srv.addr)
	h := e.fw.Handler()
	do := func(method, path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		return rec
	}
	pair := "/v1/egress/quarantines/" + e.tp.Pods[0].IP4.String() + "/" + srv.addr.Addr().String()
	if rec := do("POST", pair); rec.Code != http.StatusNoContent {
		t.Fatalf("POST: %d %s", rec.Code, rec.Body)
	}
	e.mustRefuse(0, srv.addr)
	rec := do("GET", "/v1/egress/quarantines")
	want := `{"quarantines":[{"client":"10.244.0.2","destination":"198.51.100.70"}]}`
	if got := strings.TrimSpace(rec.Body.String()); got != want {
		t.Fatalf("GET: %s, want %s", got, want)
	}
	if rec := do("DELETE", pair); rec.Code != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", rec.Code, rec.Body)
	}
	e.mustConnect(0, srv.addr)
	if rec := do("DELETE", pair); rec.Code != http.StatusNotFound {
		t.Fatalf("second DELETE: %d, want 404", rec.Code)
	}
	if rec := do("DELETE", "/v1/egress/quarantines/bogus/1.2.3.4"); rec.Code != http.StatusBadRequest {
		t.Fatalf("bad address: %d, want 400", rec.Code)
	}
}
