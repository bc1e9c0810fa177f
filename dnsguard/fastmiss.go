package dnsguard

import (
	"encoding/binary"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// A fast miss is a UDP query that took the fast path (plain query,
// allowed, not rate limited) but missed the cache. It is forwarded from
// wire bytes, and the upstream socket's reader answers the client itself
// when the answer arrives: no goroutine waits per query, no dns.Msg is
// built, and replies go out in batches. The upstream's answer is cached
// in wire form (its records kept as they came, OPT removed, the question
// lower-cased) and the client gets exactly what a cache hit would give.
//
// Anything unusual hands the client's packet to the full path with what
// was learned (missHint), so no upstream is asked twice: a timeout (the
// full path fails over to the other upstreams, then serves stale or
// SERVFAIL), a truncated answer (retried over TCP), a SERVFAIL, REFUSED
// or other-rcode answer, a record layout the wire cache does not rewrite,
// or a reply that needs truncating.
type fastMiss struct {
	pc     net.PacketConn // the socket the query came in on
	group  net.PacketConn // the first socket of pc's SO_REUSEPORT group
	client netip.AddrPort
	pkt    []byte // the client's query
	q      fastQuery
	key    cacheKey
	ev     QueryEvent
	d      decision // decide's, handed over with the query if need be
	up     *upstream
}

// missSend is a fast miss's query, registered on its upstream socket and
// waiting to be written (batched with the others of the same read).
type missSend struct {
	c   *udpConn
	id  uint16
	fm  *fastMiss
	n   int // the query is buf[:n] (no slice into buf: missSends are swapped)
	buf [12 + 255 + 4 + 11]byte
}

// startMiss registers a fast-path miss, decided d, on fwd's first
// healthy upstream and builds its query into ms; the caller writes it
// (then calls ms.writeFailed if that fails). It returns false, having
// registered nothing, when the full path must answer.
func (s *Server) startMiss(pc, group net.PacketConn, client netip.AddrPort, pkt []byte, q *fastQuery, ev *QueryEvent, d *decision, fwd *forwarder, ms *missSend) bool {
	u := fwd.firstHealthy()
	if u == nil {
		return false
	}
	fm := &fastMiss{pc: pc, group: group, client: client, pkt: append([]byte(nil), pkt...), q: *q, ev: *ev, d: *d, up: u}
	fm.key = cacheKey{name: q.lower[:len(q.lower)-1], qtype: q.qtype, qclass: dns.ClassINET, do: q.do}
	s.inflight.Add(1)
	// The deadline is real time (the sweeper's clock), not Config.Now.
	c, id, err := u.acquire(waiter{fm: fm, deadline: time.Now().Add(u.timeout)})
	if err != nil {
		s.inflight.Done()
		return false
	}
	// The query as the full path sends it: the client's question (0x20
	// case kept), RD and CD as the client set them, EDNS 1232 with its DO.
	qEnd := q.nameEnd + 4
	wire := append(ms.buf[:0], byte(id>>8), byte(id), pkt[2]&0x01, pkt[3]&0x10, 0, 1, 0, 0, 0, 0, 0, 0)
	wire = append(wire, pkt[12:qEnd]...)
	ms.c, ms.id, ms.fm, ms.n = c, id, fm, len(appendOPT(wire, q.do))
	return true
}

// writeFailed hands the query to the full path if it is still pending
// (nothing was sent, so nothing will answer it).
func (ms *missSend) writeFailed(s *Server) {
	if ms.c.forget(ms.id) {
		ms.c.up.failed()
		s.missAbandoned(ms.fm, missHint{asked: ms.c.up})
	}
}

// missHint is what a fast miss learned of the upstreams before handing
// its query to the full path, which then forwards without asking any
// upstream twice.
type missHint struct {
	asked  *upstream // already asked: not asked again
	answer *dns.Msg  // asked's answer, if it gave a usable one
	tcp    *upstream // answered truncated: ask it over TCP
}

var _ missCompleter = (*Server)(nil)

// missAnswered handles the upstream's answer to fm (already matched by
// ID and removed from its socket). It returns true when a reply was
// queued on rb; then missReplies sends and records it. Otherwise fm was
// handed to the full path.
func (s *Server) missAnswered(fm *fastMiss, resp []byte, rb *replyBatch) bool {
	u := fm.up
	qEnd := fm.q.nameEnd + 4
	if !sameQuestionWire(fm.pkt[12:qEnd], resp) {
		u.failed() // as exchange: an error, the others are tried
		s.missAbandoned(fm, missHint{asked: u})
		return false
	}
	if resp[2]&0x02 != 0 { // TC
		u.succeeded()
		s.missAbandoned(fm, missHint{tcp: u})
		return false
	}
	rcode := resp[3] & 0x0F
	var (
		wa  *wireAnswer
		ttl time.Duration
		ok  bool
	)
	if resp[2]&0x78 == 0 && (rcode == dns.RcodeSuccess || rcode == dns.RcodeNameError) {
		wa, ttl, ok = s.cache.wireFromUpstream(resp, qEnd)
	}
	if !ok {
		// SERVFAIL, REFUSED, other rcodes or opcodes, or a layout we do
		// not rewrite: the full path takes this answer as its first
		// attempt (failing over, serving stale, caching as usual).
		m := new(dns.Msg)
		if m.Unpack(resp) != nil {
			u.failed()
			s.missAbandoned(fm, missHint{asked: u})
			return false
		}
		u.succeeded()
		s.missAbandoned(fm, missHint{asked: u, answer: m})
		return false
	}
	u.succeeded()
	if ttl > 0 {
		s.cache.putWire(fm.key, wa, s.cfg.Now(), ttl)
	}
	out := patchReply(rb.slot(), wa, 0, fm.pkt, &fm.q)
	if out == nil {
		// Needs truncation: the full path does it (from the cache, or
		// from this answer if it was not cacheable).
		m := new(dns.Msg)
		if m.Unpack(resp) != nil {
			s.missAbandoned(fm, missHint{asked: u})
			return false
		}
		s.missAbandoned(fm, missHint{asked: u, answer: m})
		return false
	}
	rb.add(fm.group, fm.client, out)
	fm.ev.Upstream = u.addr
	fm.ev.RCode = dns.RcodeToString[int(rcode)]
	fm.ev.Answers = wa.answers
	fm.ev.ttl = wa.addrTTL
	return true
}

// missReplies sends the replies missAnswered queued on rb for done (one
// batch of upstream answers, in the order they were queued), once the
// firewall admitted their grants in one call, then records the queries
// and releases them.
func (s *Server) missReplies(done []*fastMiss, rb *replyBatch) {
	if s.cfg.Firewall != nil {
		grants := rb.grants[:0]
		for _, fm := range done {
			if g, ok := grantOf(&fm.ev, fm.key.name); ok {
				grants = append(grants, g)
			}
		}
		if !s.admit(grants) {
			for k, fm := range done {
				if _, ok := grantOf(&fm.ev, fm.key.name); ok {
					rb.set(k, appendFirewallFailed(rb.reply(k)[:0], fm.pkt, fm.q.nameEnd+4, fm.q.edns, fm.q.do))
					failAnswer(&fm.ev)
				}
			}
		}
		clear(grants)
		rb.grants = grants[:0]
	}
	evs := rb.evs[:0]
	for k, fm := range done {
		evs = append(evs, fm.ev)
		evs[k].tap = tapWire{query: fm.pkt, reply: rb.reply(k), peer: fm.client}
	}
	s.countFast(evs)
	rb.flush()
	s.observeAll(evs, s.cfg.Now())
	for range done {
		s.inflight.Done()
	}
	clear(evs) // no answers or names kept alive by the scratch
	rb.evs = evs[:0]
}

// missAbandoned answers fm's client on the full path, in a goroutine of
// its own (it may wait on upstreams), with fm's decision and tried.
func (s *Server) missAbandoned(fm *fastMiss, tried missHint) {
	ho := &handover{ev: fm.ev, d: fm.d, tried: tried}
	go func() {
		defer s.inflight.Done()
		s.serveSlow(fm.pc, net.UDPAddrFromAddrPort(fm.client), fm.pkt, ho)
	}()
}

// sameQuestionWire reports whether resp has exactly one question equal
// (names compared case-insensitively) to q, a question in wire form.
func sameQuestionWire(q, resp []byte) bool {
	if len(resp) < 12+len(q) || binary.BigEndian.Uint16(resp[4:]) != 1 {
		return false
	}
	// Label length bytes are < 64, so folding only 'A'-'Z' is exact.
	return foldEqual(q, resp[12:12+len(q)])
}

// foldEqual compares wire-form names (or name prefixes) ignoring case.
func foldEqual(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 32
	}
	return c
}

// wireFromUpstream turns an upstream answer (NOERROR or NXDOMAIN, its
// question already checked, ending at qEnd) into the cached wire form
// and its cache TTL, as put does for a dns.Msg. It refuses layouts it
// does not rewrite in place: an OPT record other than the last record, an
// answer owned by the query name spelled partly compressed (the full
// path renames those to the client's case; whole literal copies are
// recorded in qnameCopies and patched like the question), or anything
// malformed.
func (c *cache) wireFromUpstream(resp []byte, qEnd int) (*wireAnswer, time.Duration, bool) {
	w := append(make([]byte, 0, len(resp)), resp...)
	w[0], w[1] = 0, 0
	w[2] = 0x81                    // QR, RD (patched per client)
	w[3] = 0x80 | resp[3]&0x7F     // RA; Z, AD, CD and the rcode as the upstream said
	for i := 12; i < qEnd-4; i++ { // the question, lower-cased
		w[i] = lower(w[i])
	}
	an := int(binary.BigEndian.Uint16(w[6:]))
	ns := int(binary.BigEndian.Uint16(w[8:]))
	ar := int(binary.BigEndian.Uint16(w[10:]))
	wa := &wireAnswer{}
	rcode := int(w[3] & 0x0F)
	minTTL, soaTTL := ^uint32(0), int64(-1)
	wa.addrTTL = ^uint32(0)
	off := qEnd
	for i := 0; i < an+ns+ar; i++ {
		start := off
		var ok bool
		if off, ok = skipName(w, off); !ok || off+10 > len(w) {
			return nil, 0, false
		}
		typ := binary.BigEndian.Uint16(w[off:])
		ttl := binary.BigEndian.Uint32(w[off+4:])
		end := off + 10 + int(binary.BigEndian.Uint16(w[off+8:]))
		if end > len(w) {
			return nil, 0, false
		}
		if typ == dns.TypeOPT {
			if i != an+ns+ar-1 || end != len(w) || i < an+ns {
				return nil, 0, false
			}
			w = w[:start]
			binary.BigEndian.PutUint16(w[10:], uint16(ar-1))
			off = start
			break
		}
		wa.ttlOffsets = append(wa.ttlOffsets, off+4)
		wa.ttls = append(wa.ttls, ttl)
		switch {
		case i < an:
			if qn := w[12 : qEnd-4]; !(w[start] == 0xC0 && w[start+1] == 12) {
				if start+len(qn) <= len(w) && foldEqual(w[start:start+len(qn)], qn) {
					for k := start; k < start+len(qn); k++ {
						w[k] = lower(w[k])
					}
					wa.qnameCopies = append(wa.qnameCopies, start)
				} else if nameEqualsAt(w, start, qn) {
					return nil, 0, false
				}
			}
			minTTL = min(minTTL, ttl)
			rd := w[off+10 : end]
			if typ == dns.TypeA && len(rd) == 4 {
				wa.answers = append(wa.answers, netip.AddrFrom4([4]byte(rd)))
				wa.addrTTL = min(wa.addrTTL, ttl)
			} else if typ == dns.TypeAAAA && len(rd) == 16 {
				wa.answers = append(wa.answers, netip.AddrFrom16([16]byte(rd)))
				wa.addrTTL = min(wa.addrTTL, ttl)
			}
		case i < an+ns && typ == dns.TypeSOA && end-off-10 >= 22:
			soaTTL = int64(min(ttl, binary.BigEndian.Uint32(w[end-4:])))
		}
		off = end
	}
	if off != len(w) {
		return nil, 0, false
	}
	wa.wire = w
	ttl := c.ttlFor(rcode, an, minTTL, soaTTL)
	return wa, ttl, true
}

// nameEqualsAt reports whether the (possibly compressed) name at off in
// b equals lowerName, a lower-case name in wire form, ignoring case.
func nameEqualsAt(b []byte, off int, lowerName []byte) bool {
	j := 0
	for hops := 0; off < len(b) && hops < 64; {
		l := int(b[off])
		switch {
		case l == 0:
			return j < len(lowerName) && lowerName[j] == 0 && j+1 == len(lowerName)
		case l&0xC0 == 0xC0:
			if off+1 >= len(b) {
				return false
			}
			off = int(binary.BigEndian.Uint16(b[off:]) & 0x3FFF)
			hops++
			continue
		case l&0xC0 != 0 || off+1+l > len(b):
			return false
		}
		if j+1+l > len(lowerName) || int(lowerName[j]) != l {
			return false
		}
		for k := 1; k <= l; k++ {
			if lower(b[off+k]) != lowerName[j+k] {
				return false
			}
		}
		j += 1 + l
		off += 1 + l
	}
	return false
}
