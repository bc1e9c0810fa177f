package netns

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestTopologyForwards proves the harness: a pod reaches a server on an
// outside TEST-NET address through the node, over IPv4 and IPv6, and the
// server sees the pod's own address (no NAT).
func TestTopologyForwards(t *testing.T) {
	tp := NewTopology(t, 2)
	for _, tc := range []struct {
		name string
		dst  string
		src  func(p *Pod) netip.Addr
	}{
		{name: "ipv4", dst: "203.0.113.10", src: func(p *Pod) netip.Addr { return p.IP4 }},
		{name: "ipv6", dst: "2001:db8:100::10", src: func(p *Pod) netip.Addr { return p.IP6 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := tp.OutsideAddr(t, tc.dst)
			var ln net.Listener
			if err := tp.Outside.Do(func() (err error) {
				ln, err = net.Listen("tcp", netip.AddrPortFrom(dst, 0).String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			seen := make(chan netip.Addr, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				seen <- netip.MustParseAddrPort(c.RemoteAddr().String()).Addr()
				_, _ = io.Copy(c, c)
			}()
			pod := tp.Pods[1]
			var c net.Conn
			if err := pod.Do(func() (err error) {
				c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("echo: %q %v", buf, err)
			}
			if got := <-seen; got != tc.src(pod) {
				t.Errorf("server saw %s, want the pod's %s", got, tc.src(pod))
			}
		})
	}
}
