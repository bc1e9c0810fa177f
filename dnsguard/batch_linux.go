//go:build linux

package dnsguard

import (
	"net"
	"net/netip"
	"strconv"
	"sync"
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
	sender
	errno syscall.Errno // of the last recv that read nothing

	rh    [batchSize]unix.Mmsghdr
	riov  [batchSize]unix.Iovec
	names [batchSize]unix.RawSockaddrInet6
	bufs  [batchSize][batchBufSize]byte
}

// sender writes queued datagrams with sendmmsg(2).
type sender struct {
	rc   syscall.RawConn
	wh   [batchSize]unix.Mmsghdr
	wiov [batchSize]unix.Iovec
	nw   int
	// failedMask has bit i set when message i of the last flush failed.
	failedMask uint64
}

const (
	batchSize = 32
	// batchBufSize bounds a query datagram. miekg/dns reads 512 bytes by
	// default; a longer datagram is truncated by the kernel and dropped.
	batchBufSize = 4096
)

// batchPool recycles batchIOs (128 KiB each): upstream sockets are
// replaced every few thousand queries and each has a reader.
var batchPool = sync.Pool{New: func() any {
	b := &batchIO{}
	for i := range b.rh {
		b.riov[i].Base = &b.bufs[i][0]
		b.riov[i].SetLen(batchBufSize)
		b.rh[i].Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		b.rh[i].Hdr.Iov = &b.riov[i]
		b.rh[i].Hdr.SetIovlen(1)
	}
	b.sender.init()
	return b
}}

func (s *sender) init() {
	for i := range s.wh {
		s.wh[i].Hdr.Iov = &s.wiov[i]
		s.wh[i].Hdr.SetIovlen(1)
	}
}

// rawConn returns pc's raw socket, or nil when pc is not a UDP socket we
// can batch on (then the portable ReadFrom/WriteTo code is used).
func rawConn(pc net.PacketConn) syscall.RawConn {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return nil
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// newBatchIO returns nil when pc cannot be batched on; release returns
// the buffers.
func newBatchIO(pc net.PacketConn) *batchIO {
	rc := rawConn(pc)
	if rc == nil {
		return nil
	}
	b := batchPool.Get().(*batchIO)
	b.rc = rc
	return b
}

func (b *batchIO) release() {
	b.rc, b.nw = nil, 0
	batchPool.Put(b)
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
	b.errno = errno
	if errno != 0 {
		// Per-socket errors (ENOMEM, or ECONNREFUSED on a connected
		// socket): none read; the caller decides (see errno).
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

// requeue replaces queued reply k (the k-th queue call since the last
// flush).
func (b *batchIO) requeue(k int, reply []byte) {
	b.wiov[k].Base = &reply[0]
	b.wiov[k].SetLen(len(reply))
}

// grantRef locates the reply of a grant in a batch: reply k of the
// batch, answering datagram pkt whose question ends at qEnd.
type grantRef struct {
	reply, pkt, qEnd int
	edns, do         bool
}

// flush sends every queued reply. A reply the kernel refuses (e.g. the
// client's port is gone) is skipped; the rest still go out.
func (b *sender) flush() (failed int, err error) {
	sent := 0
	b.failedMask = 0
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
			b.failedMask |= 1 << sent
			sent++ // the first unsent message failed: skip it
			continue
		}
		sent += n
	}
	b.nw = 0
	return failed, nil
}

// batchLoop serves pc with batched I/O; group is the first socket of
// pc's SO_REUSEPORT group (pc itself when alone). It returns false at once
// when pc cannot be batched on.
func (s *Server) batchLoop(pc, group net.PacketConn) (bool, error) {
	b := newBatchIO(pc)
	if b == nil {
		return false, nil
	}
	defer b.release()
	var (
		q     fastQuery
		evs   [batchSize]QueryEvent
		outs  [batchSize][]byte
		sends [batchSize]missSend
		up    sender
		// grants of the batch's fast hits, and where their replies are.
		grants []Grant
		refs   []grantRef
	)
	if s.cfg.Firewall != nil {
		grants, refs = make([]Grant, 0, batchSize), make([]grantRef, 0, batchSize)
	}
	up.init()
	for i := range outs {
		outs[i] = make([]byte, 0, batchBufSize)
	}
	for {
		n, err := b.recv()
		if err != nil {
			return true, err
		}
		nsend := 0
		now := s.cfg.Now()
		for i := 0; i < n; i++ {
			pkt, whole := b.packet(i)
			ap, ok := b.addr(i)
			if !whole || !ok {
				continue // oversized or non-IP: drop, as miekg/dns would
			}
			ip := ap.Addr().Unmap()
			var ho *handover
			if parseFast(pkt, &q) {
				j := b.nw
				res, fwd, d := s.fastReply(ip, pkt, &q, outs[j][:0], &evs[j], now)
				if res != nil {
					outs[j] = res
					b.queue(i, res)
					evs[j].tap = tapWire{query: pkt, reply: res, peer: ap}
					if s.cfg.Firewall != nil {
						if g, ok := grantOf(&evs[j], q.lower[:len(q.lower)-1]); ok {
							grants = append(grants, g)
							refs = append(refs, grantRef{reply: j, pkt: i, qEnd: q.nameEnd + 4, edns: q.edns, do: q.do})
						}
					}
					continue
				}
				if fwd != nil && s.startMiss(pc, group, ap, pkt, &q, &evs[j], &d, fwd, &sends[nsend]) {
					nsend++
					continue
				}
				ho = &handover{ev: evs[j], d: d} // decided (and rate limited) once
			}
			ua := net.UDPAddrFromAddrPort(ap)
			cp := append([]byte(nil), pkt...)
			s.inflight.Add(1)
			go func() {
				defer s.inflight.Done()
				s.serveSlow(pc, ua, cp, ho)
			}()
		}
		s.sendMisses(&up, sends[:nsend])
		if len(grants) > 0 {
			// One Admit for the batch, before any of its replies is sent.
			if !s.admit(grants) {
				for _, ref := range refs {
					pkt, _ := b.packet(ref.pkt)
					outs[ref.reply] = appendFirewallFailed(outs[ref.reply][:0], pkt, ref.qEnd, ref.edns, ref.do)
					b.requeue(ref.reply, outs[ref.reply])
					evs[ref.reply].tap.reply = outs[ref.reply]
					failAnswer(&evs[ref.reply])
				}
			}
			clear(grants)
			grants, refs = grants[:0], refs[:0]
		}
		nw := b.nw
		s.countFast(evs[:nw])
		if failed, err := b.flush(); err != nil {
			return true, err
		} else if failed > 0 {
			s.log.Debug("udp replies not sent", "count", failed)
		}
		s.observeAll(evs[:nw], s.cfg.Now())
	}
}

// sendMisses writes fast misses' queries, one sendmmsg per upstream
// socket.
func (s *Server) sendMisses(up *sender, ms []missSend) {
	for len(ms) > 0 {
		// Gather the queries for ms[0]'s socket at the front.
		c, k := ms[0].c, 1
		for i := 1; i < len(ms); i++ {
			if ms[i].c == c {
				ms[k], ms[i] = ms[i], ms[k]
				k++
			}
		}
		up.rc = c.rc
		for i := 0; i < k; i++ {
			up.wh[i].Hdr.Name, up.wh[i].Hdr.Namelen = nil, 0
			up.wiov[i].Base = &ms[i].buf[0]
			up.wiov[i].SetLen(ms[i].n)
		}
		up.nw = k
		if _, err := up.flush(); err != nil {
			up.failedMask = 1<<k - 1 // the socket is closed: none went out
		}
		for i := 0; i < k; i++ {
			if up.failedMask&(1<<i) != 0 {
				ms[i].writeFailed(s)
			}
			ms[i].fm, ms[i].c = nil, nil
		}
		ms = ms[k:]
	}
	up.rc = nil
}

// packetReader reads datagrams from an upstream socket in batches.
type packetReader struct{ b *batchIO }

func newPacketReader(c *net.UDPConn) *packetReader { return &packetReader{b: newBatchIO(c)} }

// recv reports an ICMP refusal (ECONNREFUSED on the connected socket) as
// an error, so queries waiting on a closed port fail now, not at their
// timeouts.
func (r *packetReader) recv() (int, error) {
	n, err := r.b.recv()
	if err == nil && r.b.errno == syscall.ECONNREFUSED {
		return 0, r.b.errno
	}
	return n, err
}

// packet returns datagram i. One larger than the buffer (an upstream
// ignoring our EDNS size) comes back as its header and question with TC
// set, so the query is retried over TCP like any truncated answer.
func (r *packetReader) packet(i int) []byte {
	p, whole := r.b.packet(i)
	if whole {
		return p
	}
	return truncatedAnswer(p)
}

func (r *packetReader) release() { r.b.release() }

// replyBatch collects replies to clients built while handling one batch
// of upstream answers (at most batchSize: one recvmmsg), and sends them
// with one sendmmsg per client socket group when flushed, never before.
// Replies go out through the client socket group's first socket:
// SO_REUSEPORT siblings share one address, so any of them sends from the
// port the client asked.
type replyBatch struct {
	n      int
	groups [batchSize]net.PacketConn
	to     [batchSize]netip.AddrPort
	bufs   [batchSize][]byte
	// evs and grants are scratch for missReplies.
	evs    []QueryEvent
	grants []Grant

	sndGroup net.PacketConn // the group snd writes to (nil: none yet)
	snd      *sender        // nil when sndGroup cannot be batched on
	names    [batchSize]unix.RawSockaddrInet6
}

// slot returns an empty buffer to build the next reply in.
func (r *replyBatch) slot() []byte {
	if r.bufs[r.n] == nil {
		r.bufs[r.n] = make([]byte, 0, 1232)
	}
	return r.bufs[r.n][:0]
}

// add queues reply (built in slot()) to a client of group.
func (r *replyBatch) add(group net.PacketConn, to netip.AddrPort, reply []byte) {
	r.groups[r.n], r.to[r.n], r.bufs[r.n] = group, to, reply
	r.n++
}

// reply returns queued reply i, and set replaces it (built in its
// buffer: set(i, f(reply(i)[:0]))).
func (r *replyBatch) reply(i int) []byte      { return r.bufs[i] }
func (r *replyBatch) set(i int, reply []byte) { r.bufs[i] = reply }

// flush sends every queued reply, in runs of the same group.
func (r *replyBatch) flush() {
	for i := 0; i < r.n; {
		g := r.groups[i]
		if g != r.sndGroup {
			r.sndGroup, r.snd = g, nil
			if rc := rawConn(g); rc != nil {
				r.snd = &sender{rc: rc}
				r.snd.init()
			}
		}
		j := i
		for ; j < r.n && r.groups[j] == g; j++ {
			if r.snd == nil {
				_, _ = g.WriteTo(r.bufs[j], net.UDPAddrFromAddrPort(r.to[j]))
				continue
			}
			k := r.snd.nw
			n := putSockaddr(&r.names[k], r.to[j])
			r.snd.wh[k].Hdr.Name = (*byte)(unsafe.Pointer(&r.names[k]))
			r.snd.wh[k].Hdr.Namelen = n
			r.snd.wiov[k].Base = &r.bufs[j][0]
			r.snd.wiov[k].SetLen(len(r.bufs[j]))
			r.snd.nw++
		}
		if r.snd != nil && r.snd.nw > 0 {
			_, _ = r.snd.flush()
		}
		i = j
	}
	for i := 0; i < r.n; i++ {
		r.groups[i] = nil
	}
	r.n = 0
}

// putSockaddr writes ap as a sockaddr into sa and returns its length.
func putSockaddr(sa *unix.RawSockaddrInet6, ap netip.AddrPort) uint32 {
	port := ap.Port()
	if ap.Addr().Is4() {
		s4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		*s4 = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
		p := (*[2]byte)(unsafe.Pointer(&s4.Port))
		p[0], p[1] = byte(port>>8), byte(port)
		return unix.SizeofSockaddrInet4
	}
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: ap.Addr().As16()}
	if z := ap.Addr().Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.Scope_id = uint32(ifi.Index)
		} else if n, err := strconv.Atoi(z); err == nil {
			sa.Scope_id = uint32(n)
		}
	}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(port>>8), byte(port)
	return unix.SizeofSockaddrInet6
}
