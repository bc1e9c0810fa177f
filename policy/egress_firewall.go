package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// FirewallMode says how the node firewall treats a workload.
type FirewallMode int

// Firewall modes.
const (
	// FirewallOff: no selecting policy has an allow list or allowCIDRs;
	// the workload's egress is not filtered (flows are still logged).
	FirewallOff FirewallMode = iota
	// FirewallEnforce: some selecting Enforce policy has an allow list or
	// allowCIDRs; everything outside the grants is blocked.
	FirewallEnforce
	// FirewallAudit: only Audit policies have them; the firewall logs what
	// it would block and blocks nothing.
	FirewallAudit
)

// String returns Off, Enforce or Audit.
func (m FirewallMode) String() string {
	switch m {
	case FirewallOff:
		return "Off"
	case FirewallEnforce:
		return "Enforce"
	case FirewallAudit:
		return "Audit"
	}
	return "FirewallMode(" + strconv.Itoa(int(m)) + ")"
}

// Protocols of PortRange.Proto.
const (
	ProtoTCP  = "tcp"
	ProtoUDP  = "udp"
	ProtoSCTP = "sctp"
)

// PortRange is a resolved port rule: Proto is "tcp", "udp" or "sctp";
// First..Last inclusive.
type PortRange struct {
	Proto       string
	First, Last uint16
}

// String renders tcp/443 or udp/1000-2000.
func (r PortRange) String() string {
	if r.First == r.Last {
		return fmt.Sprintf("%s/%d", r.Proto, r.First)
	}
	return fmt.Sprintf("%s/%d-%d", r.Proto, r.First, r.Last)
}

// CIDRGrant is one allowed destination range with the ports of the policy
// that allows it (nil Ports: any port, any protocol).
type CIDRGrant struct {
	Prefix netip.Prefix
	Ports  []PortRange
	// Policy is namespace/name of the granting policy.
	Policy string
}

// Firewall is what the node firewall enforces for one workload. Its
// slices are shared by every caller and must not be modified.
type Firewall struct {
	Mode FirewallMode
	// Policy is namespace/name of the policy that sets Mode (for logs and
	// flow records); "" when Mode is FirewallOff.
	Policy string
	// CIDRs are the allowCIDRs of the selecting policies of the Mode
	// (Enforce: the Enforce ones; Audit: the Audit ones), each with its own
	// policy's ports, deduplicated and sorted by prefix (address, then
	// length), then ports, then policy.
	CIDRs []CIDRGrant
	// Quarantine is true when the detection settings in force for the
	// workload (those Detection returns, which dnsguard acts on) have
	// action Quarantine: the firewall must be able to block single
	// destinations for the workload even when Mode is FirewallOff.
	Quarantine bool
}

// Firewall returns what the node firewall enforces for the workload. It is
// computed once, by ForWorkload. As for Decide, w must not be nil: a
// caller without a WorkloadEgress has no policy view, and treating that as
// "not filtered" would fail open.
func (w *WorkloadEgress) Firewall() Firewall {
	return w.fw
}

// firewallGrants reports whether c makes the firewall filter: it has an
// allow list or allowCIDRs.
func (c *compiledEgress) firewallGrants() bool {
	return c.allow.Len() > 0 || len(c.cidrs) > 0
}

func (w *WorkloadEgress) computeFirewall() {
	var enforce, audit *compiledEgress
	for _, c := range w.policies {
		if !c.firewallGrants() {
			continue
		}
		if c.audit {
			if audit == nil {
				audit = c
			}
		} else if enforce == nil {
			enforce = c
		}
	}
	fw := Firewall{}
	if d, _ := w.Detection(); d != nil && d.Action == DetectionQuarantine {
		fw.Quarantine = true
	}
	switch {
	case enforce != nil:
		fw.Mode, fw.Policy = FirewallEnforce, enforce.name
		w.fwAudit = false
	case audit != nil:
		fw.Mode, fw.Policy = FirewallAudit, audit.name
		w.fwAudit = true
	default:
		w.fw = fw
		return
	}
	for _, c := range w.policies {
		if c.audit != w.fwAudit {
			continue
		}
		for _, p := range c.cidrs {
			fw.CIDRs = append(fw.CIDRs, CIDRGrant{Prefix: p, Ports: c.ports, Policy: c.name})
		}
	}
	slices.SortStableFunc(fw.CIDRs, func(a, b CIDRGrant) int {
		if n := comparePrefix(a.Prefix, b.Prefix); n != 0 {
			return n
		}
		if n := comparePorts(a.Ports, b.Ports); n != 0 {
			return n
		}
		return cmp.Compare(a.Policy, b.Policy)
	})
	// Equal prefix and ports: one grant, named for the policy first by name.
	fw.CIDRs = slices.CompactFunc(fw.CIDRs, func(a, b CIDRGrant) bool {
		return a.Prefix == b.Prefix && comparePorts(a.Ports, b.Ports) == 0
	})
	w.fw = fw
}

// NamePorts returns the ports on which addresses answered for name (a
// normalized name, see CanonicalName) may be reached. any is true when
// some policy of the firewall Mode that allows name has no ports;
// otherwise ports is the sorted, merged union of those policies' ports.
// ok is false when no such policy allows name, and then the firewall
// grants nothing for it.
//
// Ports are per policy: a policy's ports never widen another policy's
// names or CIDRs. NamePorts agrees with Decide: a name Decide blocks is
// never ok, and in FirewallAudit mode neither is a name an Audit policy
// denies (the firewall logs what those policies would block). An Audit
// policy's allow list, which Decide lets a name resolve by, grants nothing
// in FirewallEnforce mode. In-cluster names are ok only when a policy
// lists them: the firewall does not filter internal ranges. As for
// Decide, w must not be nil.
func (w *WorkloadEgress) NamePorts(name string) (ports []PortRange, any bool, ok bool) {
	fw := &w.fw
	if fw.Mode == FirewallOff {
		return nil, false, false
	}
	d := w.Decide(name)
	if d.Verdict == EgressBlock || (fw.Mode == FirewallAudit && d.Denied) {
		return nil, false, false
	}
	for _, c := range w.policies {
		if c.audit != w.fwAudit {
			continue
		}
		if _, m := c.allow.Match(name); !m {
			continue
		}
		ok = true
		if c.ports == nil {
			any = true
		}
		if !any {
			ports = append(ports, c.ports...)
		}
	}
	if any {
		return nil, true, true
	}
	return mergePorts(ports), false, ok
}

// comparePrefix orders prefixes by address (IPv4 before IPv6), then by
// length.
func comparePrefix(a, b netip.Prefix) int {
	if n := a.Addr().Compare(b.Addr()); n != 0 {
		return n
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// comparePorts orders port lists, nil (any port) first.
func comparePorts(a, b []PortRange) int {
	if (a == nil) != (b == nil) {
		if a == nil {
			return -1
		}
		return 1
	}
	return slices.CompareFunc(a, b, comparePortRange)
}

func comparePortRange(a, b PortRange) int {
	if n := cmp.Compare(a.Proto, b.Proto); n != 0 {
		return n
	}
	if n := cmp.Compare(a.First, b.First); n != 0 {
		return n
	}
	return cmp.Compare(a.Last, b.Last)
}

// mergePorts sorts ranges by protocol and start and merges overlapping or
// adjacent ranges of one protocol. It may reorder rs in place.
func mergePorts(rs []PortRange) []PortRange {
	if len(rs) == 0 {
		return nil
	}
	slices.SortFunc(rs, comparePortRange)
	out := []PortRange{rs[0]}
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if r.Proto == last.Proto && uint32(r.First) <= uint32(last.Last)+1 {
			last.Last = max(last.Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return out
}

// parseEgressCIDR parses one spec.allowCIDRs entry. Host bits must be zero:
// a range written 10.1.2.3/8 is most likely a typo for 10.1.2.3/32 or a
// misunderstanding, and silently masking it (as Cilium's toCIDR does) would
// widen access to a whole /8, so it is refused with the masked form as a
// hint. IPv4-mapped IPv6 ranges are refused too: the firewall matches IPv4
// traffic in IPv4 form, so they would silently match nothing.
func parseEgressCIDR(v string) (netip.Prefix, error) {
	if !strings.Contains(v, "/") {
		if a, err := netip.ParseAddr(v); err == nil && a.Zone() == "" {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: missing prefix length (write %q for one address)", v, netip.PrefixFrom(a, a.BitLen()).String())
		}
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: %s", v, netipReason(err, v))
	}
	if p.Addr().Is4In6() {
		q := netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0)).Masked()
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: IPv4-mapped IPv6 range (write %q)", v, q.String())
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: host bits are set (the range is %q; write a single address as %q)", v, m.String(), netip.PrefixFrom(p.Addr(), p.Addr().BitLen()).String())
	}
	return p, nil
}

// netipReason strips netip's "netip.ParsePrefix(...): ParseAddr(...): "
// prefixes, which repeat the value the message already quotes.
func netipReason(err error, v string) string {
	msg := strings.TrimPrefix(err.Error(), "netip.ParsePrefix("+strconv.Quote(v)+"): ")
	if strings.HasPrefix(msg, "ParseAddr(") {
		if _, rest, found := strings.Cut(msg, "): "); found {
			msg = rest
		}
	}
	return msg
}

// egressProtocols maps spec.ports[].protocol to PortRange.Proto.
var egressProtocols = map[string]string{"": ProtoTCP, "TCP": ProtoTCP, "UDP": ProtoUDP, "SCTP": ProtoSCTP}

// checkEgressPort validates one spec.ports entry; path is its field path.
func checkEgressPort(pos *Positions, path string, p EgressPort) ErrorList {
	var errs ErrorList
	if _, ok := egressProtocols[p.Protocol]; !ok {
		errs = append(errs, pos.Errorf(path+".protocol", "unknown protocol %q (want TCP, UDP or SCTP)", p.Protocol))
	}
	portOK := true
	switch {
	case p.Port == 0 && !pos.has(path+".port"):
		portOK = false
		if p.EndPort != 0 {
			errs = append(errs, pos.Errorf(path+".endPort", "endPort needs port"))
		} else {
			errs = append(errs, pos.Errorf(path+".port", "port is required (a number from 1 to 65535)"))
		}
	case p.Port < 1 || p.Port > 65535:
		portOK = false
		errs = append(errs, pos.Errorf(path+".port", "invalid port %d: must be a number from 1 to 65535", p.Port))
	}
	switch {
	case p.EndPort == 0 && !pos.has(path+".endPort"):
	case p.EndPort < 1 || p.EndPort > 65535:
		errs = append(errs, pos.Errorf(path+".endPort", "invalid port %d: must be a number from 1 to 65535", p.EndPort))
	case portOK && p.EndPort < p.Port:
		errs = append(errs, pos.Errorf(path+".endPort", "endPort %d is below port %d", p.EndPort, p.Port))
	}
	return errs
}

// has reports whether path was present in the source. Without a source
// (policies constructed in code) nothing is: a zero value is an omitted
// field, as in JSON.
func (p *Positions) has(path string) bool {
	if p == nil {
		return false
	}
	_, ok := p.m[path]
	return ok
}

// validateEgressFirewall checks spec.allowCIDRs and spec.ports.
func validateEgressFirewall(pos *Positions, spec *EgressPolicySpec) ErrorList {
	var errs ErrorList
	for i, v := range spec.AllowCIDRs {
		if _, err := parseEgressCIDR(v); err != nil {
			errs = append(errs, pos.Errorf(fmt.Sprintf("spec.allowCIDRs[%d]", i), "%v", err))
		}
	}
	for i, p := range spec.Ports {
		errs = append(errs, checkEgressPort(pos, fmt.Sprintf("spec.ports[%d]", i), p)...)
	}
	if len(spec.Ports) > 0 && len(spec.Allow) == 0 && len(spec.AllowCIDRs) == 0 {
		errs = append(errs, pos.Errorf("spec.ports", "needs spec.allow or spec.allowCIDRs"))
	}
	return errs
}

// compileEgressFirewall resolves spec.allowCIDRs (deduplicated, sorted) and
// spec.ports (sorted, merged; nil when the policy sets none).
func compileEgressFirewall(spec *EgressPolicySpec) ([]netip.Prefix, []PortRange, error) {
	var cidrs []netip.Prefix
	for _, v := range spec.AllowCIDRs {
		p, err := parseEgressCIDR(v)
		if err != nil {
			return nil, nil, err
		}
		cidrs = append(cidrs, p)
	}
	slices.SortFunc(cidrs, comparePrefix)
	cidrs = slices.Compact(cidrs)
	var ports []PortRange
	for i, p := range spec.Ports {
		if errs := checkEgressPort(nil, fmt.Sprintf("spec.ports[%d]", i), p); len(errs) > 0 {
			return nil, nil, fmt.Errorf("%s: %s", errs[0].Field, errs[0].Msg)
		}
		last := p.EndPort
		if last == 0 {
			last = p.Port
		}
		ports = append(ports, PortRange{Proto: egressProtocols[p.Protocol], First: uint16(p.Port), Last: uint16(last)})
	}
	return cidrs, mergePorts(ports), nil
}
