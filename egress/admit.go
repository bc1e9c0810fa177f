package egress

import (
	"fmt"
	"net/netip"
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

// Admit programs grants and returns once they are in the kernel, or with
// an error: ErrAdmitTimeout past Config.AdmitTimeout, ErrClosed, or the
// kernel's. Concurrent callers are committed together (group commit): one
// netlink batch for every call queued while the previous batch was being
// written.
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
		}
	}
}

type undo struct {
	k   ekey
	old int64
	had bool
}

// program writes the grants of a group in one batch.
func (f *Firewall) program(group []*admitReq) error {
	v := f.view.Load()
	now, kNow := f.now(), time.Now().UnixNano()
	var b batch
	var undos []undo
	grant := func(set string, key []byte, d time.Duration) {
		s := f.sets[set]
		i, _ := f.tsetIndex(set)
		k := mkEkey(i, key)
		exp := kNow + int64(d)
		old, had := f.elems[k]
		if had && exp <= old {
			return // the kernel already holds it at least as long
		}
		if !had && f.perSrc[f.src(k)] >= maxElemsPerSource {
			f.m.dropped.Inc()
			return
		}
		undos = append(undos, undo{k, old, had})
		f.putElem(k, exp)
		b.add(s, nftables.SetElement{Key: key, Timeout: timeoutOf(d)})
	}
	f.mu.Lock()
	for _, r := range group {
		for _, g := range r.grants {
			f.m.grants.Inc()
			client := g.Client.Unmap()
			d := time.Duration(g.TTL)*time.Second + f.cfg.TTLGrace
			c := v.byAddr[client]
			f.rememberLocked(f.identity(client), g.Name, g.Addrs, now.Add(d).UnixNano())
			if c == nil || c.fw.Mode == policy.FirewallOff {
				continue
			}
			ports, anyPort, ok := c.we.NamePorts(policy.CanonicalName(g.Name))
			if !ok {
				continue
			}
			for _, dst := range g.Addrs {
				dst = dst.Unmap()
				if !dst.IsValid() {
					continue // one bad address must not fail the batch
				}
				fm := famOf(dst)
				for _, src := range c.w.IPs {
					src = src.Unmap()
					if src.Is4() != dst.Is4() {
						continue
					}
					if anyPort {
						grant(setDNS+fm.suffix, keyPair(src, dst), d)
						continue
					}
					grant(setDNSAddr+fm.suffix, keyPair(src, dst), d)
					for _, pr := range ports {
						proto, err := protoNum(pr.Proto)
						if err != nil {
							continue // fail closed
						}
						for _, blk := range portBlocksOf(pr.First, pr.Last) {
							grant(blockSet(fm, blk.Size), keyPort(src, dst, proto, blk.Start), d)
						}
					}
				}
			}
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
	if err != nil {
		f.m.errors.Inc()
		f.mu.Lock()
		for i := len(undos) - 1; i >= 0; i-- {
			u := undos[i]
			if u.had {
				f.elems[u.k] = u.old
			} else {
				f.delElem(u.k)
			}
		}
		f.mu.Unlock()
		return fmt.Errorf("egress: admit: %w", err)
	}
	return nil
}

// identity keys the name memory: the workload that owns addr in the
// registry (so an answer to its IPv4 address is found for a flow from its
// IPv6 one, before any SetPolicies too), else the address.
func (f *Firewall) identity(addr netip.Addr) string {
	if w, ok := f.cfg.Registry.ByIP(addr); ok {
		return "w:" + w.Key()
	}
	return "a:" + addr.String()
}

// rememberLocked records that name gave addrs to the client id until exp.
// Memory is bounded per client and in total; past the bounds expired
// entries are dropped first, then new addresses are not remembered (the
// kernel grants are unaffected).
func (f *Firewall) rememberLocked(id, name string, addrs []netip.Addr, exp int64) {
	m := f.names[id]
	if m == nil {
		m = map[netip.Addr]nameEntry{}
		f.names[id] = m
	}
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() {
			continue
		}
		old, ok := m[a]
		if !ok {
			if len(m) >= maxNamesPerClient || f.nNames >= maxNames {
				f.sweepNamesLocked(id, m)
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
