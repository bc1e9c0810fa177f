package egress

import (
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/kordon-dev/kordon/policy"
)

func TestPortBlocksOf(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		a, b := uint16(r.IntN(65536)), uint16(r.IntN(65536))
		if i < 4 {
			a, b = []uint16{0, 1, 9000, 65535}[i], []uint16{65535, 1, 9100, 65535}[i]
		}
		if a > b {
			a, b = b, a
		}
		next := int(a)
		blocks := portBlocksOf(a, b)
		for _, blk := range blocks {
			if int(blk.Start) != next || int(blk.Start)%blk.Size != 0 {
				t.Fatalf("%d-%d: block %+v at %d", a, b, blk, next)
			}
			next += blk.Size
		}
		if next != int(b)+1 {
			t.Fatalf("%d-%d: blocks end at %d", a, b, next-1)
		}
		if len(blocks) > 100 {
			t.Fatalf("%d-%d: %d blocks", a, b, len(blocks))
		}
	}
}

// TestDisjointBoxes: random overlapping grants become boxes that do not
// overlap and allow exactly what some grant allows.
func TestDisjointBoxes(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(3, 4))
	prefixes := []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16", "192.0.2.0/24", "192.0.2.128/25"}
	protos := []string{"tcp", "udp"}
	for round := 0; round < 200; round++ {
		var gs []portGrant
		for i := 0; i < 1+r.IntN(6); i++ {
			a := uint16(r.IntN(100))
			gs = append(gs, portGrant{netip.MustParsePrefix(prefixes[r.IntN(len(prefixes))]),
				policy.PortRange{Proto: protos[r.IntN(2)], First: a, Last: a + uint16(r.IntN(20))}})
		}
		boxes := disjointBoxes(gs, &fam4)
		for i := range boxes {
			for j := i + 1; j < len(boxes); j++ {
				x, y := boxes[i], boxes[j]
				if x.proto == y.proto && x.p0 <= y.p1 && y.p0 <= x.p1 && x.first.Compare(y.last) <= 0 && y.first.Compare(x.last) <= 0 {
					t.Fatalf("round %d: boxes %+v and %+v overlap", round, x, y)
				}
			}
		}
		for k := 0; k < 500; k++ {
			addr := netip.MustParsePrefix(prefixes[r.IntN(len(prefixes))]).Addr()
			b := addr.As4()
			b[2], b[3] = byte(r.IntN(4)), byte(r.IntN(256))
			addr = netip.AddrFrom4(b)
			proto := protos[r.IntN(2)]
			port := uint16(r.IntN(130))
			want := false
			for _, g := range gs {
				if g.prefix.Contains(addr) && g.ports.Proto == proto && g.ports.First <= port && port <= g.ports.Last {
					want = true
				}
			}
			pn, _ := protoNum(proto)
			got := false
			for _, x := range boxes {
				if x.proto == pn && x.p0 <= port && port <= x.p1 && x.first.Compare(addr) <= 0 && addr.Compare(x.last) <= 0 {
					got = true
				}
			}
			if got != want {
				t.Fatalf("round %d: %s %s/%d: boxes allow %v, grants %v (%+v -> %+v)", round, addr, proto, port, got, want, gs, boxes)
			}
		}
	}
}

func TestMergeRanges(t *testing.T) {
	t.Parallel()
	ps := []netip.Prefix{
		netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("11.0.0.0/8"), netip.MustParsePrefix("192.0.2.0/25"),
		netip.MustParsePrefix("192.0.2.128/25"), netip.MustParsePrefix("fd00::/8"),
	}
	got := mergeRanges(ps, &fam4)
	want := [][2]string{{"10.0.0.0", "11.255.255.255"}, {"192.0.2.0", "192.0.2.255"}}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i, w := range want {
		if got[i][0].String() != w[0] || got[i][1].String() != w[1] {
			t.Fatalf("range %d = %v, want %v", i, got[i], w)
		}
	}
}

// TestAdmitTimeoutFailsClosed: a kernel that does not answer in time
// makes Admit fail (the caller withholds the answer).
func TestAdmitTimeoutFailsClosed(t *testing.T) {
	e := newEnv(t, 1, func(c *Config) { c.AdmitTimeout = 50 * time.Millisecond })
	e.setPolicies(pol{pod: 0, allow: []string{"slow.example.com"}})
	e.fw.progMu.Lock() // the programmer is busy
	start := time.Now()
	err := e.fw.Admit([]Grant{{Client: e.tp.Pods[0].IP4, Name: "slow.example.com", Addrs: []netip.Addr{netip.MustParseAddr("198.51.100.1")}, TTL: 30}})
	e.fw.progMu.Unlock()
	if err != ErrAdmitTimeout {
		t.Fatalf("Admit = %v, want ErrAdmitTimeout", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Admit took %v", d)
	}
}

// TestCorruptStateFile: a damaged state file is reported and ignored;
// New still programs the table.
func TestCorruptStateFile(t *testing.T) {
	state := t.TempDir() + "/state.json"
	if err := os.WriteFile(state, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	e := newEnv(t, 1, func(c *Config) {
		c.StateFile = state
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	e.mustRefuse(0, netip.MustParseAddrPort("198.51.100.1:80"))
	if !strings.Contains(logs.String(), "egress state not restored") {
		t.Fatalf("logs: %s", logs.String())
	}
	e.admit(0, "api.example.com", 300, netip.MustParseAddr("198.51.100.2"))
	if err := e.fw.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := loadState(state)
	if err != nil || st == nil {
		t.Fatalf("state after Close: %v %v", st, err)
	}
	if len(st.Sets) != 1 || st.Sets[0].Name != "dns4" || len(st.Sets[0].Records) != 16 {
		t.Fatalf("saved sets %+v", st.Sets)
	}
}

// TestBadGrantAddress: an invalid address in one grant does not fail the
// batch for the others.
func TestBadGrantAddress(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	srv := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.130"), 8080)
	if err := e.fw.Admit([]Grant{
		{Client: e.tp.Pods[0].IP4, Name: "api.example.com", Addrs: []netip.Addr{{}}, TTL: 60},
		{Client: e.tp.Pods[0].IP4, Name: "api.example.com", Addrs: []netip.Addr{{}, srv.addr.Addr()}, TTL: 60},
	}); err != nil {
		t.Fatal(err)
	}
	e.mustConnect(0, srv.addr)
	if err := e.fw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.fw.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := e.fw.Remove(); err != ErrClosed {
		t.Fatalf("Remove after Close: %v, want ErrClosed", err)
	}
}

// TestAdoptReplacesForeignSet: a table left by an older version with a
// set of another definition is adopted; that set is replaced, the rest
// kept.
func TestAdoptReplacesForeignSet(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	srv := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.140"), 8080)
	e.admit(0, "api.example.com", 300, srv.addr.Addr())
	if err := e.fw.Close(); err != nil {
		t.Fatal(err)
	}
	// An "older version" made quar6 a plain address set.
	c := e.nft()
	tb := &nftables.Table{Name: "kordon", Family: nftables.TableFamilyINet}
	for _, ch := range []string{"pod6"} {
		c.FlushChain(&nftables.Chain{Name: ch, Table: tb})
	}
	c.DelSet(&nftables.Set{Name: "quar6", Table: tb})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := c.AddSet(&nftables.Set{Name: "quar6", Table: tb, KeyType: nftables.TypeIP6Addr, ID: 1}, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	e.start()
	s, err := c.GetSetByName(tb, "quar6")
	if err != nil || !s.Concatenation {
		t.Fatalf("quar6 after adoption: %+v %v", s, err)
	}
	e.mustConnect(0, srv.addr) // dns4 kept its element
}

// TestRefreshExtendsTimeout: a later answer with a longer TTL extends the
// kernel element (kernel 6.18 updates the timeout of an element added
// again; measured), and a shorter one does not shorten it.
func TestRefreshExtendsTimeout(t *testing.T) {
	e := newEnv(t, 1, nil) // TTLGrace 1s
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	dst := netip.MustParseAddr("198.51.100.150")
	expires := func() time.Duration {
		es := e.setElems("dns4")
		if len(es) != 1 {
			t.Fatalf("dns4 has %d elements", len(es))
		}
		return es[0].Expires
	}
	e.admit(0, "api.example.com", 10, dst)
	if d := expires(); d > 11*time.Second || d < 9*time.Second {
		t.Fatalf("after TTL 10: expires in %v", d)
	}
	e.admit(0, "api.example.com", 100, dst)
	if d := expires(); d < 99*time.Second {
		t.Fatalf("after TTL 100: expires in %v, want about 101s (kernel kept the old timeout?)", d)
	}
	e.admit(0, "api.example.com", 5, dst)
	if d := expires(); d < 99*time.Second {
		t.Fatalf("after TTL 5: expires in %v, a shorter answer shortened it", d)
	}
}
