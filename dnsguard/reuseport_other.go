//go:build !linux

package dnsguard

import "net"

var reusePortConfig net.ListenConfig

func reusePortSiblings(net.PacketConn, int) []net.PacketConn { return nil }
