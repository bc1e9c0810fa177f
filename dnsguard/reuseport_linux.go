//go:build linux

package dnsguard

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePortConfig binds UDP sockets with SO_REUSEPORT.
var reusePortConfig = net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}}

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
