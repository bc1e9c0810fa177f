package dnsguard

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// Firewall makes the addresses of allowed answers reachable in the kernel before the answer reaches the client (package egress implements it; kordon node and kordon dev wire it).
type Firewall interface {
	// Admit returns once every grant is in force in the kernel, or an error; it bounds its own time. On error the answers of that call are replaced by SERVFAIL (never fail open).
	//
	// Admit is called from the answering goroutines, concurrently, with
	// every grant of one batch of replies written together. It must not
	// modify grants, and must not keep the grants slice past its return:
	// the answering goroutine reuses it for the next batch. The Addrs
	// slices are never modified and may be kept.
	Admit(grants []Grant) error
}

// Grant is one answer's addresses for one client.
type Grant struct {
	Client netip.Addr   // the querying workload's address (unmapped)
	Name   string       // query name, lower-case, no trailing dot
	Addrs  []netip.Addr // every A and AAAA record in the answer section (the CNAME chain of that answer)
	TTL    uint32       // seconds: the smallest TTL among those records as sent to the client
}

// firewallErrorText is the EDE text of an answer the firewall could not
// admit.
const firewallErrorText = "egress firewall could not be programmed"

// grantOf is the grant of an answer about to be written: ev's addresses
// for ev's client, if the answer has any and was allowed or audited
// (blocked, quarantined and refused answers carry none). name is the
// canonical query name.
func grantOf(ev *QueryEvent, name string) (Grant, bool) {
	if len(ev.Answers) == 0 || ev.Verdict != VerdictAllowed && ev.Verdict != VerdictAudit {
		return Grant{}, false
	}
	return Grant{Client: ev.Client.IP, Name: name, Addrs: ev.Answers, TTL: ev.ttl}, true
}

// admit asks the firewall to put grants (those of one batch of replies)
// in force, and reports whether it did. On false every reply with a grant
// in the call must become SERVFAIL (firewallFailed): an answer never
// reaches the client before its addresses are reachable, nor when they
// could not be made so. Without a firewall it is true.
func (s *Server) admit(grants []Grant) bool {
	if s.cfg.Firewall == nil || len(grants) == 0 {
		return true
	}
	start := time.Now() // real time, as Admit bounds its own
	err := s.cfg.Firewall.Admit(grants)
	s.metrics.admitSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		s.metrics.admitErrors.Inc()
		s.log.Debug("firewall admit failed", "grants", len(grants), "error", err)
		return false
	}
	return true
}

// firewallFailed is the full path's answer to r when the firewall could
// not admit its addresses: SERVFAIL with EDE 23 (Network Error).
func (s *Server) firewallFailed(r *dns.Msg) *dns.Msg {
	m := s.reply(r, dns.RcodeServerFailure)
	addEDE(m, dns.ExtendedErrorCodeNetworkError, firewallErrorText)
	return m
}

// failAnswer records on ev that its answer became firewallFailed's.
func failAnswer(ev *QueryEvent) {
	ev.RCode = dns.RcodeToString[dns.RcodeServerFailure]
	ev.Answers = nil
}

// appendFirewallFailed builds, from wire bytes, the same answer as
// firewallFailed to the client's query pkt whose question ends at qEnd
// (edns and do as the client sent them).
func appendFirewallFailed(out, pkt []byte, qEnd int, edns, do bool) []byte {
	out = append(out, pkt[0], pkt[1], 0x80|pkt[2]&0x01, 0x80|pkt[3]&0x10|dns.RcodeServerFailure, 0, 1, 0, 0, 0, 0, 0, 1)
	out = append(out, pkt[12:qEnd]...)
	var flags byte
	if edns && do {
		flags = 0x80
	}
	const edeLen = 2 + len(firewallErrorText)
	out = append(out, 0, 0, 41, 0x04, 0xD0, 0, 0, flags, 0) // OPT: UDP 1232, the client's DO bit
	out = binary.BigEndian.AppendUint16(out, uint16(4+edeLen))
	out = binary.BigEndian.AppendUint16(out, dns.EDNS0EDE)
	out = binary.BigEndian.AppendUint16(out, uint16(edeLen))
	out = binary.BigEndian.AppendUint16(out, dns.ExtendedErrorCodeNetworkError)
	return append(out, firewallErrorText...)
}

// minAddrTTL is the smallest TTL of the A and AAAA records in rrs.
func minAddrTTL(rrs []dns.RR) uint32 {
	ttl, found := ^uint32(0), false
	for _, rr := range rrs {
		if t := rr.Header().Rrtype; t == dns.TypeA || t == dns.TypeAAAA {
			ttl, found = min(ttl, rr.Header().Ttl), true
		}
	}
	if !found {
		return 0
	}
	return ttl
}
