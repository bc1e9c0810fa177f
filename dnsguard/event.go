// Package dnsguard is kordon's filtering DNS resolver: it identifies each
// client by source IP through the workload registry, filters names by
// EgressPolicy, forwards over pooled upstream connections with a cache,
// logs every query as one JSON object, and feeds the exfiltration detector.
package dnsguard

import (
	"net/netip"
	"time"
)

// Client is who sent a query, as attributed by the workload registry.
// Unknown clients have only IP set.
type Client struct {
	IP             netip.Addr `json:"ip"`
	Namespace      string     `json:"namespace,omitempty"`
	Pod            string     `json:"pod,omitempty"`
	ServiceAccount string     `json:"serviceAccount,omitempty"`
	SPIFFEID       string     `json:"spiffeId,omitempty"`
	Node           string     `json:"node,omitempty"`
}

// Known reports whether the registry attributed the client to a workload.
func (c *Client) Known() bool { return c.Pod != "" }

// Verdict is what dnsguard decided for a query.
type Verdict string

// Verdicts.
const (
	// VerdictAllowed: answered normally, permitted by policy (or no policy).
	VerdictAllowed Verdict = "allowed"
	// VerdictBlocked: refused by policy (NXDOMAIN or REFUSED with EDE).
	VerdictBlocked Verdict = "blocked"
	// VerdictAudit: answered normally, but an Audit-mode policy would have blocked it.
	VerdictAudit Verdict = "audit"
	// VerdictQuarantined: blocked because the detector quarantined the
	// registrable domain for this workload.
	VerdictQuarantined Verdict = "quarantined"
)

// DetectionSettings are the detector settings of the EgressPolicy that
// applies to a client (zero value: defaults, alert only).
type DetectionSettings struct {
	// Sensitivity is "Low", "Medium" or "High" ("" means Medium).
	Sensitivity string `json:"sensitivity,omitempty"`
	// Quarantine is true when the policy's action is Quarantine.
	Quarantine bool `json:"quarantine,omitempty"`
	// Policy names the EgressPolicy (namespace/name) that set these.
	Policy string `json:"policy,omitempty"`
}

// QueryEvent is one completed query: exactly what the query log writes as
// one JSON object, and what Inspectors observe.
type QueryEvent struct {
	Time      time.Time    `json:"time"`
	Client    Client       `json:"client"`
	QName     string       `json:"qname"`
	QType     string       `json:"qtype"`
	QTypeCode uint16       `json:"-"`
	RCode     string       `json:"rcode"`
	Verdict   Verdict      `json:"verdict"`
	Policy    string       `json:"policy,omitempty"`
	Upstream  string       `json:"upstream,omitempty"`
	Cached    bool         `json:"cached,omitempty"`
	Latency   float64      `json:"latencySeconds"`
	Answers   []netip.Addr `json:"answers,omitempty"`
	// Detection carries the applicable policy's detector settings; not logged.
	Detection DetectionSettings `json:"-"`
	// tap is what dnstap records besides (see tapWire).
	tap tapWire
	// ttl is the smallest TTL of the A/AAAA records in Answers as sent
	// (the firewall's Grant.TTL).
	ttl uint32
}

// Inspector watches traffic on behalf of the resolver: the exfiltration
// detector implements it. Both methods are called on the query path and
// must be fast and safe for concurrent use.
type Inspector interface {
	// Quarantined reports whether qname is quarantined for the client; a
	// quarantined name is answered as blocked, with reason in the EDE text.
	Quarantined(c *Client, qname string) (reason string, blocked bool)
	// Observe receives every completed query. It must not block; the
	// event must not be retained after it returns unless copied.
	Observe(ev *QueryEvent)
}
