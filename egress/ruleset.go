package egress

import (
	"net/netip"
	"strconv"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Set names. The v4 and v6 variants differ only in their address type.
const (
	setPods      = "pods"     // every registry workload address
	setEnforce   = "enforce"  // sources in Enforce mode
	setAudit     = "audit"    // sources in Audit mode
	setInternal  = "internal" // internal destination ranges (interval)
	setQuar      = "quar"     // src . dst quarantined
	setDNS       = "dns"      // src . dst learned from a name allowed on any port (timeout)
	setDNSPort   = "dnsport"  // src . dst . l4proto . dport, small port ranges expanded (timeout)
	setDNSRange  = "dnsrange" // src . dst . l4proto . dport-range, large ranges (interval, timeout)
	setDNSAddr   = "dnsaddr"  // src . dst learned from a port-restricted name (timeout): port verdict
	setCIDR      = "cidr"     // src . dst-prefix (interval), CIDR grants on any port
	setCIDRPort  = "cidrport" // src . dst-prefix . l4proto . dport-range (interval)
	setCIDRAddr  = "cidraddr" // src . dst-prefix of port-restricted CIDR grants: port verdict
	chainForward = "forward"
	chainPrerout = "prerouting"
)

// fam holds what differs between the IPv4 and IPv6 halves of the ruleset.
type fam struct {
	v6      bool
	suffix  string // "4" or "6"
	nfproto byte
	addr    nftables.SetDatatype
	alen    uint32 // address length in bytes
	saddr   uint32 // network header offsets
	daddr   uint32
	// Registers of a concatenation src . dst . l4proto . dport: the
	// 32-bit registers right after each other (NFT_REG_1 aliases
	// NFT_REG32_00).
	rSrc, rDst, rProto, rPort uint32
}

var (
	fam4 = fam{suffix: "4", nfproto: unix.NFPROTO_IPV4, addr: nftables.TypeIPAddr, alen: 4, saddr: 12, daddr: 16,
		rSrc: 1, rDst: 9, rProto: 10, rPort: 11}
	fam6 = fam{v6: true, suffix: "6", nfproto: unix.NFPROTO_IPV6, addr: nftables.TypeIP6Addr, alen: 16, saddr: 8, daddr: 24,
		rSrc: 1, rDst: 2, rProto: 16, rPort: 17}
	fams = []*fam{&fam4, &fam6}
)

func famOf(a netip.Addr) *fam {
	if a.Is4() {
		return &fam4
	}
	return &fam6
}

// setSpec describes one named set of the table.
type setSpec struct {
	base     string
	tail     string // after the family suffix: dnsport4_16
	key      func(f *fam) nftables.SetDatatype
	interval bool
	timeout  bool
}

func addrKey(f *fam) nftables.SetDatatype { return f.addr }
func pairKey(f *fam) nftables.SetDatatype { return nftables.MustConcatSetType(f.addr, f.addr) }
func portKey(f *fam) nftables.SetDatatype {
	return nftables.MustConcatSetType(f.addr, f.addr, nftables.TypeInetProto, nftables.TypeInetService)
}

var setSpecs = []setSpec{
	{base: setPods, key: addrKey},
	{base: setEnforce, key: addrKey},
	{base: setAudit, key: addrKey},
	{base: setInternal, key: addrKey, interval: true},
	{base: setQuar, key: pairKey},
	{base: setDNS, key: pairKey, timeout: true},
	{base: setDNSPort, key: portKey, timeout: true},
	{base: setDNSPort, tail: "_16", key: portKey, timeout: true},
	{base: setDNSPort, tail: "_256", key: portKey, timeout: true},
	{base: setDNSPort, tail: "_4096", key: portKey, timeout: true},
	{base: setDNSAddr, key: pairKey, timeout: true},
	{base: setCIDR, key: pairKey, interval: true},
	{base: setCIDRPort, key: portKey, interval: true},
	{base: setCIDRAddr, key: pairKey, interval: true},
}

func (s setSpec) name(f *fam) string { return s.base + f.suffix + s.tail }

func (s setSpec) set(t *nftables.Table, f *fam) *nftables.Set {
	k := s.key(f)
	return &nftables.Set{
		Table:         t,
		Name:          s.name(f),
		KeyType:       k,
		Interval:      s.interval,
		HasTimeout:    s.timeout,
		Concatenation: len(nftables.ConcatSetTypeElements(k)) > 1,
		KeyByteOrder:  binaryutil.BigEndian,
	}
}

// Expression helpers. Each returns the expressions of one match.

func loadSrc(f *fam, reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddr, Len: f.alen}
}

func loadDst(f *fam, reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddr, Len: f.alen}
}

func lookup(s *nftables.Set, reg uint32) expr.Any {
	return &expr.Lookup{SourceRegister: reg, SetName: s.Name, SetID: s.ID}
}

// matchPair: src . dst in s.
func matchPair(f *fam, s *nftables.Set) []expr.Any {
	return []expr.Any{loadSrc(f, f.rSrc), loadDst(f, f.rDst), lookup(s, f.rSrc)}
}

// matchPort: src . dst . l4proto . th dport in s. Only TCP, UDP and SCTP
// packets can match: set elements carry one of those protocols.
func matchPort(f *fam, s *nftables.Set) []expr.Any {
	return []expr.Any{
		loadSrc(f, f.rSrc), loadDst(f, f.rDst),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: f.rProto},
		&expr.Payload{DestRegister: f.rPort, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		lookup(s, f.rSrc),
	}
}

// portBlocks are the block sizes of the dnsport sets. A port range is
// written as aligned blocks (see portBlocksOf), each one hash element:
// hash sets never refuse overlapping elements, as the interval (pipapo)
// sets do when two names give one address overlapping ranges.
var portBlocks = []int{1, 16, 256, 4096}

// blockSet names the dnsport set of block size blk.
func blockSet(f *fam, blk int) string {
	if blk == 1 {
		return setDNSPort + f.suffix
	}
	return setDNSPort + f.suffix + "_" + strconv.Itoa(blk)
}

// matchPortBlock is matchPort with the port rounded down to a multiple of
// blk.
func matchPortBlock(f *fam, s *nftables.Set, blk int) []expr.Any {
	m := matchPort(f, s)
	mask := ^uint16(blk - 1)
	return append(m[:4:4],
		&expr.Bitwise{SourceRegister: f.rPort, DestRegister: f.rPort, Len: 2,
			Mask: binaryutil.BigEndian.PutUint16(mask), Xor: []byte{0, 0}},
		m[4])
}

// portBlocksOf splits first..last into aligned blocks, largest first
// where they fit: at most about a hundred blocks for any range.
func portBlocksOf(first, last uint16) (out []struct {
	Size  int
	Start uint16
}) {
	for p := int(first); p <= int(last); {
		size := 1
		for i := len(portBlocks) - 1; i > 0; i-- {
			b := portBlocks[i]
			if p%b == 0 && p+b-1 <= int(last) {
				size = b
				break
			}
		}
		out = append(out, struct {
			Size  int
			Start uint16
		}{size, uint16(p)})
		p += size
	}
	return out
}

func matchNFProto(f *fam) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
	}
}

func matchL4(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

func matchDport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

func matchCtState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func setMark(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}
}

func logNew(prefix string) []expr.Any {
	return append(matchCtState(expr.CtStateBitNEW),
		&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: LogGroup, Data: []byte(prefix)})
}

func verdict(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }

func jump(chain string) expr.Any { return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain} }

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// Verdict chains shared by both families.
const (
	chainBlockPolicy = "block_policy"
	chainBlockPort   = "block_port"
	chainBlockDoT    = "block_dot"
	chainBlockQuar   = "block_quarantine"
	chainAudit       = "audit"
)

// ruleset is the table's chains and rules, built fresh on every New.
type ruleset struct {
	chains []*nftables.Chain
	rules  []*nftables.Rule
}

func (r *ruleset) chain(c *nftables.Chain) *nftables.Chain {
	r.chains = append(r.chains, c)
	return c
}

func (r *ruleset) add(c *nftables.Chain, exprs ...[]expr.Any) {
	r.rules = append(r.rules, &nftables.Rule{Table: c.Table, Chain: c, Exprs: cat(exprs...)})
}

// buildRuleset renders the chains. sets maps a set name to its
// definition (so lookups carry the set IDs of this batch).
func buildRuleset(t *nftables.Table, sets map[string]*nftables.Set, dns4, dns6 netip.AddrPort) *ruleset {
	r := &ruleset{}
	accept := []expr.Any{verdict(expr.VerdictAccept)}
	regular := func(name string) *nftables.Chain { return r.chain(&nftables.Chain{Name: name, Table: t}) }

	// Verdict chains. Only a connection's first packet reaches them
	// (established and related traffic is accepted first), so they log
	// once per attempt; TCP gets a reset so clients fail at once, the
	// rest ICMP administratively prohibited (v4 and v6 via icmpx).
	for _, b := range []struct{ name, prefix string }{
		{chainBlockPolicy, PrefixBlockPolicy}, {chainBlockPort, PrefixBlockPort},
		{chainBlockDoT, PrefixBlockDoT}, {chainBlockQuar, PrefixBlockQuarantine},
	} {
		c := regular(b.name)
		r.add(c, logNew(b.prefix))
		r.add(c, matchL4(unix.IPPROTO_TCP), []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})
		r.add(c, []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}})
	}
	audit := regular(chainAudit)
	r.add(audit, logNew(PrefixAudit))
	r.add(audit, setMark(MarkAudit), accept)

	fwd := r.chain(&nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: ptr(nftables.ChainPolicyAccept)})
	r.add(fwd, matchCtState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept)

	nat := r.chain(&nftables.Chain{Name: chainPrerout, Table: t, Type: nftables.ChainTypeNAT,
		// Before kube-proxy's DNAT (dstnat, -100): the first NAT chain to
		// map a connection wins, and a pod's query to the kube-dns Service
		// IP must reach kordon, not a CoreDNS pod.
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityNATDest - 10), Policy: ptr(nftables.ChainPolicyAccept)})

	for _, f := range fams {
		s := func(base string) *nftables.Set { return sets[base+f.suffix] }
		pod := regular("pod" + f.suffix)
		enf := regular("enforce" + f.suffix)
		aud := regular("audit" + f.suffix)
		r.add(fwd, matchNFProto(f), []expr.Any{loadSrc(f, 1), lookup(s(setPods), 1), jump(pod.Name)})

		r.add(pod, []expr.Any{loadDst(f, 1), lookup(s(setInternal), 1)}, setMark(MarkInternal), accept)
		r.add(pod, matchPair(f, s(setQuar)), []expr.Any{jump(chainBlockQuar)})
		r.add(pod, []expr.Any{loadSrc(f, 1), lookup(s(setEnforce), 1), jump(enf.Name)})
		r.add(pod, []expr.Any{loadSrc(f, 1), lookup(s(setAudit), 1), jump(aud.Name)})
		r.add(pod, setMark(MarkUnmanaged), accept)

		for _, m := range []struct {
			c                 *nftables.Chain
			dot, port, policy string
		}{
			{enf, chainBlockDoT, chainBlockPort, chainBlockPolicy},
			{aud, chainAudit, chainAudit, chainAudit},
		} {
			c := m.c
			r.add(c, matchL4(unix.IPPROTO_TCP), matchDport(853), []expr.Any{jump(m.dot)})
			r.add(c, matchL4(unix.IPPROTO_UDP), matchDport(853), []expr.Any{jump(m.dot)})
			r.add(c, matchPair(f, s(setDNS)), setMark(MarkDNS), accept)
			r.add(c, matchPort(f, s(setDNSPort)), setMark(MarkDNS), accept)
			for _, blk := range portBlocks[1:] {
				r.add(c, matchPortBlock(f, sets[blockSet(f, blk)], blk), setMark(MarkDNS), accept)
			}
			r.add(c, matchPair(f, s(setCIDR)), setMark(MarkCIDR), accept)
			r.add(c, matchPort(f, s(setCIDRPort)), setMark(MarkCIDR), accept)
			r.add(c, matchPair(f, s(setDNSAddr)), []expr.Any{jump(m.port)})
			r.add(c, matchPair(f, s(setCIDRAddr)), []expr.Any{jump(m.port)})
			r.add(c, []expr.Any{jump(m.policy)})
		}

		// DNS interception: a workload's port-53 traffic to any other
		// resolver goes to the local dnsguard, so every query is seen
		// and filtered; the connection is marked for the flow log.
		to := dns4
		if f.v6 {
			to = dns6
		}
		if !to.IsValid() {
			continue
		}
		ip := to.Addr().AsSlice()
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			r.add(nat, matchNFProto(f),
				[]expr.Any{loadSrc(f, 1), lookup(s(setPods), 1)},
				matchL4(proto), matchDport(53),
				[]expr.Any{loadDst(f, 1), &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ip}},
				setMark(MarkBypass),
				[]expr.Any{
					&expr.Immediate{Register: 1, Data: ip},
					&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(to.Port())},
					&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: 1, RegProtoMin: 2, Specified: true},
				})
		}
	}
	return r
}

func ptr[T any](v T) *T { return &v }
