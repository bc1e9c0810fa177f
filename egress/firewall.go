package egress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
)

// Errors.
var (
	// ErrClosed: the firewall was closed.
	ErrClosed = errors.New("egress: firewall closed")
	// ErrAdmitTimeout: the grants were not in the kernel within
	// Config.AdmitTimeout. The caller must not release the DNS answer
	// (fail closed); the grants may still land later.
	ErrAdmitTimeout = errors.New("egress: admit timed out")
)

// Config configures a Firewall. The zero value of every field but
// Registry is usable.
type Config struct {
	// NetNSFd is an open network namespace to program; 0 programs the
	// current one.
	NetNSFd int
	// Table is the nftables table (family inet); default "kordon".
	Table string
	// Registry maps pod addresses to workloads; the firewall follows its
	// changes while Run runs. Required.
	Registry *workload.Registry
	// Internal are the pod and service ranges: never filtered
	// (MarkInternal).
	Internal []netip.Prefix
	// DNS4 and DNS6 are the local dnsguard. Every workload's UDP and TCP
	// port-53 traffic to another address is DNATed there (MarkBypass).
	// The zero value: no interception for that family.
	DNS4, DNS6 netip.AddrPort
	// TTLGrace is added to every answer's TTL; default 60s.
	TTLGrace time.Duration
	// AdmitTimeout bounds one Admit call, queueing included; default
	// 200ms. Past it Admit returns ErrAdmitTimeout.
	AdmitTimeout time.Duration
	// StateFile, when set, persists learned grants and quarantines
	// (atomically replaced) and restores them in New.
	StateFile string
	// Metrics registers the firewall's metrics when non-nil.
	Metrics prometheus.Registerer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now. Kernel timeouts run on the kernel's clock
	// whatever Now says.
	Now func() time.Time
}

// Grant says that a DNS answer to Client for Name gave Addrs, valid for
// TTL seconds.
type Grant struct {
	Client netip.Addr
	Name   string
	Addrs  []netip.Addr
	TTL    uint32
}

// Firewall programs one nftables table. All methods are safe for
// concurrent use.
type Firewall struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	m     *metrics
	table *nftables.Table
	sets  map[string]*nftables.Set

	progMu sync.Mutex // one programmer of conn at a time
	conn   *nftables.Conn
	// recMu serialises the writers of f.static (reconcile, quarantine):
	// they diff against it holding only recMu; f.static changes under
	// recMu and f.mu.
	recMu sync.Mutex

	view atomic.Pointer[view]

	mu sync.Mutex // guards the fields below
	// elems are the kernel's elements of the timeout sets with their
	// expiry (unix nanoseconds, kernel clock = wall clock), as programmed
	// by this process, restored from the state file or read back.
	elems map[ekey]int64
	// perSrc counts f.elems by source address (maxElemsPerSource).
	perSrc map[netip.Addr]int
	// pending are the elements of f.elems that the batch being written
	// adds or extends: not yet in the kernel (admit.go).
	pending map[ekey]struct{}
	// fsets caches the timeout sets of each family (setsOf).
	fsets [2]*famSets
	// tsets are the timeout sets, indexed by ekey.set.
	tsets []tset
	// static are the current elements of the sets without timeouts
	// (pods, modes, CIDR grants, quarantine, internal): set -> key.
	static map[string]map[string]nftables.SetElement
	// names remembers which name gave which address to which client
	// (Lookup and Learned), managed or not.
	names  map[string]map[netip.Addr]nameEntry
	nNames int
	// namesSwept rate-limits the sweeps of a full client's names.
	namesSwept map[string]time.Time
	quar       map[[2]netip.Addr]struct{}
	// clusterQuar is the part of quar the cluster holds (last
	// SetClusterQuarantines), under clusterMu.
	clusterMu   sync.Mutex
	clusterQuar map[[2]netip.Addr]struct{}
	// egress is the compiled policy of the last SetPolicies; nil before.
	egress *policy.EgressIndex
	owner  map[netip.Addr]string // address -> workload key at the last reconcile
	dirty  bool
	// adopted: New found the table in the kernel (an agent restart).
	adopted bool

	reqs      chan *admitReq
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closed    atomic.Bool
}

// ekey names one element of a timeout set: the set's index in f.tsets
// and the key bytes (as long as the set's key; the rest zero). It holds
// no pointer, so the garbage collector does not scan f.elems, which may
// hold millions of them.
type ekey struct {
	set uint8
	key [maxKey]byte
}

// maxKey is the longest key: ipv6 . ipv6 . proto . port.
const maxKey = 40

func mkEkey(set uint8, key []byte) ekey {
	k := ekey{set: set}
	copy(k.key[:], key)
	return k
}

// keyOf returns the key bytes of k.
func (f *Firewall) keyOf(k ekey) []byte {
	return append([]byte(nil), k.key[:f.tsets[k.set].s.KeyType.Bytes]...)
}

// tset is one timeout set.
type tset struct {
	s  *nftables.Set
	fm *fam
	n  int // elements in f.elems
}

// putElem records an element of a timeout set; f.mu is held.
func (f *Firewall) putElem(k ekey, exp int64) {
	if _, ok := f.elems[k]; !ok {
		f.tsets[k.set].n++
		f.perSrc[f.src(k)]++
	}
	f.elems[k] = exp
}

// delElem forgets one; f.mu is held.
func (f *Firewall) delElem(k ekey) {
	if _, ok := f.elems[k]; ok {
		f.tsets[k.set].n--
		src := f.src(k)
		if f.perSrc[src]--; f.perSrc[src] <= 0 {
			delete(f.perSrc, src)
		}
		delete(f.elems, k)
	}
}

// src is the source address an element's key starts with.
func (f *Firewall) src(k ekey) netip.Addr {
	a, _ := netip.AddrFromSlice(k.key[:f.tsets[k.set].fm.alen])
	return a
}

// tsetIndex is the index in f.tsets of the timeout set named name.
func (f *Firewall) tsetIndex(name string) (uint8, bool) {
	for i, t := range f.tsets {
		if t.s.Name == name {
			return uint8(i), true
		}
	}
	return 0, false
}

type nameEntry struct {
	name    string
	expires int64 // unix nanoseconds on f.now's clock
}

// view is the per-address policy state, rebuilt on every reconcile and
// read without locks by Admit.
type view struct {
	byAddr map[netip.Addr]*client
}

type client struct {
	w  *workload.Workload
	we *policy.WorkloadEgress
	fw policy.Firewall
}

// maxElemsPerSource bounds the learned kernel elements of one source
// address (all timeout sets): a workload allowed a wildcard whose
// answers it controls could otherwise grow the kernel's sets without
// end. Past it new grants of that source are not programmed (its
// connections to them are refused: fail closed) until elements expire.
const maxElemsPerSource = 1 << 16

// Bounds of the in-memory name memory (Lookup, Learned): per workload
// (or unknown address) and in total.
const (
	maxNamesPerClient = 1 << 16
	maxNames          = 1 << 20
)

// New programs the table: it creates it, or adopts an existing table of
// that name, keeping its sets and their elements, and rebuilds every
// chain and rule in one netlink transaction, so enforcement never lapses
// across an agent restart.
func New(cfg Config) (*Firewall, error) {
	if cfg.Registry == nil {
		return nil, errors.New("egress: Config.Registry is required")
	}
	if cfg.Table == "" {
		cfg.Table = "kordon"
	}
	if cfg.TTLGrace == 0 {
		cfg.TTLGrace = 60 * time.Second
	}
	if cfg.AdmitTimeout == 0 {
		cfg.AdmitTimeout = 200 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	for _, ap := range []netip.AddrPort{cfg.DNS4, cfg.DNS6} {
		if ap.IsValid() && ap.Port() == 0 {
			return nil, fmt.Errorf("egress: DNS address %s has no port", ap)
		}
	}
	if cfg.DNS4.IsValid() && !cfg.DNS4.Addr().Is4() {
		return nil, fmt.Errorf("egress: DNS4 %s is not IPv4", cfg.DNS4)
	}
	if cfg.DNS6.IsValid() && !cfg.DNS6.Addr().Is6() {
		return nil, fmt.Errorf("egress: DNS6 %s is not IPv6", cfg.DNS6)
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	conn, err := dial(cfg.NetNSFd)
	if err != nil {
		return nil, fmt.Errorf("egress: netlink: %w", err)
	}
	f := &Firewall{
		cfg: cfg, log: cfg.Logger, now: cfg.Now, m: m, conn: conn,
		table:      &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet},
		sets:       map[string]*nftables.Set{},
		elems:      map[ekey]int64{},
		perSrc:     map[netip.Addr]int{},
		pending:    map[ekey]struct{}{},
		static:     map[string]map[string]nftables.SetElement{},
		names:      map[string]map[netip.Addr]nameEntry{},
		namesSwept: map[string]time.Time{},
		quar:       map[[2]netip.Addr]struct{}{},
		owner:      map[netip.Addr]string{},
		reqs:       make(chan *admitReq, 1024),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	f.view.Store(&view{byAddr: map[netip.Addr]*client{}})
	st, serr := loadState(cfg.StateFile)
	if serr != nil {
		// A damaged state file must not stop enforcement: the kernel
		// still holds the table; grants come back with new answers.
		f.log.Warn("egress state not restored", "file", cfg.StateFile, "error", serr)
	}
	// With a state file the kernel's timeout sets need not be read back
	// (a dump of a large hash set is slow: about 6.5 s for 500,000
	// elements here); the file knows them, up to its last save.
	if err := f.install(st == nil); err != nil {
		conn.CloseLasting()
		return nil, err
	}
	if st != nil {
		if err := f.restore(st); err != nil {
			f.log.Warn("egress state not restored", "file", cfg.StateFile, "error", err)
		}
	}
	go f.commitLoop()
	return f, nil
}

// dial opens a lasting netlink connection with large socket buffers, so
// one Flush of up to maxFlushBytes and its acknowledgements fit.
func dial(fd int) (*nftables.Conn, error) {
	bufs := func(c *netlink.Conn) error {
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := raw.Control(func(s uintptr) {
			for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
				if e := unix.SetsockoptInt(int(s), unix.SOL_SOCKET, opt, sockBuf); e != nil && serr == nil {
					serr = e
				}
			}
		}); err != nil {
			return err
		}
		return serr
	}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(bufs)}
	if fd != 0 {
		opts = append(opts, nftables.WithNetNSFd(fd))
	}
	return nftables.New(opts...)
}

// install creates or adopts the table: one transaction that (re)declares
// the table and sets (existing ones keep their elements), deletes every
// existing chain with its rules, and adds the chains and rules anew.
// Then it reads the static sets' elements back, and the timeout sets'
// when readTimeouts.
func (f *Firewall) install(readTimeouts bool) error {
	f.progMu.Lock()
	defer f.progMu.Unlock()
	c := f.conn
	var old []*nftables.Chain
	if t, err := c.ListTableOfFamily(f.table.Name, nftables.TableFamilyINet); err == nil && t != nil {
		f.adopted = true
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return fmt.Errorf("egress: list chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table.Name == f.table.Name {
				old = append(old, ch)
			}
		}
	}
	existing := map[string]*nftables.Set{}
	if f.adopted {
		ss, err := c.GetSets(f.table)
		if err != nil {
			return fmt.Errorf("egress: list sets: %w", err)
		}
		for _, s := range ss {
			existing[s.Name] = s
		}
	}
	c.AddTable(f.table)
	// Rules first (they jump to the chains and look up the sets), then
	// the chains.
	for _, ch := range old {
		c.FlushChain(ch)
	}
	for _, ch := range old {
		c.DelChain(ch)
	}
	for _, sp := range setSpecs {
		for _, fm := range fams {
			s := sp.set(f.table, fm)
			// Our own batch-local set IDs: v0.3.0 otherwise increments a
			// package variable without a lock shared by every Conn.
			s.ID = uint32(len(f.sets) + 1)
			if e, ok := existing[s.Name]; ok && !sameSet(e, s) {
				// A set of another definition (an older version): its
				// elements cannot be kept; replace it in this same
				// transaction (no rule refers to it any more).
				f.log.Warn("egress set replaced", "set", s.Name)
				c.DelSet(e)
			}
			if err := c.AddSet(s, nil); err != nil {
				return fmt.Errorf("egress: set %s: %w", s.Name, err)
			}
			f.sets[s.Name] = s
			if sp.timeout {
				f.tsets = append(f.tsets, tset{s: s, fm: fm})
			}
		}
	}
	rs := buildRuleset(f.table, f.sets, f.cfg.DNS4, f.cfg.DNS6)
	for _, ch := range rs.chains {
		c.AddChain(ch)
	}
	for _, r := range rs.rules {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		f.m.errors.Inc()
		return fmt.Errorf("egress: install table %s: %w", f.table.Name, err)
	}

	// Read back what survived a restart.
	now := time.Now()
	for _, sp := range setSpecs {
		for _, fm := range fams {
			s := f.sets[sp.name(fm)]
			if sp.timeout && !readTimeouts {
				continue
			}
			es, err := c.GetSetElements(s)
			if err != nil {
				return fmt.Errorf("egress: read set %s: %w", s.Name, err)
			}
			if !sp.timeout {
				m := map[string]nftables.SetElement{}
				for _, e := range es {
					m[staticKey(sp.base, e)] = nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd, IntervalEnd: e.IntervalEnd}
				}
				f.static[s.Name] = m
				continue
			}
			i, _ := f.tsetIndex(s.Name)
			for _, e := range es {
				f.putElem(mkEkey(i, e.Key), now.Add(e.Expires).UnixNano())
			}
		}
	}
	// Internal ranges are configuration: set them now.
	var b batch
	f.diffStatic(&b, setInternal, func(fm *fam) map[string]nftables.SetElement { return internalElems(f.cfg.Internal, fm) })
	if !b.empty() {
		if _, err := b.send(c); err != nil {
			f.m.errors.Inc()
			return fmt.Errorf("egress: internal ranges: %w", err)
		}
		f.commitStatic(&b)
	}
	f.updateGauges()
	return nil
}

// sameSet reports whether an existing set has the definition of want.
func sameSet(have, want *nftables.Set) bool {
	return have.KeyType.GetNFTMagic() == want.KeyType.GetNFTMagic() && have.KeyType.Bytes == want.KeyType.Bytes &&
		have.Interval == want.Interval && have.HasTimeout == want.HasTimeout && have.Concatenation == want.Concatenation
}

// staticKey is the key of e in f.static: its key and key end bytes, and
// for the interval ends of the internal (rbtree) sets a suffix, since an
// end and the next start may carry the same address.
func staticKey(base string, e nftables.SetElement) string {
	if e.IntervalEnd && base == setInternal {
		return string(e.Key) + "\x00end"
	}
	return string(e.Key) + string(e.KeyEnd)
}

// internalElems renders prefixes as rbtree interval elements: a start
// and an interval end one past the last address.
func internalElems(ps []netip.Prefix, fm *fam) map[string]nftables.SetElement {
	out := map[string]nftables.SetElement{}
	for _, r := range mergeRanges(ps, fm) {
		start := nftables.SetElement{Key: r[0].AsSlice()}
		out[staticKey(setInternal, start)] = start
		if end := r[1].Next(); end.IsValid() {
			e := nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true}
			out[staticKey(setInternal, e)] = e
		}
	}
	return out
}

// mergeRanges turns the prefixes of one family into disjoint, sorted,
// non-adjacent [first, last] ranges.
func mergeRanges(ps []netip.Prefix, fm *fam) [][2]netip.Addr {
	var rs [][2]netip.Addr
	for _, p := range ps {
		if p.Addr().Is4() == fm.v6 {
			continue
		}
		a, z := prefixRange(p)
		rs = append(rs, [2]netip.Addr{a, z})
	}
	sortRanges(rs)
	var out [][2]netip.Addr
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if nx := last[1].Next(); !nx.IsValid() || r[0].Compare(nx) <= 0 {
				if r[1].Compare(last[1]) > 0 {
					last[1] = r[1]
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

func sortRanges(rs [][2]netip.Addr) {
	slices.SortFunc(rs, func(a, b [2]netip.Addr) int { return a[0].Compare(b[0]) })
}

// diffStatic queues the changes that turn the static set base (both
// families) into want(fm): deletes first, then adds.
func (f *Firewall) diffStatic(b *batch, base string, want func(fm *fam) map[string]nftables.SetElement) {
	for _, fm := range fams {
		s := f.sets[base+fm.suffix]
		cur := f.static[s.Name]
		w := want(fm)
		var del, add []nftables.SetElement
		for k, e := range cur {
			if _, ok := w[k]; !ok {
				del = append(del, e)
			}
		}
		for k, e := range w {
			if _, ok := cur[k]; !ok {
				add = append(add, e)
			}
		}
		sortElems(del)
		sortElems(add)
		b.del(s, del...)
		b.add(s, add...)
		if b.pendingStatic == nil {
			b.pendingStatic = map[string]map[string]nftables.SetElement{}
		}
		b.pendingStatic[s.Name] = w
	}
}

// commitStatic records the static sets a sent batch programmed.
func (f *Firewall) commitStatic(b *batch) {
	for name, w := range b.pendingStatic {
		f.static[name] = w
	}
}

// sortElems orders interval elements so that each start precedes its
// interval end (rbtree sets want them in order within a call).
func sortElems(es []nftables.SetElement) {
	slices.SortFunc(es, func(a, b nftables.SetElement) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		switch {
		case a.IntervalEnd == b.IntervalEnd:
			return 0
		case b.IntervalEnd:
			return -1
		}
		return 1
	})
}

// Run follows the registry, sweeps expired memory and saves the state
// file until ctx ends; then it saves once more.
func (f *Firewall) Run(ctx context.Context) error {
	ch, cancel := f.cfg.Registry.Subscribe()
	defer cancel()
	// Changes made before the subscription started.
	if err := f.reconcile(); err != nil {
		f.log.Error("egress reconcile failed", "error", err)
	}
	sweep := time.NewTicker(10 * time.Second)
	defer sweep.Stop()
	save := time.NewTicker(30 * time.Second)
	defer save.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := f.saveState(); err != nil {
				f.log.Warn("egress state not saved", "file", f.cfg.StateFile, "error", err)
			}
			return nil
		case <-f.stop:
			return ErrClosed
		case <-ch:
			if err := f.reconcile(); err != nil {
				f.log.Error("egress reconcile failed", "error", err)
			}
		case <-sweep.C:
			f.sweep()
		case <-save.C:
			f.mu.Lock()
			dirty := f.dirty
			f.mu.Unlock()
			if !dirty {
				continue
			}
			if err := f.saveState(); err != nil {
				f.log.Warn("egress state not saved", "file", f.cfg.StateFile, "error", err)
			}
		}
	}
}

// sweep forgets expired names and elements (the kernel expires its own).
func (f *Firewall) sweep() {
	now, kNow := f.now().UnixNano(), time.Now().UnixNano()
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, m := range f.names {
		for a, e := range m {
			if now > e.expires {
				delete(m, a)
				f.nNames--
			}
		}
		if len(m) == 0 {
			delete(f.names, id)
			delete(f.namesSwept, id)
		}
	}
	for k, exp := range f.elems {
		if kNow > exp {
			f.delElem(k)
		}
	}
	f.updateGaugesLocked()
}

// Close stops the firewall and leaves the table in the kernel, so
// enforcement goes on across an agent restart. It saves the state file.
// Closing again does nothing.
func (f *Firewall) Close() error {
	err := f.shutdown(f.saveState)
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// Remove deletes the table (and so every rule and set) and the state
// file, and closes the firewall: nothing of it is left. After Close it
// returns ErrClosed.
func (f *Firewall) Remove() error {
	return f.shutdown(func() error {
		f.conn.DelTable(f.table)
		if err := f.conn.Flush(); err != nil {
			return fmt.Errorf("egress: remove table %s: %w", f.table.Name, err)
		}
		return removeState(f.cfg.StateFile)
	})
}

// shutdown runs once, for the first of Close and Remove: it stops Admit
// and Run, waits for programming in flight, runs final and closes the
// netlink connection. Later calls return ErrClosed.
func (f *Firewall) shutdown(final func() error) error {
	err := ErrClosed
	f.closeOnce.Do(func() {
		f.closed.Store(true)
		close(f.stop)
		<-f.done
		f.recMu.Lock()
		defer f.recMu.Unlock()
		f.progMu.Lock()
		defer f.progMu.Unlock()
		err = final()
		if cerr := f.conn.CloseLasting(); err == nil {
			err = cerr
		}
	})
	return err
}
