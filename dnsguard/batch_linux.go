//go:build linux

package dnsguard

import (
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchIO moves many datagrams per system call on one UDP socket:
// recvmmsg(2) reads up to batchSize queries, sendmmsg(2) writes the
// replies built meanwhile. Under load this divides the per-packet syscall
// cost (four user/kernel crossings per query with KPTI) by the batch
// size; when the socket is idle the reader parks in Go's netpoller like
// any other read. All buffers are allocated once per reader goroutine, so
// the steady state allocates nothing here.
type batchIO struct {
	rc syscall.RawConn

	rh    [batchSize]unix.Mmsghdr
	riov  [batchSize]unix.Iovec
	names [batchSize]unix.RawSockaddrInet6
	bufs  [batchSize][batchBufSize]byte

	wh   [batchSize]unix.Mmsghdr
	wiov [batchSize]unix.Iovec
	nw   int
}

const (
	batchSize = 32
	// batchBufSize bounds a query datagram. miekg/dns reads 512 bytes by
	// default; a longer datagram is truncated by the kernel and dropped.
	batchBufSize = 4096
)

// newBatchIO returns nil when pc is not a socket we can batch on (then
// the portable ReadFrom/WriteTo loop is used).
func newBatchIO(pc net.PacketConn) *batchIO {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return nil
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil
	}
	b := &batchIO{rc: rc}
	for i := range b.rh {
		b.riov[i].Base = &b.bufs[i][0]
		b.riov[i].SetLen(batchBufSize)
		b.rh[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		b.rh[i].Hdr.Iov = &b.riov[i]
		b.rh[i].Hdr.SetIovlen(1)
		b.wh[i].Hdr.Iov = &b.wiov[i]
		b.wh[i].Hdr.SetIovlen(1)
	}
	return b
}

// recv waits for at least one datagram and returns how many were read.
// The error is non-nil only when the socket is closed or broken.
func (b *batchIO) recv() (int, error) {
	for i := range b.rh {
		b.rh[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		b.rh[i].Hdr.Flags = 0
		b.rh[i].Len = 0
	}
	var (
		n     int
		errno syscall.Errno
	)
	err := b.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.rh[0])), batchSize, unix.MSG_DONTWAIT, 0, 0)
			switch e {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // park in the netpoller until readable
			}
			n, errno = int(r), e
			return true
		}
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		// Transient per-socket errors (e.g. ENOMEM): report none read.
		return 0, nil
	}
	return n, nil
}

// packet returns datagram i of the last recv and whether it is whole.
func (b *batchIO) packet(i int) ([]byte, bool) {
	return b.bufs[i][:b.rh[i].Len], b.rh[i].Hdr.Flags&unix.MSG_TRUNC == 0
}

// addr returns the source of datagram i.
func (b *batchIO) addr(i int) (netip.AddrPort, bool) {
	sa := &b.names[i]
	switch sa.Family {
	case unix.AF_INET:
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&s4.Port))
		return netip.AddrPortFrom(netip.AddrFrom4(s4.Addr), uint16(p[0])<<8|uint16(p[1])), true
	case unix.AF_INET6:
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		ip := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			ip = ip.WithZone(itoa(int(sa.Scope_id)))
		}
		return netip.AddrPortFrom(ip, uint16(p[0])<<8|uint16(p[1])), true
	}
	return netip.AddrPort{}, false
}

// queue schedules reply (which must stay untouched until flush) to the
// source of datagram i.
func (b *batchIO) queue(i int, reply []byte) {
	h := &b.wh[b.nw]
	h.Hdr.Name = b.rh[i].Hdr.Name
	h.Hdr.Namelen = b.rh[i].Hdr.Namelen
	b.wiov[b.nw].Base = &reply[0]
	b.wiov[b.nw].SetLen(len(reply))
	b.nw++
}

// flush sends every queued reply. A reply the kernel refuses (e.g. the
// client's port is gone) is skipped; the rest still go out.
func (b *batchIO) flush() (failed int, err error) {
	sent := 0
	for sent < b.nw {
		var (
			n     int
			errno syscall.Errno
		)
		werr := b.rc.Write(func(fd uintptr) bool {
			for {
				r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.wh[sent])), uintptr(b.nw-sent), unix.MSG_DONTWAIT, 0, 0)
				switch e {
				case unix.EINTR:
					continue
				case unix.EAGAIN:
					return false // socket buffer full: wait until writable
				}
				n, errno = int(r), e
				return true
			}
		})
		if werr != nil {
			b.nw = 0
			return failed, werr
		}
		if errno != 0 {
			failed++
			sent++ // the first unsent message failed: skip it
			continue
		}
		sent += n
	}
	b.nw = 0
	return failed, nil
}

// batchLoop serves pc with batched I/O. It returns false at once when pc
// cannot be batched on.
func (s *Server) batchLoop(pc net.PacketConn) (bool, error) {
	b := newBatchIO(pc)
	if b == nil {
		return false, nil
	}
	var (
		q    fastQuery
		evs  [batchSize]QueryEvent
		outs [batchSize][]byte
	)
	for i := range outs {
		outs[i] = make([]byte, 0, batchBufSize)
	}
	for {
		n, err := b.recv()
		if err != nil {
			return true, err
		}
		for i := 0; i < n; i++ {
			pkt, whole := b.packet(i)
			ap, ok := b.addr(i)
			if !whole || !ok {
				continue // oversized or non-IP: drop, as miekg/dns would
			}
			ip := ap.Addr().Unmap()
			if parseFast(pkt, &q) {
				j := b.nw
				if res := s.hitReply(ip, pkt, &q, outs[j][:0], &evs[j]); res != nil {
					outs[j] = res
					b.queue(i, res)
					continue
				}
			}
			ua := net.UDPAddrFromAddrPort(ap)
			cp := append([]byte(nil), pkt...)
			s.inflight.Add(1)
			go func() {
				defer s.inflight.Done()
				s.serveSlow(pc, ua, cp)
			}()
		}
		nw := b.nw
		if failed, err := b.flush(); err != nil {
			return true, err
		} else if failed > 0 {
			s.log.Debug("udp replies not sent", "count", failed)
		}
		for j := 0; j < nw; j++ {
			s.observeFast(&evs[j])
		}
	}
}
