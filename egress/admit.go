package egress

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"

	"github.com/kordon-dev/kordon/policy"
)

// maxGroup bounds how many queued Admit calls share one batch.
const maxGroup = 256

type admitReq struct {
	grants []Grant
	done   chan error
}

// refreshSlack: a grant whose element the kernel already holds until at
// most this much before TTL + grace does not refresh it. A cache hit
// gives the TTL minus the whole seconds elapsed, so re-admitting an
// answer already programmed asks for up to a second more than the kernel
// holds: without slack nearly every hit would be a netlink transaction
// for nothing. Never more than half the grace (Config.TTLGrace).
const refreshSlack = 2 * time.Second

// Admit programs grants and returns once they are in the kernel, or with
// an error: ErrAdmitTimeout past Config.AdmitTimeout, ErrClosed, or the
// kernel's. Concurrent callers are committed together (group commit): one
// netlink batch for every call queued while the previous batch was being
// written. A call whose elements the kernel already holds long enough
// (TTL + grace, less at most refreshSlack) returns at once, without
// netlink or the commit goroutine.
//
// Grants of clients that are neither Enforce nor Audit, and of names their
// policy does not allow, are only remembered for Lookup and Learned.
func (f *Firewall) Admit(grants []Grant) error {
	if f.closed.Load() {
		return ErrClosed
	}
	if len(grants) == 0 {
		return nil
	}
	if f.admitHeld(grants) {
		return nil
	}
	timer := time.NewTimer(f.cfg.AdmitTimeout)
	defer timer.Stop()
	req := &admitReq{grants: grants, done: make(chan error, 1)}
	select {
	case f.reqs <- req:
	case <-timer.C:
		f.m.timeouts.Inc()
		return ErrAdmitTimeout
	case <-f.stop:
		return ErrClosed
	}
	select {
	case err := <-req.done:
		return err
	case <-timer.C:
		f.m.timeouts.Inc()
		return ErrAdmitTimeout
	case <-f.done:
		return ErrClosed
	}
}

// admitHeld handles grants entirely in memory when every element they
// give is already in the kernel with enough time left: then it remembers
// their names and returns true. Elements of the batch being written
// (f.pending) do not count: they may not be in the kernel yet, and an
// answer must never go out before its addresses are. On false nothing
// was changed; the grants go through the commit loop.
func (f *Firewall) admitHeld(grants []Grant) bool {
	v := f.view.Load()
	now, kNow, slack := f.now(), time.Now().UnixNano(), f.slack()
	var buf [maxKey]byte
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range grants {
		g := &grants[i]
		c := v.byAddr[g.Client.Unmap()]
		if c == nil || c.fw.Mode == policy.FirewallOff {
			continue
		}
		exp := kNow + int64(f.grantTTL(g)) - slack
		held := true
		f.eachElem(c, g, buf[:0], func(set uint8, _ netip.Addr, key []byte) {
			if !held {
				return
			}
			k := mkEkey(set, key)
			old, had := f.elems[k]
			if _, p := f.pending[k]; !had || p || old < exp {
				// Also when the source is full: program counts the drop.
				held = false
			}
		})
		if !held {
			return false
		}
	}
	f.m.grants.Add(float64(len(grants)))
	for i := range grants {
		g := &grants[i]
		client := g.Client.Unmap()
		f.rememberLocked(client, g.Name, g.Addrs, now.Add(f.grantTTL(g)).UnixNano())
	}
	f.dirty = true
	return true
}

// grantTTL is how long g's elements are kept: its TTL plus the grace.
func (f *Firewall) grantTTL(g *Grant) time.Duration {
	return time.Duration(g.TTL)*time.Second + f.cfg.TTLGrace
}

// slack is refreshSlack bounded by half the grace, in nanoseconds.
func (f *Firewall) slack() int64 {
	return int64(min(refreshSlack, f.cfg.TTLGrace/2))
}

// famSets are the timeout sets of one family, as indexes of f.tsets.
type famSets struct {
	dns, addr uint8
	port      [4]uint8 // by portBlocks
}

// setsOf returns fm's timeout sets; f.mu is held.
func (f *Firewall) setsOf(fm *fam) *famSets {
	i := 0
	if fm.v6 {
		i = 1
	}
	if fs := f.fsets[i]; fs != nil {
		return fs
	}
	fs := &famSets{}
	fs.dns, _ = f.tsetIndex(setDNS + fm.suffix)
	fs.addr, _ = f.tsetIndex(setDNSAddr + fm.suffix)
	for j, blk := range portBlocks {
		fs.port[j], _ = f.tsetIndex(blockSet(fm, blk))
	}
	f.fsets[i] = fs
	return fs
}

// eachElem calls fn with every timeout-set element (set index, source
// address, key) grant g gives client c, in the order program writes them.
// The key is built in buf and valid only until fn returns. f.mu is held.
func (f *Firewall) eachElem(c *client, g *Grant, buf []byte, fn func(set uint8, src netip.Addr, key []byte)) {
	ports, anyPort, ok := c.we.NamePorts(policy.CanonicalName(g.Name))
	if !ok {
		return
	}
	for _, dst := range g.Addrs {
		dst = dst.Unmap()
		if !dst.IsValid() {
			continue // one bad address must not fail the batch
		}
		fm := famOf(dst)
		fs := f.setsOf(fm)
		for _, src := range c.w.IPs {
			src = src.Unmap()
			if src.Is4() != dst.Is4() {
				continue
			}
			pair := append(append(buf[:0], src.AsSlice()...), dst.AsSlice()...)
			if anyPort {
				fn(fs.dns, src, pair)
				continue
			}
			fn(fs.addr, src, pair)
			for _, pr := range ports {
				proto, err := protoNum(pr.Proto)
				if err != nil {
					continue // fail closed
				}
				for _, blk := range portBlocksOf(pr.First, pr.Last) {
					j := slices.Index(portBlocks, blk.Size)
					fn(fs.port[j], src, append(pair, proto, 0, 0, 0, byte(blk.Start>>8), byte(blk.Start), 0, 0))
				}
			}
		}
	}
}

// commitLoop is the one writer of grants: it takes every queued request
// and commits them as one batch.
func (f *Firewall) commitLoop() {
	defer close(f.done)
	group := make([]*admitReq, 0, maxGroup)
	for {
		select {
		case <-f.stop:
			return
		case r := <-f.reqs:
			group = append(group[:0], r)
		more:
			for len(group) < maxGroup {
				select {
				case r := <-f.reqs:
					group = append(group, r)
				default:
					break more
				}
			}
			err := f.program(group)
			for _, r := range group {
				r.done <- err
			}
			clear(group) // no grants kept alive until the next batch
		}
	}
}

type undo struct {
	k   ekey
	old int64
	had bool
}

// program writes the grants of a group in one batch. f.mu is not held
// across the netlink round trip: the elements it adds are marked pending
// meanwhile, so admitHeld does not take them for programmed.
func (f *Firewall) program(group []*admitReq) error {
	v := f.view.Load()
	now, kNow, slack := f.now(), time.Now().UnixNano(), f.slack()
	var b batch
	var undos []undo
	var buf [maxKey]byte
	f.mu.Lock()
	for _, r := range group {
		f.m.grants.Add(float64(len(r.grants)))
		for i := range r.grants {
			g := &r.grants[i]
			client := g.Client.Unmap()
			d := f.grantTTL(g)
			f.rememberLocked(client, g.Name, g.Addrs, now.Add(d).UnixNano())
			c := v.byAddr[client]
			if c == nil || c.fw.Mode == policy.FirewallOff {
				continue
			}
			exp := kNow + int64(d)
			f.eachElem(c, g, buf[:0], func(set uint8, src netip.Addr, key []byte) {
				k := mkEkey(set, key)
				old, had := f.elems[k]
				if had && exp-slack <= old {
					return // the kernel already holds it long enough
				}
				if !had {
					if f.perSrc[src] >= maxElemsPerSource {
						f.m.dropped.Inc()
						return
					}
					// putElem without looking k up again.
					f.tsets[set].n++
					f.perSrc[src]++
				}
				f.elems[k] = exp
				undos = append(undos, undo{k, old, had})
				f.pending[k] = struct{}{}
				b.add(f.tsets[set].s, nftables.SetElement{Key: slices.Clone(key), Timeout: timeoutOf(d)})
			})
		}
	}
	f.dirty = true
	f.mu.Unlock()
	if b.empty() {
		return nil
	}
	f.progMu.Lock()
	start := time.Now()
	_, err := b.send(f.conn)
	f.m.programming.Observe(time.Since(start).Seconds())
	f.progMu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.pending)
	if err != nil {
		f.m.errors.Inc()
		for i := len(undos) - 1; i >= 0; i-- {
			u := undos[i]
			if u.had {
				f.elems[u.k] = u.old
			} else {
				f.delElem(u.k)
			}
		}
		return fmt.Errorf("egress: admit: %w", err)
	}
	return nil
}

// identity keys the name memory: the workload that owns addr in the
// registry (so an answer to its IPv4 address is found for a flow from its
// IPv6 one, before any SetPolicies too), else the address.
func (f *Firewall) identity(addr netip.Addr) string {
	var buf [64]byte
	return string(f.appendIdentity(buf[:0], addr))
}

// appendIdentity appends addr's identity key to b (no allocation on the
// hot path: map lookups with string(b) do not copy).
func (f *Firewall) appendIdentity(b []byte, addr netip.Addr) []byte {
	if w, ok := f.cfg.Registry.ByIP(addr); ok {
		b = append(b, "w:"...)
		b = append(b, w.Namespace...)
		b = append(b, '/')
		return append(b, w.Name...)
	}
	return addr.AppendTo(append(b, "a:"...))
}

// rememberLocked records that name gave addrs to client (its identity)
// until exp.
// Memory is bounded per client and in total; past the bounds expired
// entries are dropped first, then new addresses are not remembered (the
// kernel grants are unaffected).
func (f *Firewall) rememberLocked(client netip.Addr, name string, addrs []netip.Addr, exp int64) {
	var buf [64]byte
	idb := f.appendIdentity(buf[:0], client)
	m := f.names[string(idb)]
	if m == nil {
		m = map[netip.Addr]nameEntry{}
		f.names[string(idb)] = m
	}
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() {
			continue
		}
		old, ok := m[a]
		if !ok {
			if len(m) >= maxNamesPerClient || f.nNames >= maxNames {
				f.sweepNamesLocked(string(idb), m)
				if len(m) >= maxNamesPerClient || f.nNames >= maxNames {
					continue
				}
			}
			f.nNames++
		}
		e := nameEntry{name: name, expires: max(exp, old.expires)}
		m[a] = e
	}
}

// sweepNamesLocked drops the expired names of one client, at most once a
// second per client (a full client would otherwise pay a scan per grant).
func (f *Firewall) sweepNamesLocked(id string, m map[netip.Addr]nameEntry) {
	now := f.now()
	if last, ok := f.namesSwept[id]; ok && now.Sub(last) < time.Second {
		return
	}
	f.namesSwept[id] = now
	for k, e := range m {
		if now.UnixNano() > e.expires {
			delete(m, k)
			f.nNames--
		}
	}
}

// Lookup returns the DNS name whose answer gave client dst, while that
// answer is valid (TTL plus grace), for managed and unmanaged workloads.
func (f *Firewall) Lookup(client, dst netip.Addr) (string, bool) {
	id := f.identity(client.Unmap())
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.names[id][dst.Unmap()]
	if !ok || f.now().UnixNano() > e.expires {
		return "", false
	}
	return e.name, true
}

// Learned reports whether some answer gave client dst recently (within
// TTL plus grace): a connection to an address no answer gave is direct
// egress.
func (f *Firewall) Learned(client, dst netip.Addr) bool {
	_, ok := f.Lookup(client, dst)
	return ok
}
