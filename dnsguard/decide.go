package dnsguard

import (
	"net/netip"
	"time"

	"github.com/kordon-dev/kordon/policy"
	"github.com/miekg/dns"
)

// decision is what decide says of one query: resolve it (allowed or
// audit), or refuse it with rcode and, if withEDE, an Extended DNS Error.
type decision struct {
	verdict Verdict
	policy  string
	resolve bool
	// inCluster: a resolved name goes to the cluster resolvers.
	inCluster bool
	rcode     int
	withEDE   bool
	ede       uint16
	edeText   string
}

// decide is the one decision function: the full path (handle), the UDP
// fast path's cache hits (fastReply) and its misses (startMiss, from
// fastReply's decision) all ask it, exactly once per query. A query the
// fast path hands over to the full path carries its decision (handover),
// so it is never decided, or rate limited, twice.
//
// name is the canonical query name (lower-case, no trailing dot) and now
// when the query was read. ev has Client.IP set; decide fills the rest of
// Client, Detection, Verdict and Policy.
//
// The order (README, "Decision order"): the per-client rate limit,
// unknown clients that are refused, the mesh-wide deny list, the
// well-known DoH resolvers (DoHList) for workloads whose firewall mode is
// Enforce, the EgressPolicies (with the unknown-client default), then the
// detector's quarantine.
func (s *Server) decide(ip netip.Addr, name string, now time.Time, ev *QueryEvent) decision {
	d := s.rules(ip, name, now, ev)
	ev.Verdict, ev.Policy = d.verdict, d.policy
	return d
}

// rules is decide but for recording the verdict on ev.
func (s *Server) rules(ip netip.Addr, name string, now time.Time, ev *QueryEvent) decision {
	// The limiter comes first: a flood is refused before any lookup.
	if !s.limiter.allow(ip, now) {
		s.metrics.rateLimited.Inc()
		return decision{verdict: VerdictBlocked, policy: "rate-limit", rcode: dns.RcodeRefused}
	}
	wl, known := s.cfg.Registry.ByIP(ip)
	if known {
		ev.Client.Namespace, ev.Client.Pod, ev.Client.ServiceAccount = wl.Namespace, wl.Name, wl.ServiceAccount
		ev.Client.SPIFFEID = s.ids.id(wl)
		ev.Client.Node = wl.Node
	} else {
		wl = nil
		if s.cfg.UnknownClients == UnknownRefuse {
			return decision{verdict: VerdictBlocked, policy: "unknown-client", rcode: dns.RcodeRefused}
		}
	}
	if ev.Client.Node == "" {
		ev.Client.Node = s.cfg.Node
	}
	st, we := s.egressFor(wl)
	if det, polName := we.Detection(); det != nil {
		ev.Detection = DetectionSettings{Sensitivity: det.Sensitivity, Quarantine: det.Action == policy.DetectionQuarantine, Policy: polName}
	}
	if bl := s.blocklist.Load(); bl != nil {
		if entry, ok := bl.Match(name); ok {
			return s.block("blocklist", dns.ExtendedErrorCodeBlocked, "blocked by mesh-wide deny list ("+entry+")")
		}
	}
	// Why: a workload whose connections the firewall limits to addresses
	// its allowed answers gave it could still resolve a public DoH
	// resolver here, connect to it, and resolve anything through HTTPS.
	// An explicit allow does not override this (--doh-list changes it).
	if we.Firewall().Mode == policy.FirewallEnforce {
		if _, ok := s.doh.Match(name); ok {
			return s.block("doh-list", dns.ExtendedErrorCodeBlocked, dohBlockedText)
		}
	}
	pd := we.Decide(name)
	if pd.Verdict == policy.EgressAllow && wl == nil && s.cfg.UnknownClients == UnknownDeny && !st.ix.IsInCluster(name) {
		return s.block("unknown-client", dns.ExtendedErrorCodeProhibited, "unknown client: only in-cluster names may be resolved")
	}
	d := decision{verdict: VerdictAllowed, policy: pd.Policy, resolve: true}
	switch pd.Verdict {
	case policy.EgressBlock:
		code := uint16(dns.ExtendedErrorCodeProhibited)
		if pd.Denied {
			code = dns.ExtendedErrorCodeBlocked
		}
		return s.block(pd.Policy, code, pd.Reason())
	case policy.EgressAuditBlock:
		d.verdict = VerdictAudit
	}
	if s.cfg.Inspector != nil {
		if reason, blocked := s.cfg.Inspector.Quarantined(&ev.Client, name); blocked {
			q := s.block(pd.Policy, dns.ExtendedErrorCodeBlocked, reason)
			q.verdict = VerdictQuarantined
			return q
		}
	}
	d.inCluster = st.ix.IsInCluster(name)
	return d
}

// block is a refusal by policy: BlockRcode with an EDE naming the policy.
func (s *Server) block(policyName string, code uint16, text string) decision {
	return decision{verdict: VerdictBlocked, policy: policyName, rcode: s.cfg.BlockRcode, withEDE: true, ede: code, edeText: text}
}
