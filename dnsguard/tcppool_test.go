package dnsguard

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// TestTCPFallbackReusesConnections: answers truncated over UDP are
// fetched over TCP on a pooled connection, not a new one per query, and a
// pooled connection the upstream closed is replaced transparently.
func TestTCPFallbackReusesConnections(t *testing.T) {
	t.Parallel()
	t.Run("kept-open", func(t *testing.T) { testTCPPool(t, 0, 1) })
	// The upstream closes each connection after one query: the pooled
	// connection is dead next time and the query is retried on a new one.
	t.Run("closed-by-upstream", func(t *testing.T) { testTCPPool(t, 1, 5) })
}

func testTCPPool(t *testing.T, maxTCPQueries int, wantConns int64) {
	pc, ln, err := ListenUDPTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	var tcpQueries atomic.Int64
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for i := 0; i < 40; i++ {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{strings.Repeat("x", 100)}})
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			m.Truncate(512)
		} else {
			tcpQueries.Add(1)
		}
		_ = w.WriteMsg(m)
	})
	udpSrv := &dns.Server{PacketConn: pc, Handler: h}
	tcpSrv := &dns.Server{Listener: cl, Handler: h, MaxTCPQueries: maxTCPQueries}
	go udpSrv.ActivateAndServe()
	go tcpSrv.ActivateAndServe()
	t.Cleanup(func() { udpSrv.Shutdown(); tcpSrv.Shutdown() })

	hs := newHarness(t, func(c *Config) { c.Upstreams = []string{pc.LocalAddr().String()} })
	for i := 0; i < 5; i++ {
		r := hs.query(t, "127.0.0.10", fmt.Sprintf("n%d.cdn.example.", i), dns.TypeTXT, "tcp")
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 40 {
			t.Fatalf("query %d: %s with %d answers, want all 40 over TCP", i, dns.RcodeToString[r.Rcode], len(r.Answer))
		}
	}
	if tcpQueries.Load() != 5 {
		t.Fatalf("upstream answered %d queries over TCP, want 5", tcpQueries.Load())
	}
	if n := cl.accepted.Load(); n != wantConns {
		t.Fatalf("upstream accepted %d TCP connections for 5 sequential truncated answers, want %d", n, wantConns)
	}
}
