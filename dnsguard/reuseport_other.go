//go:build !linux

package dnsguard

import "net"

var reusePortConfig net.ListenConfig

func reusePortSiblings(net.PacketConn, int) []net.PacketConn { return nil }

// stopIntake is a no-op without SO_REUSEPORT groups: the socket is
// served alone, so there is nobody to steer new datagrams to.
func stopIntake(net.PacketConn) error { return nil }

func queuedDatagrams(net.PacketConn) bool { return false }
