package egress

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// udpEcho serves UDP echo on addr:port in the outside namespace.
func (e *env) udpEcho(addr netip.Addr, port uint16) netip.AddrPort {
	e.t.Helper()
	ap := netip.AddrPortFrom(addr, port)
	var pc net.PacketConn
	if err := e.tp.Outside.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", ap.String())
		return err
	}); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	e.t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return ap
}

// udpRoundTrip sends one datagram from pod on a connected socket and
// waits for the echo.
func (e *env) udpRoundTrip(pod int, dst netip.AddrPort) error {
	var c net.Conn
	if err := e.tp.Pods[pod].Do(func() (err error) {
		c, err = net.Dial("udp", dst.String())
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	// UDP may lose a datagram (the first one waits for neighbour
	// discovery in a queue the kernel bounds, and ICMPv6 errors are rate
	// limited): send again on a timeout, a bounded number of times.
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err = c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 16)
		var n int
		n, err = c.Read(buf)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			continue
		}
		if err != nil {
			return err
		}
		if string(buf[:n]) != "ping" {
			return fmt.Errorf("echo %q", buf[:n])
		}
		return nil
	}
	return err
}

// isProhibited: the ICMP administratively-prohibited error reached the
// socket (EHOSTUNREACH for ICMPv4 code 13, EACCES for ICMPv6 code 1),
// as opposed to a timeout.
func isProhibited(err error) bool {
	return errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.ECONNREFUSED)
}

func TestUDP(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"u.example.com"}})
	for _, addr := range []string{"198.51.100.80", "2001:db8:100::80"} {
		ok := e.udpEcho(e.tp.OutsideAddr(t, addr), 5000)
		e.admit(0, "u.example.com", 300, ok.Addr())
		if err := e.udpRoundTrip(0, ok); err != nil {
			t.Fatalf("admitted UDP %s: %v", ok, err)
		}
		blocked := netip.AddrPortFrom(ok.Addr().Next(), 5000)
		e.tp.OutsideAddr(t, blocked.Addr().String())
		e.udpEcho(blocked.Addr(), 5000)
		start := time.Now()
		err := e.udpRoundTrip(0, blocked)
		if !isProhibited(err) {
			t.Fatalf("unadmitted UDP %s: %v, want ICMP prohibited", blocked, err)
		}
		t.Logf("unadmitted UDP %s: %v after %v", blocked, err, time.Since(start).Round(time.Microsecond))
	}
}

// TestICMP pings from a pod over a raw socket: echo to an admitted
// address is answered, to another the node answers prohibited.
func TestICMP(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"p.example.com"}})
	for _, v6 := range []bool{false, true} {
		a, b := "198.51.100.90", "198.51.100.91"
		if v6 {
			a, b = "2001:db8:100::90", "2001:db8:100::91"
		}
		okAddr, blocked := e.tp.OutsideAddr(t, a), e.tp.OutsideAddr(t, b)
		e.admit(0, "p.example.com", 300, okAddr)
		for _, c := range []struct {
			dst  netip.Addr
			want string
		}{{okAddr, "reply"}, {blocked, "prohibited"}} {
			var got string
			err := e.tp.Pods[0].Do(func() error {
				var err error
				got, err = ping(c.dst)
				return err
			})
			if err != nil {
				t.Fatalf("ping %s: %v", c.dst, err)
			}
			if got != c.want {
				t.Fatalf("ping %s: %s, want %s", c.dst, got, c.want)
			}
		}
	}
}

// ping sends one echo request and returns "reply", "prohibited" or an
// error (2s bound).
func ping(dst netip.Addr) (string, error) {
	network, laddr, proto := "ip4:icmp", "0.0.0.0", 1
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if dst.Is6() {
		network, laddr, proto, typ = "ip6:ipv6-icmp", "::", 58, ipv6.ICMPTypeEchoRequest
	}
	c, err := icmp.ListenPacket(network, laddr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: os.Getpid() & 0xffff, Seq: 1, Data: []byte("kordon")}}
	wb, err := msg.Marshal(nil)
	if err != nil {
		return "", err
	}
	if _, err := c.WriteTo(wb, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return "", err
	}
	deadline := time.Now().Add(2 * time.Second)
	c.SetReadDeadline(deadline)
	buf := make([]byte, 1500)
	for i := 0; i < 100 && time.Now().Before(deadline); i++ {
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return "", err
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		switch m.Type {
		case ipv4.ICMPTypeEchoReply, ipv6.ICMPTypeEchoReply:
			return "reply", nil
		case ipv4.ICMPTypeDestinationUnreachable:
			if m.Code == 13 {
				return "prohibited", nil
			}
			return fmt.Sprintf("unreachable code %d", m.Code), nil
		case ipv6.ICMPTypeDestinationUnreachable:
			if m.Code == 1 {
				return "prohibited", nil
			}
			return fmt.Sprintf("unreachable code %d", m.Code), nil
		}
	}
	return "", errors.New("no answer")
}
