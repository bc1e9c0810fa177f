package dnsguard

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// nullConn is a net.PacketConn that discards writes, so the benchmark
// measures the fast path without the socket.
type nullConn struct{}

func (nullConn) ReadFrom([]byte) (int, net.Addr, error)    { return 0, nil, net.ErrClosed }
func (nullConn) WriteTo(p []byte, _ net.Addr) (int, error) { return len(p), nil }
func (nullConn) Close() error                              { return nil }
func (nullConn) LocalAddr() net.Addr                       { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (nullConn) SetDeadline(time.Time) error               { return nil }
func (nullConn) SetReadDeadline(time.Time) error           { return nil }
func (nullConn) SetWriteDeadline(time.Time) error          { return nil }

// BenchmarkFastPathHit measures an allowed, cached, logged answer on the
// UDP fast path (wire parse, policy, wire cache, patch, query-log record).
func BenchmarkFastPathHit(b *testing.B) { benchFastPathHit(b, nil) }

// BenchmarkFastPathHitFirewall is BenchmarkFastPathHit with a Firewall
// that admits at once: the cost of the hook itself.
func BenchmarkFastPathHitFirewall(b *testing.B) { benchFastPathHit(b, noopFirewall{}) }

func benchFastPathHit(b *testing.B, fw Firewall) { benchHit(b, firewallBenchServer(b, fw)) }

func benchHit(b *testing.B, srv *Server) {
	m := new(dns.Msg)
	m.SetQuestion("bench.example.", dns.TypeA)
	m.SetEdns0(1232, false)
	ua := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 10), Port: 40000}
	srv.ServeDNS(&recorder{remote: ua}, m) // warm the cache
	pkt, err := m.Pack()
	if err != nil {
		b.Fatal(err)
	}
	var q fastQuery
	out := make([]byte, 0, 4096)
	grants := make([]Grant, 0, 1)
	if !parseFast(pkt, &q) || first(srv.answerFast(nullConn{}, ua, pkt, &q, out, grants)) == nil {
		b.Fatal("query did not take the fast path")
	}
	fallbacks := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !parseFast(pkt, &q) {
			b.Fatal("parse failed")
		}
		if res, _ := srv.answerFast(nullConn{}, ua, pkt, &q, out[:0], grants); res != nil {
			out = res
		} else {
			fallbacks++ // e.g. the rate limiter: the full path would answer
		}
	}
	b.ReportMetric(float64(fallbacks)/float64(b.N), "fallbacks/op")
}

// firewallBenchServer is benchServer, with a loopback upstream, and fw.
func firewallBenchServer(b *testing.B, fw Firewall) *Server {
	srv := benchServer(b, startUpstreamB(b))
	srv.cfg.Firewall = fw
	return srv
}

// noopFirewall admits everything at once.
type noopFirewall struct{}

func (noopFirewall) Admit([]Grant) error { return nil }

func first[A, B any](a A, _ B) A { return a }

// BenchmarkFastPathHitDnstap is BenchmarkFastPathHit with dnstap instead
// of the query log (its encoding and queueing; the sink discards).
func BenchmarkFastPathHitDnstap(b *testing.B) {
	srv := firewallBenchServer(b, nil)
	srv.qlog.close()
	enc := &tapEncoder{identity: []byte("node-1"), version: []byte("kordon")}
	srv.qlog = nil
	srv.tap = newChunkLog(discardSink{}, enc.appendEvent, 65536, func(int) {})
	benchHit(b, srv)
}

type discardSink struct{}

func (discardSink) write([]byte, int) {}
func (discardSink) flush()            {}
func (discardSink) close()            {}
