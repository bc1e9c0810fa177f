package egress

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
)

// staleMargin: an element of a timeout set is deleted explicitly (when
// its source address changed hands) only while it has more than this
// left, so the delete never races the kernel's own expiry (deleting a
// missing element fails the whole transaction with ENOENT).
const staleMargin = 2 * time.Second

// SetPolicies compiles the EgressPolicies of set, recomputes every
// workload's firewall mode and grants, and reconciles the workload sets
// in the kernel. Until the first SetPolicies the firewall keeps whatever
// the kernel already holds (an adopted table keeps enforcing).
func (f *Firewall) SetPolicies(set *policy.Set, opts policy.EgressOptions) error {
	ix, err := policy.CompileEgress(set, opts)
	if err != nil {
		return fmt.Errorf("egress: %w", err)
	}
	f.mu.Lock()
	f.egress = ix
	f.mu.Unlock()
	return f.reconcile()
}

// Workload returns the workload that owns client and the firewall view of
// its policy (as of the last SetPolicies).
func (f *Firewall) Workload(client netip.Addr) (*workload.Workload, policy.Firewall, bool) {
	c := f.view.Load().byAddr[client.Unmap()]
	if c == nil {
		return nil, policy.Firewall{}, false
	}
	return c.w, c.fw, true
}

// buildView evaluates the policy for every registry workload.
func buildView(ix *policy.EgressIndex, reg *workload.Registry) *view {
	v := &view{byAddr: map[netip.Addr]*client{}}
	for _, w := range reg.List() {
		we := ix.ForWorkload(w.Namespace, w.Labels)
		c := &client{w: w, we: we, fw: we.Firewall()}
		for _, ip := range w.IPs {
			ip = ip.Unmap()
			// The registry attributes a shared address to one workload;
			// follow it.
			if owner, ok := reg.ByIP(ip); ok && owner != w {
				continue
			}
			v.byAddr[ip] = c
		}
	}
	return v
}

// reconcile rebuilds the view and brings the static sets in line with it.
func (f *Firewall) reconcile() error {
	// recMu serialises the writers of the static sets, so the policy
	// evaluation and the diff run without f.mu and f.progMu: Admit waits
	// only for the write itself.
	f.recMu.Lock()
	defer f.recMu.Unlock()
	f.mu.Lock()
	ix := f.egress
	quar := maps.Clone(f.quar)
	f.mu.Unlock()
	if ix == nil {
		return nil
	}
	v := buildView(ix, f.cfg.Registry)
	f.view.Store(v)
	want := desiredStatic(v, quar)
	// Why a second attempt: during a node agent handover two firewalls
	// write the same table, and the diff of the second is against static
	// sets the first already changed (a delete of what it deleted fails
	// the whole transaction with ENOENT). The failed attempt reread the
	// sets from the kernel, so the second diff is against the truth.
	// The stale grants the other one may have deleted too are then
	// deleted one by one, a missing one ignored.
	err := f.reconcileSend(v, want, false)
	if err != nil {
		err = f.reconcileSend(v, want, true)
	}
	return err
}

// reconcileSend diffs the static sets against want, drops learned grants
// of addresses that changed hands, and sends it all in one batch (with
// staleApart, the grants each in its own, a missing one ignored); f.recMu
// is held.
func (f *Firewall) reconcileSend(v *view, want map[string]map[string]nftables.SetElement, staleApart bool) error {
	var b batch
	// Grants before memberships: a source enters enforce4 in the same or
	// a later Flush than its grants.
	for _, base := range []string{setCIDR, setCIDRPort, setCIDRAddr, setQuar, setPods, setEnforce, setAudit} {
		f.diffStatic(&b, base, func(fm *fam) map[string]nftables.SetElement { return want[base+fm.suffix] })
	}
	// Learned grants of an address that changed hands (a new pod reusing
	// an IP) must not carry over.
	f.mu.Lock()
	keep := time.Now().Add(staleMargin).UnixNano()
	var stale []ekey
	changed := map[netip.Addr]bool{}
	for a, old := range f.owner {
		if c := v.byAddr[a]; c == nil || c.w.Key() != old {
			changed[a] = true
		}
	}
	if len(changed) > 0 {
		for k, exp := range f.elems {
			if exp > keep && changed[f.src(k)] {
				stale = append(stale, k)
			}
		}
	}
	var apart []batch
	for _, k := range stale {
		if staleApart {
			var sb batch
			sb.del(f.tsets[k.set].s, nftables.SetElement{Key: f.keyOf(k)})
			apart = append(apart, sb)
			continue
		}
		b.del(f.tsets[k.set].s, nftables.SetElement{Key: f.keyOf(k)})
	}
	f.mu.Unlock()

	f.progMu.Lock()
	start := time.Now()
	_, err := b.send(f.conn)
	f.m.programming.Observe(time.Since(start).Seconds())
	if err != nil {
		f.m.errors.Inc()
		// The kernel may hold part of a multi-Flush batch: read the
		// static sets back so the next reconcile diffs against the truth.
		f.mu.Lock()
		f.rereadStatic()
		f.mu.Unlock()
		f.progMu.Unlock()
		return fmt.Errorf("egress: reconcile: %w", err)
	}
	for i := range apart {
		// ENOENT: the other firewall on this table deleted it already.
		if _, err := apart[i].send(f.conn); err != nil && !errors.Is(err, unix.ENOENT) {
			f.m.errors.Inc()
			f.log.Warn("stale egress grant not deleted; it expires with its timeout", "error", err)
		}
	}
	f.progMu.Unlock()

	owner := make(map[netip.Addr]string, len(v.byAddr))
	for a, c := range v.byAddr {
		owner[a] = c.w.Key()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commitStatic(&b)
	for _, k := range stale {
		f.delElem(k)
	}
	f.dirty = true
	f.owner = owner
	f.updateGaugesLocked()
	return nil
}

// rereadStatic refreshes f.static from the kernel. f.recMu (or New's
// exclusivity), f.progMu and f.mu are held.
func (f *Firewall) rereadStatic() {
	for _, sp := range setSpecs {
		if sp.timeout {
			continue
		}
		for _, fm := range fams {
			s := f.sets[sp.name(fm)]
			es, err := f.conn.GetSetElements(s)
			if err != nil {
				f.log.Error("egress set not read", "set", s.Name, "error", err)
				continue
			}
			m := map[string]nftables.SetElement{}
			for _, e := range es {
				m[staticKey(sp.base, e)] = nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd, IntervalEnd: e.IntervalEnd}
			}
			f.static[s.Name] = m
		}
	}
}

// desiredStatic renders the static sets of view v and quarantines q:
// set name -> element key -> element.
func desiredStatic(v *view, q map[[2]netip.Addr]struct{}) map[string]map[string]nftables.SetElement {
	want := map[string]map[string]nftables.SetElement{}
	for _, sp := range setSpecs {
		for _, fm := range fams {
			want[sp.name(fm)] = map[string]nftables.SetElement{}
		}
	}
	put := func(base string, fm *fam, e nftables.SetElement) {
		want[base+fm.suffix][staticKey(base, e)] = e
	}
	for src, c := range v.byAddr {
		fm := famOf(src)
		put(setPods, fm, nftables.SetElement{Key: src.AsSlice()})
		switch c.fw.Mode {
		case policy.FirewallEnforce:
			put(setEnforce, fm, nftables.SetElement{Key: src.AsSlice()})
		case policy.FirewallAudit:
			put(setAudit, fm, nftables.SetElement{Key: src.AsSlice()})
		default:
			continue
		}
		for _, e := range cidrElems(src, c.fw.CIDRs) {
			put(e.set, fm, e.SetElement)
		}
	}
	for p := range q {
		client, dst := p[0], p[1]
		srcs := []netip.Addr{client}
		if c := v.byAddr[client]; c != nil {
			srcs = c.w.IPs
		}
		for _, src := range srcs {
			src = src.Unmap()
			if src.Is4() == dst.Is4() {
				put(setQuar, famOf(dst), nftables.SetElement{Key: keyPair(src, dst)})
			}
		}
	}
	return want
}

type setElem struct {
	set string // base name
	nftables.SetElement
}

// cidrElems renders one source's CIDR grants of its own family. Any-port
// ranges are merged; port-restricted grants inside an any-port range are
// dropped (the wider grant already allows them), and grants of one prefix
// share one merged port list, so the interval sets get no duplicates.
func cidrElems(src netip.Addr, grants []policy.CIDRGrant) []setElem {
	fm := famOf(src)
	var anyP []netip.Prefix
	for _, g := range grants {
		if g.Ports == nil && g.Prefix.Addr().Is4() == src.Is4() {
			anyP = append(anyP, g.Prefix)
		}
	}
	anyR := mergeRanges(anyP, fm)
	var out []setElem
	for _, r := range anyR {
		out = append(out, setElem{setCIDR, nftables.SetElement{Key: keyPair(src, r[0]), KeyEnd: keyPair(src, r[1])}})
	}
	covered := func(p netip.Prefix) bool {
		a, z := prefixRange(p)
		for _, r := range anyR {
			if r[0].Compare(a) <= 0 && z.Compare(r[1]) <= 0 {
				return true
			}
		}
		return false
	}
	var boxed []portGrant
	var addrP []netip.Prefix
	for _, g := range grants {
		if g.Ports == nil || g.Prefix.Addr().Is4() != src.Is4() || covered(g.Prefix) {
			continue
		}
		addrP = append(addrP, g.Prefix)
		for _, pr := range g.Ports {
			boxed = append(boxed, portGrant{g.Prefix, pr})
		}
	}
	for _, r := range mergeRanges(addrP, fm) {
		out = append(out, setElem{setCIDRAddr, nftables.SetElement{Key: keyPair(src, r[0]), KeyEnd: keyPair(src, r[1])}})
	}
	for _, b := range disjointBoxes(boxed, fm) {
		out = append(out, setElem{setCIDRPort, nftables.SetElement{
			Key: keyPort(src, b.first, b.proto, b.p0), KeyEnd: keyPort(src, b.last, b.proto, b.p1)}})
	}
	return out
}

type portGrant struct {
	prefix netip.Prefix
	ports  policy.PortRange
}

// box is one element of cidrport: an address range by a port range of
// one protocol.
type box struct {
	first, last netip.Addr
	proto       byte
	p0, p1      uint16
}

// disjointBoxes turns (prefix, port range) grants into boxes that do not
// overlap and cover exactly their union: the interval (pipapo) set fails
// the whole transaction (EEXIST) on an element whose start lies inside
// another (measured on 6.18), and grants of several policies may overlap. Per protocol the port axis is cut at every range boundary; in
// each slice the prefixes covering it are merged into disjoint address
// ranges; neighbouring slices with the same ranges are joined.
func disjointBoxes(gs []portGrant, fm *fam) []box {
	byProto := map[string][]portGrant{}
	var protos []string
	for _, g := range gs {
		if _, ok := byProto[g.ports.Proto]; !ok {
			protos = append(protos, g.ports.Proto)
		}
		byProto[g.ports.Proto] = append(byProto[g.ports.Proto], g)
	}
	var out []box
	for _, name := range protos {
		proto, err := protoNum(name)
		if err != nil {
			continue // fail closed: an unknown protocol grants nothing
		}
		list := byProto[name]
		cutSet := map[int]bool{}
		for _, g := range list {
			cutSet[int(g.ports.First)] = true
			cutSet[int(g.ports.Last)+1] = true
		}
		cuts := make([]int, 0, len(cutSet))
		for c := range cutSet {
			cuts = append(cuts, c)
		}
		slices.Sort(cuts)
		var prev [][2]netip.Addr
		var open []int // indexes into out of prev's boxes
		for i := 0; i+1 < len(cuts); i++ {
			lo, hi := cuts[i], cuts[i+1]-1
			var ps []netip.Prefix
			for _, g := range list {
				if int(g.ports.First) <= lo && hi <= int(g.ports.Last) {
					ps = append(ps, g.prefix)
				}
			}
			rs := mergeRanges(ps, fm)
			if sameRanges(rs, prev) && len(open) > 0 && int(out[open[0]].p1)+1 == lo {
				for _, j := range open {
					out[j].p1 = uint16(hi)
				}
				continue
			}
			prev, open = rs, open[:0]
			for _, r := range rs {
				open = append(open, len(out))
				out = append(out, box{first: r[0], last: r[1], proto: proto, p0: uint16(lo), p1: uint16(hi)})
			}
		}
	}
	return out
}

func sameRanges(a, b [][2]netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// QuarantineAddr blocks dst for the workload that owns client (all its
// addresses of dst's family) until LiftAddr; persisted in the state file.
func (f *Firewall) QuarantineAddr(client, dst netip.Addr) error {
	return f.setQuarantine(client, dst, true)
}

// LiftAddr lifts a QuarantineAddr.
func (f *Firewall) LiftAddr(client, dst netip.Addr) error {
	return f.setQuarantine(client, dst, false)
}

func (f *Firewall) setQuarantine(client, dst netip.Addr, on bool) error {
	client, dst = client.Unmap(), dst.Unmap()
	if !client.IsValid() || !dst.IsValid() {
		return fmt.Errorf("egress: quarantine: invalid address")
	}
	k := [2]netip.Addr{client, dst}
	return f.changeQuarantines(func(quar map[[2]netip.Addr]struct{}) {
		if on {
			quar[k] = struct{}{}
		} else {
			delete(quar, k)
		}
	})
}

// SetClusterQuarantines replaces the (client, destination) quarantines
// the cluster holds (Quarantine objects), in one transaction: pairs of
// the previous set that qs no longer holds are lifted, a local
// QuarantineAddr of the same pair as well (deleting the object is how a
// person lifts a quarantine in a cluster).
func (f *Firewall) SetClusterQuarantines(qs [][2]netip.Addr) error {
	want := make(map[[2]netip.Addr]struct{}, len(qs))
	for _, q := range qs {
		q = [2]netip.Addr{q[0].Unmap(), q[1].Unmap()}
		if !q[0].IsValid() || !q[1].IsValid() {
			return fmt.Errorf("egress: quarantine: invalid address")
		}
		want[q] = struct{}{}
	}
	f.clusterMu.Lock()
	defer f.clusterMu.Unlock()
	err := f.changeQuarantines(func(quar map[[2]netip.Addr]struct{}) {
		for k := range f.clusterQuar {
			if _, ok := want[k]; !ok {
				delete(quar, k)
			}
		}
		for k := range want {
			quar[k] = struct{}{}
		}
	})
	if err == nil {
		f.clusterQuar = want
	}
	return err
}

// changeQuarantines edits the quarantine set and programs the kernel's;
// the set is restored when the kernel refuses.
func (f *Firewall) changeQuarantines(edit func(map[[2]netip.Addr]struct{})) error {
	if f.closed.Load() {
		return ErrClosed
	}
	f.recMu.Lock()
	defer f.recMu.Unlock()
	v := f.view.Load()
	f.mu.Lock()
	old := maps.Clone(f.quar)
	edit(f.quar)
	f.dirty = true
	want := desiredStatic(v, f.quar)
	f.mu.Unlock()
	var b batch
	f.diffStatic(&b, setQuar, func(fm *fam) map[string]nftables.SetElement { return want[setQuar+fm.suffix] })
	f.progMu.Lock()
	_, err := b.send(f.conn)
	f.progMu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		f.m.errors.Inc()
		f.quar = old
		return fmt.Errorf("egress: quarantine: %w", err)
	}
	f.commitStatic(&b)
	f.updateGaugesLocked()
	return nil
}
