//go:build linux

package dnsguard

import (
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestBatchedBurstAnswersEveryQuery fires bursts of queries from many
// client sockets without waiting, so recvmmsg returns several datagrams
// at once and sendmmsg sends several replies: every query must get its
// own answer (ID, question and client case intact).
func TestBatchedBurstAnswersEveryQuery(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	h.query(t, "127.0.0.10", "burst.cdn.example.", dns.TypeA, "udp") // cache it
	const clients, perClient, rounds = 8, 8, 8
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 10)}, net.UDPAddrFromAddrPort(mustAddrPort(t, h.addr)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	names := []string{"burst.cdn.example.", "BURST.cdn.example.", "bUrSt.CDN.example."}
	// Rounds of clients*perClient datagrams in flight: enough to fill
	// batches, few enough for the sockets' default receive buffers.
	for round := 0; round < rounds; round++ {
		for i, c := range conns {
			for j := 0; j < perClient; j++ {
				m := new(dns.Msg)
				m.SetQuestion(names[(i+j)%len(names)], dns.TypeA)
				m.Id = uint16(i*perClient + j)
				b, _ := m.Pack()
				if _, err := c.Write(b); err != nil {
					t.Fatal(err)
				}
			}
		}
		for i, c := range conns {
			seen := map[uint16]bool{}
			buf := make([]byte, 4096)
			for len(seen) < perClient {
				if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
					t.Fatal(err)
				}
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("round %d client %d: %d of %d answers: %v", round, i, len(seen), perClient, err)
				}
				r := new(dns.Msg)
				if err := r.Unpack(buf[:n]); err != nil {
					t.Fatal(err)
				}
				j := int(r.Id) - i*perClient
				if j < 0 || j >= perClient || seen[r.Id] {
					t.Fatalf("client %d: unexpected or repeated id %d", i, r.Id)
				}
				seen[r.Id] = true
				if want := names[(i+j)%len(names)]; r.Question[0].Name != want || len(r.Answer) != 1 || r.Answer[0].Header().Name != want {
					t.Fatalf("id %d: want question and owner %s, got\n%s", r.Id, want, r)
				}
			}
		}
	}
	if got := testutil.ToFloat64(h.srv.metrics.fastAnswers); got < clients*perClient*rounds {
		t.Errorf("fast path answered %v of %d", got, clients*perClient*rounds)
	}
}

// TestOversizedDatagramDropped: a datagram larger than the batch buffer
// is cut by the kernel (MSG_TRUNC) and dropped, and the socket goes on.
func TestOversizedDatagramDropped(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	c, err := net.Dial("udp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := make([]byte, batchBufSize+100) // a header of zeros: a query, were it whole
	big[5] = 1
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion("after.cdn.example.", dns.TypeA)
	m.Id = 4242
	b, _ := m.Pack()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil || r.Id != 4242 {
		t.Fatalf("first reply should answer the small query, got id %d (%v)", r.Id, err)
	}
}

// TestReusePortSiblings: ListenUDPTCP's socket gets siblings on the same
// port; a socket bound without SO_REUSEPORT is served alone.
func TestReusePortSiblings(t *testing.T) {
	pc, ln, err := ListenUDPTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	defer ln.Close()
	sib := reusePortSiblings(pc, 3)
	if len(sib) != 3 {
		t.Fatalf("got %d siblings, want 3", len(sib))
	}
	for _, s := range sib {
		if s.LocalAddr().String() != pc.LocalAddr().String() {
			t.Errorf("sibling on %s, want %s", s.LocalAddr(), pc.LocalAddr())
		}
		s.Close()
	}
	plain, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if got := reusePortSiblings(plain, runtime.GOMAXPROCS(0)); len(got) != 0 {
		t.Errorf("a plain socket got %d siblings", len(got))
	}
}

func mustAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}
