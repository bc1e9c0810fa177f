//go:build !linux

package dnsguard

import (
	"net"
	"net/netip"
)

// batchLoop is Linux-only (recvmmsg/sendmmsg); elsewhere the portable
// ReadFrom/WriteTo loop serves.
func (s *Server) batchLoop(_, _ net.PacketConn) (bool, error) { return false, nil }

// packetReader reads one datagram per call.
type packetReader struct {
	c   *net.UDPConn
	buf []byte
	n   int
}

func newPacketReader(c *net.UDPConn) *packetReader {
	return &packetReader{c: c, buf: make([]byte, maxUDPResponse)}
}

func (r *packetReader) recv() (int, error) {
	n, err := r.c.Read(r.buf)
	if err != nil {
		return 0, err
	}
	r.n = n
	return 1, nil
}

func (r *packetReader) packet(int) []byte { return r.buf[:r.n] }
func (r *packetReader) release()          {}

// replyBatch holds the reply to the one answer read per call until it is
// flushed.
type replyBatch struct {
	buf   []byte
	group net.PacketConn
	to    netip.AddrPort
	n     int
	// evs and grants are scratch for missReplies.
	evs    []QueryEvent
	grants []Grant
}

func (r *replyBatch) slot() []byte {
	if r.buf == nil {
		r.buf = make([]byte, 0, 1232)
	}
	return r.buf[:0]
}

func (r *replyBatch) add(group net.PacketConn, to netip.AddrPort, reply []byte) {
	r.group, r.to, r.buf, r.n = group, to, reply, 1
}

func (r *replyBatch) reply(int) []byte        { return r.buf }
func (r *replyBatch) set(_ int, reply []byte) { r.buf = reply }

func (r *replyBatch) flush() {
	if r.n > 0 {
		_, _ = r.group.WriteTo(r.buf, net.UDPAddrFromAddrPort(r.to))
	}
	r.group, r.n = nil, 0
}
