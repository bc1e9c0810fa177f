// Package egress is kordon's kernel side of egress control: per-workload
// nftables sets and rules fed by DNS answers (a workload under an
// enforcing EgressPolicy reaches only the addresses its own allowed
// answers gave it, within TTL plus grace, or its allowCIDRs), transparent
// interception of every workload's DNS, and a conntrack flow log with
// direct-egress, resolver-bypass and egress-volume detection.
//
// It talks to the kernel only through netlink (github.com/google/nftables
// and github.com/ti-mo/conntrack); it never runs nft or conntrack.
package egress

// Connection marks. The forward chain sets one of these conntrack marks on
// the first packet of every new connection from a workload to a
// destination outside the internal ranges, so the flow log reads the
// verdict from conntrack instead of guessing it again in user space.
const (
	// MarkDNS: allowed because a DNS answer to this workload gave the address.
	MarkDNS uint32 = 0x6b000001
	// MarkCIDR: allowed by the workload's allowCIDRs.
	MarkCIDR uint32 = 0x6b000002
	// MarkAudit: an Audit-mode policy would have blocked it; let through.
	MarkAudit uint32 = 0x6b000003
	// MarkUnmanaged: the workload has no firewall policy; allowed and
	// watched (direct-egress detection only).
	MarkUnmanaged uint32 = 0x6b000004
	// MarkInternal: the destination is in an internal range (pod and
	// service CIDRs).
	MarkInternal uint32 = 0x6b000005
	// MarkBypass: a DNS query to another resolver, redirected to the
	// local dnsguard.
	MarkBypass uint32 = 0x6b000006
)

// NFLOG. Blocked (and audit-would-block) first packets are copied to this
// netlink log group with one of the prefixes below, because a rejected
// packet never confirms a conntrack entry and so produces no event.
const (
	// LogGroup is the NFLOG group of kordon's log rules.
	LogGroup uint16 = 107
	// Prefixes name the verdict and the reason.
	PrefixBlockPolicy     = "kordon block policy"     // not in any allowed answer or allowCIDR
	PrefixBlockPort       = "kordon block port"       // address allowed, port not in spec.ports
	PrefixBlockDoT        = "kordon block dot"        // DNS over TLS/QUIC (port 853)
	PrefixBlockQuarantine = "kordon block quarantine" // destination quarantined for this workload
	PrefixAudit           = "kordon audit"            // would have been blocked; allowed (Audit)
)
