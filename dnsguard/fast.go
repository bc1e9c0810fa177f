package dnsguard

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// The UDP fast path answers the common case, a cache hit for an allowed
// name, straight from wire bytes: it parses only the header, the single
// question and an option-less OPT record, copies the cached packed answer,
// patches the ID, the RD bit, the question's case (0x20) and the TTLs,
// and writes it. Everything else (policy refusals, misses, EDNS options,
// truncation, unusual names or opcodes) goes to the full miekg/dns path,
// so answers are identical either way (TestFastPathMatchesSlowPath).

// wireAnswer is a cached answer in wire form.
type wireAnswer struct {
	wire       []byte // ID 0, question lower-case, no OPT record
	ttlOffsets []int  // offsets of every TTL field
	// qnameCopies are offsets of answer owner names spelled out in full
	// as the query name: they take the client's case like the question.
	qnameCopies []int
	ttls        []uint32
	answers     []netip.Addr
	addrTTL     uint32 // the smallest TTL among answers' records
}

// packWire builds the wire form of a cached answer, or nil when the answer
// cannot be served from wire (it would need rewriting beyond our patches).
// The packed message is indexed by the same walk as an upstream's answer
// on the fast-miss path (wireFromUpstream).
//
// m is shared with the cache and is not modified: c is a shallow copy with
// its own section slices, and only records it renames are copied.
func (ca *cache) packWire(m *dns.Msg, lowerName string) *wireAnswer {
	c := *m
	c.Id = 0
	c.Question = []dns.Question{{Name: lowerName, Qtype: m.Question[0].Qtype, Qclass: m.Question[0].Qclass}}
	extra := make([]dns.RR, 0, len(m.Extra))
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	c.Extra = extra
	c.Answer = append([]dns.RR(nil), m.Answer...)
	for i, rr := range c.Answer {
		if n := rr.Header().Name; n != lowerName && dns.CanonicalName(n) == lowerName {
			rr = dns.Copy(rr)
			rr.Header().Name = lowerName // compresses to the question: the case follows it
			c.Answer[i] = rr
		}
	}
	c.Compress = true
	wire, err := c.Pack()
	if err != nil {
		return nil
	}
	qEnd, ok := skipQuestion(wire)
	if !ok {
		return nil
	}
	wa, _, ok := ca.wireFromUpstream(wire, qEnd)
	if !ok {
		return nil
	}
	return wa
}

func skipName(b []byte, off int) (int, bool) {
	for off < len(b) {
		l := int(b[off])
		switch {
		case l == 0:
			return off + 1, true
		case l&0xC0 == 0xC0:
			return off + 2, off+2 <= len(b)
		case l&0xC0 != 0:
			return 0, false
		}
		off += 1 + l
	}
	return 0, false
}

func skipQuestion(b []byte) (int, bool) {
	if len(b) < 12 || binary.BigEndian.Uint16(b[4:]) != 1 {
		return 0, false
	}
	off, ok := skipName(b, 12)
	if !ok || off+4 > len(b) {
		return 0, false
	}
	return off + 4, true
}

// fastQuery is what the fast path parsed from a query.
type fastQuery struct {
	qname   string // presentation form as the client sent it, with the trailing dot
	lower   string // lower-case presentation form
	nameEnd int    // offset after the question name
	qtype   uint16
	edns    bool
	do      bool
	udpSize int
	rd      bool
	// nameBuf and lowerBuf are scratch space for parsing (kept here so they are
	// not cleared on every query).
	nameBuf, lowerBuf [255]byte
}

// parseFast accepts only plain queries: QR=0, opcode QUERY, one IN
// question with letters, digits, '-' and '_' only, and at most an OPT
// record without options. Anything else returns false.
func parseFast(b []byte, q *fastQuery) bool {
	if len(b) < 17 || b[2]&0x80 != 0 || (b[2]>>3)&0xF != 0 ||
		binary.BigEndian.Uint16(b[4:]) != 1 || binary.BigEndian.Uint16(b[6:]) != 0 || binary.BigEndian.Uint16(b[8:]) != 0 {
		return false
	}
	ar := binary.BigEndian.Uint16(b[10:])
	if ar > 1 {
		return false
	}
	name, lower := &q.nameBuf, &q.lowerBuf
	n := 0
	upper := false
	off := 12
	for {
		if off >= len(b) {
			return false
		}
		l := int(b[off])
		if l == 0 {
			off++
			break
		}
		if l > 63 || off+1+l > len(b) || n+l+1 > 254 {
			return false
		}
		for _, c := range b[off+1 : off+1+l] {
			lc := c
			switch {
			case c >= 'A' && c <= 'Z':
				lc = c + 32
				upper = true
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			default:
				return false // escapes needed: leave it to miekg/dns
			}
			name[n], lower[n] = c, lc
			n++
		}
		name[n], lower[n] = '.', '.'
		n++
		off += 1 + l
	}
	if n == 0 {
		return false // the root: rare, and keeps names non-empty below
	}
	if off+4 > len(b) {
		return false
	}
	q.qtype = binary.BigEndian.Uint16(b[off:])
	if binary.BigEndian.Uint16(b[off+2:]) != dns.ClassINET || q.qtype == dns.TypeANY || q.qtype == dns.TypeAXFR || q.qtype == dns.TypeIXFR {
		return false
	}
	q.nameEnd = off
	off += 4
	q.edns, q.do, q.udpSize = false, false, 512
	if ar == 1 {
		// OPT: root name, type 41, class = UDP size, TTL = ext-rcode, version, flags; no options.
		if off+11 != len(b) || b[off] != 0 || binary.BigEndian.Uint16(b[off+1:]) != dns.TypeOPT || b[off+6] != 0 || binary.BigEndian.Uint16(b[off+9:]) != 0 {
			return false
		}
		q.edns = true
		q.udpSize = int(max(binary.BigEndian.Uint16(b[off+3:]), 512))
		q.do = b[off+7]&0x80 != 0
	} else if off != len(b) {
		return false
	}
	q.qname = string(name[:n])
	q.lower = q.qname
	if upper {
		q.lower = string(lower[:n])
	}
	q.rd = b[2]&0x01 != 0
	return true
}

// appendOPT adds our OPT record (UDP 1232, the client's DO bit).
func appendOPT(b []byte, do bool) []byte {
	flags := byte(0)
	if do {
		flags = 0x80
	}
	b = append(b, 0, 0, 41, 0x04, 0xD0, 0, 0, flags, 0, 0, 0)
	binary.BigEndian.PutUint16(b[10:], binary.BigEndian.Uint16(b[10:])+1)
	return b
}

// serveUDP reads the socket with one goroutine per CPU. When pc has
// SO_REUSEPORT (ListenUDPTCP), each goroutine gets a socket of its own on
// the same address: readers of one socket take turns in Go's netpoller,
// while sibling sockets are read in parallel. started is called once
// every socket is bound and read.
//
// When ctx ends it drains (see drainUDP) before it closes the sockets.
func (s *Server) serveUDP(ctx context.Context, pc net.PacketConn, started func()) error {
	n := runtime.GOMAXPROCS(0)
	conns := append([]net.PacketConn{pc}, reusePortSiblings(pc, n-1)...)
	var wg sync.WaitGroup
	errc := make(chan error, n)
	for i := 0; i < n; i++ {
		c := conns[i%len(conns)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- s.udpLoop(c, pc)
		}()
	}
	started()
	readersDone := make(chan struct{})
	go func() { wg.Wait(); close(readersDone) }()
	select {
	case <-ctx.Done():
		s.drainUDP(conns, readersDone)
	case <-readersDone:
	}
	wg.Wait()
	// Replies to what was read (fast misses waiting on an upstream, full
	// path goroutines) go out through these sockets: close them last.
	s.inflight.Wait()
	for _, c := range conns {
		c.Close()
	}
	err := <-errc
	if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// drainUDP stops the kernel queueing new datagrams on conns (the other
// sockets of their SO_REUSEPORT group, a newer resolver's, get them; see
// stopIntake), lets the readers answer what is already queued, then stops
// them. Closing a socket drops its queue, so a restart that closed at
// once would lose every query queued or arriving meanwhile.
func (s *Server) drainUDP(conns []net.PacketConn, readersDone <-chan struct{}) {
	for _, c := range conns {
		if err := stopIntake(c); err != nil {
			s.log.Debug("udp stop intake failed", "error", err)
		}
	}
	// A datagram the kernel steered to conns just before stopIntake may
	// still be on its way to the queue: the queues must stay empty for a
	// quiet period before the readers stop.
	const (
		poll  = 5 * time.Millisecond
		quiet = 4 // polls
	)
	deadline := time.Now().Add(s.cfg.DrainTimeout)
	t := time.NewTicker(poll)
	defer t.Stop()
	for idle := 0; idle < quiet && time.Now().Before(deadline); {
		select {
		case <-readersDone:
			return
		case <-t.C:
		}
		busy := false
		for _, c := range conns {
			if queuedDatagrams(c) {
				busy = true
				break
			}
		}
		if busy {
			idle = 0
		} else {
			idle++
		}
	}
	now := time.Now()
	for _, c := range conns {
		_ = c.SetReadDeadline(now)
	}
}

func (s *Server) udpLoop(pc, group net.PacketConn) error {
	if batched, err := s.batchLoop(pc, group); batched {
		return err
	}
	buf := make([]byte, 65535)
	out := make([]byte, 0, 4096)
	grants := make([]Grant, 0, 1)
	var q fastQuery
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		ua, _ := addr.(*net.UDPAddr)
		if ua == nil {
			continue
		}
		s.inflight.Add(1)
		pkt := buf[:n]
		var ho *handover
		if parseFast(pkt, &q) {
			var res []byte
			if res, ho = s.answerFast(pc, ua, pkt, &q, out[:0], grants); res != nil {
				out = res
				s.inflight.Done()
				continue
			}
		}
		// The full path may wait on an upstream: give it its own goroutine
		// (as miekg/dns does) so readers keep draining the socket.
		cp := append([]byte(nil), pkt...)
		go func() {
			defer s.inflight.Done()
			s.serveSlow(pc, ua, cp, ho)
		}()
	}
}

// answerFast answers from the wire cache (grants is scratch for the
// firewall's). When it sends nothing it returns the handover for the full
// path (this portable loop forwards misses on the full path too).
func (s *Server) answerFast(pc net.PacketConn, ua *net.UDPAddr, pkt []byte, q *fastQuery, out []byte, grants []Grant) ([]byte, *handover) {
	ip, _ := netip.AddrFromSlice(ua.IP)
	var ev [1]QueryEvent
	out, _, d := s.fastReply(ip.Unmap(), pkt, q, out, &ev[0], s.cfg.Now())
	if out == nil {
		return nil, &handover{ev: ev[0], d: d}
	}
	if s.cfg.Firewall != nil {
		if g, ok := grantOf(&ev[0], q.lower[:len(q.lower)-1]); ok && !s.admit(append(grants[:0], g)) {
			out = appendFirewallFailed(out[:0], pkt, q.nameEnd+4, q.edns, q.do)
			failAnswer(&ev[0])
		}
		clear(grants[:cap(grants)])
	}
	s.countFast(ev[:])
	ev[0].tap = tapWire{query: pkt, reply: out, peer: ua.AddrPort()}
	if _, err := pc.WriteTo(out, ua); err != nil {
		s.log.Debug("write failed", "client_ip", ev[0].Client.IP, "error", err)
	}
	s.observeAll(ev[:], s.cfg.Now())
	return out, nil
}

// fastReply decides the query (the one decide call it gets, whatever
// path answers it) and, for an allowed or audited name in the wire
// cache, builds the reply into out and fills ev (all but Latency). When it
// returns no reply, a non-nil forwarder means the query is an allowed
// cache miss that may be forwarded from wire bytes through it
// (startMiss); nil means the full path must answer with d (refusals,
// replies that need truncating).
//
// now is when the query was read (one clock reading per batch).
func (s *Server) fastReply(ip netip.Addr, pkt []byte, q *fastQuery, out []byte, ev *QueryEvent, now time.Time) ([]byte, *forwarder, decision) {
	name := q.lower[:len(q.lower)-1]
	*ev = QueryEvent{Time: now, QName: q.qname, QTypeCode: q.qtype}
	ev.Client.IP = ip
	d := s.decide(ip, name, now, ev)
	if !d.resolve {
		return nil, nil, d
	}
	ev.QType = dns.TypeToString[q.qtype]
	if ev.QType == "" {
		ev.QType = "TYPE" + itoa(int(q.qtype))
	}
	key := cacheKey{name: name, qtype: q.qtype, qclass: dns.ClassINET, do: q.do}
	wa, age, ok := s.cache.getWire(key, now)
	if !ok {
		if d.inCluster {
			return nil, s.clusterFw, d
		}
		return nil, s.fwd, d
	}
	out = patchReply(out, wa, age, pkt, q)
	if out == nil {
		return nil, nil, d // needs truncation: the full path does it
	}
	ev.Cached = true // counted by observeAll
	ev.RCode = dns.RcodeToString[int(out[3]&0x0F)]
	ev.Answers = wa.answers
	ev.ttl = wa.addrTTL - min(age, wa.addrTTL) // as patchReply decrements
	return out, nil, d
}

// patchReply builds the reply to the client's query pkt from a cached
// wire answer aged age seconds: the client's ID, RD bit and question case
// (0x20), decremented TTLs, and an OPT record if the client sent one. It
// returns nil if the reply would need truncating.
func patchReply(out []byte, wa *wireAnswer, age uint32, pkt []byte, q *fastQuery) []byte {
	out = append(out, wa.wire...)
	out[0], out[1] = pkt[0], pkt[1]
	if q.rd {
		out[2] |= 0x01
	} else {
		out[2] &^= 0x01
	}
	copy(out[12:q.nameEnd], pkt[12:q.nameEnd]) // the client's case (0x20)
	for _, off := range wa.qnameCopies {
		copy(out[off:off+q.nameEnd-12], pkt[12:q.nameEnd])
	}
	for i, off := range wa.ttlOffsets {
		ttl := wa.ttls[i]
		if ttl > age {
			ttl -= age
		} else {
			ttl = 0
		}
		binary.BigEndian.PutUint32(out[off:], ttl)
	}
	limit := 512
	if q.edns {
		out = appendOPT(out, q.do)
		limit = min(q.udpSize, 1232)
	}
	if len(out) > limit {
		return nil
	}
	return out
}

func itoa(i int) string {
	var b [8]byte
	n := len(b)
	for {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(b[n:])
		}
	}
}

// handover is a query the fast path decided and hands to the full path:
// its event as decide filled it (Time, Client, Detection), the decision,
// and what a fast miss learned of the upstreams (tried).
type handover struct {
	ev    QueryEvent
	d     decision
	tried missHint
}

// serveSlow hands a packet to the full miekg/dns path. ho, if set, is the
// fast path's decision (the query is not decided again).
func (s *Server) serveSlow(pc net.PacketConn, ua *net.UDPAddr, pkt []byte, ho *handover) {
	m := new(dns.Msg)
	if err := m.Unpack(pkt); err != nil {
		// As miekg/dns's server: FORMERR for a parseable header, else drop.
		if len(pkt) >= 12 && pkt[2]&0x80 == 0 {
			resp := []byte{pkt[0], pkt[1], 0x80 | pkt[2]&0x79, dns.RcodeFormatError, 0, 0, 0, 0, 0, 0, 0, 0}
			_, _ = pc.WriteTo(resp, ua)
		}
		return
	}
	s.serveDNS(&udpWriter{pc: pc, addr: ua, pkt: pkt}, m, ho)
}

// udpWriter is the dns.ResponseWriter of the full path on the fast socket.
type udpWriter struct {
	pc   net.PacketConn
	addr *net.UDPAddr
	pkt  []byte // the query as read (for dnstap)
}

func (w *udpWriter) LocalAddr() net.Addr  { return w.pc.LocalAddr() }
func (w *udpWriter) RemoteAddr() net.Addr { return w.addr }
func (w *udpWriter) WriteMsg(m *dns.Msg) error {
	bp := packBufs.Get().(*[]byte)
	defer packBufs.Put(bp)
	// PackBuffer packs in place only when len (not cap) is large enough.
	b, err := m.PackBuffer((*bp)[:cap(*bp)])
	if err != nil {
		return err
	}
	if cap(b) <= maxPooledPack {
		*bp = b[:0] // keep a grown buffer for the next reply
	}
	_, err = w.pc.WriteTo(b, w.addr)
	return err
}

// maxPooledPack bounds the reply buffers kept in packBufs.
const maxPooledPack = 64 << 10

// packBufs holds reply buffers for the full path on the UDP socket.
var packBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, 1232)
	return &b
}}

func (w *udpWriter) Write(b []byte) (int, error) { return w.pc.WriteTo(b, w.addr) }
func (w *udpWriter) Close() error                { return nil }
func (w *udpWriter) TsigStatus() error           { return nil }
func (w *udpWriter) TsigTimersOnly(bool)         {}
func (w *udpWriter) Hijack()                     {}
func (w *udpWriter) Network() string             { return "udp" }

var _ dns.ResponseWriter = (*udpWriter)(nil)
