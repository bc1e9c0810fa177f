//go:build linux

package dnsguard

import (
	"context"
	"net"
	"net/netip"

	agents "github.com/kordon-dev/kordon/internal/handover"
	"golang.org/x/sys/unix"
)

// reusePortConfig binds UDP sockets and TCP listeners with SO_REUSEPORT,
// so a second resolver process (the next version, during a rolling
// update) can bind the same address beside this one.
var reusePortConfig = agents.ReusePort

// reusePortSiblings opens up to n more UDP sockets on pc's address when
// pc has SO_REUSEPORT; none otherwise (a socket a caller bound without it
// is served alone). A sibling that fails to bind is simply not added.
func reusePortSiblings(pc net.PacketConn, n int) []net.PacketConn {
	uc, ok := pc.(*net.UDPConn)
	if !ok || n <= 0 {
		return nil
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil
	}
	on := 0
	if err := rc.Control(func(fd uintptr) {
		on, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT)
	}); err != nil || on == 0 {
		return nil
	}
	var out []net.PacketConn
	for i := 0; i < n; i++ {
		c, err := reusePortConfig.ListenPacket(context.Background(), "udp", uc.LocalAddr().String())
		if err != nil {
			break
		}
		out = append(out, c)
	}
	return out
}

// stopIntake makes the kernel stop giving pc new datagrams while keeping
// those already queued on it, so they can still be read and answered.
//
// Why connect: the kernel picks a socket of an SO_REUSEPORT group by a
// hash of the 4-tuple and skips connected sockets (since Linux 5.2), and a
// connected UDP socket receives only from its peer. pc is connected to
// its own address, which never sends to itself, so every new datagram
// goes to the other sockets of the group (the next resolver process).
// Connecting neither empties the receive queue nor prevents replies: a
// datagram sent with an explicit destination (sendmmsg with a name)
// still goes there from pc's address and port.
func stopIntake(pc net.PacketConn) error {
	rc := rawConn(pc)
	la, ok := pc.LocalAddr().(*net.UDPAddr)
	if rc == nil || !ok {
		return nil
	}
	ap := la.AddrPort()
	ip := ap.Addr()
	if ip.IsUnspecified() {
		// Bound to the wildcard: connect to loopback (connect(2) would
		// pick it for the unspecified address anyway).
		if ip.Is4() || ip.Is4In6() {
			ip = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		} else {
			ip = netip.IPv6Loopback()
		}
	}
	var sa unix.Sockaddr
	if ip.Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ip.As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ip.As16()}
	}
	var cerr error
	if err := rc.Control(func(fd uintptr) { cerr = unix.Connect(int(fd), sa) }); err != nil {
		return err
	}
	return cerr
}

// queuedDatagrams reports whether pc has a datagram waiting in its
// receive queue (SIOCINQ; false when it cannot tell).
func queuedDatagrams(pc net.PacketConn) bool {
	rc := rawConn(pc)
	if rc == nil {
		return false
	}
	n := 0
	if err := rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
		return false
	}
	return n > 0
}
