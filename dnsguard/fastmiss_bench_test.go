package dnsguard

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// BenchmarkFastPathMiss measures one allowed cache miss end to end over
// loopback: a client socket, the server's batched UDP path, a fast miss
// forwarded to a loopback upstream (miekg/dns) and answered from its
// wire bytes, one query at a time. BenchmarkFastPathMissFirewall adds a
// Firewall that admits at once.
func BenchmarkFastPathMiss(b *testing.B)         { benchFastPathMiss(b, nil) }
func BenchmarkFastPathMissFirewall(b *testing.B) { benchFastPathMiss(b, noopFirewall{}) }

func benchFastPathMiss(b *testing.B, fw Firewall) {
	srv := firewallBenchServer(b, fw)
	pc, ln, err := ListenUDPTCP("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(context.Background(), pc, ln) }()
	b.Cleanup(func() { srv.Close(); <-done })
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 10)}, pc.LocalAddr().(*net.UDPAddr))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetEdns0(1232, false)
	buf := make([]byte, 1232)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.SetQuestion(fmt.Sprintf("m%d.svc1-0.example.", i), dns.TypeA)
		m.Id = uint16(i)
		wire, _ := m.Pack()
		if _, err := c.Write(wire); err != nil {
			b.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			b.Fatal(err)
		}
		if n < 12 || buf[3]&0x0F != dns.RcodeSuccess {
			b.Fatalf("answer %x", buf[:n])
		}
	}
}
