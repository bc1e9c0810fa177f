//go:build !linux

package dnsguard

import "net"

// batchLoop is Linux-only (recvmmsg/sendmmsg); elsewhere the portable
// ReadFrom/WriteTo loop serves.
func (s *Server) batchLoop(net.PacketConn) (bool, error) { return false, nil }
