package flowlog

import (
	"errors"
	"net/netip"
	"strconv"
	"time"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/kordon-dev/kordon/egress"
)

// Reasons of blocked attempts, from the NFLOG prefixes.
const (
	reasonPolicy     = "policy"
	reasonPort       = "port"
	reasonDoT        = "dot"
	reasonQuarantine = "quarantine"
	reasonAudit      = "audit"
)

// reasonOf maps a kordon NFLOG prefix to its reason ("" for others).
func reasonOf(prefix string) string {
	switch prefix {
	case egress.PrefixBlockPolicy:
		return reasonPolicy
	case egress.PrefixBlockPort:
		return reasonPort
	case egress.PrefixBlockDoT:
		return reasonDoT
	case egress.PrefixBlockQuarantine:
		return reasonQuarantine
	case egress.PrefixAudit:
		return reasonAudit
	}
	return ""
}

// TCP conntrack states (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
const (
	tcpTimeWait = 7
	tcpClose    = 8
)

// blockDedup: a blocked attempt with the same 5-tuple within this long of
// the previous one is a retransmission, not a new record.
const blockDedup = 5 * time.Second

// maxBlockedTuples bounds the retransmission memory.
const maxBlockedTuples = 65536

// flowKey identifies one conntrack entry.
type flowKey struct {
	id    uint32
	zone  uint16
	proto uint8
	src   netip.AddrPort
	dst   netip.AddrPort
}

func keyOf(f *conntrack.Flow) flowKey {
	t := &f.TupleOrig
	return flowKey{
		id: f.ID, zone: f.Zone, proto: t.Proto.Protocol,
		src: netip.AddrPortFrom(t.IP.SourceAddress.Unmap(), t.Proto.SourcePort),
		dst: netip.AddrPortFrom(t.IP.DestinationAddress.Unmap(), t.Proto.DestinationPort),
	}
}

// flowState is what the tracker keeps of one logged flow.
type flowState struct {
	rec     Record // identity, tuple, name, verdict, policy
	obs     observation
	tuple   conntrack.Tuple
	zone    uint16
	start   time.Time
	created time.Time // by the tracker's clock
	out, in conntrack.Counter
	counted uint64 // outbound bytes already given to volume detection
	closing bool   // the close Update came and a Get was asked for
	done    bool   // final record written
	dumpGen uint64 // last Dump that listed the entry
	missed  int    // Dumps in a row that did not
}

// tracker turns conntrack events, Dumps and NFLOG packets into records and
// alerts. It is owned by one goroutine and has no I/O: records go to out,
// alerts to alerts, and get asks for a flow's current counters (answered
// by got; false when it cannot ask now: the next Dump or the Destroy
// event brings them).
type tracker struct {
	cfg   *Config
	m     *metrics
	det   *detector
	flows map[flowKey]*flowState
	block map[blockKey]time.Time
	// ended holds the flows written final and forgotten since the last
	// Dump began, and when: a Dump that began before a flow's Destroy
	// still lists it, and must not start following it again (a second
	// final record).
	ended map[flowKey]time.Time

	out    chunk
	alerts []Alert
	get    func(k flowKey, t conntrack.Tuple, zone uint16) bool
}

type blockKey struct {
	proto    uint8
	src, dst netip.AddrPort
}

func newTracker(cfg *Config, m *metrics, get func(flowKey, conntrack.Tuple, uint16) bool) *tracker {
	if get == nil {
		get = func(flowKey, conntrack.Tuple, uint16) bool { return false }
	}
	return &tracker{cfg: cfg, m: m, det: newDetector(cfg), flows: map[flowKey]*flowState{}, block: map[blockKey]time.Time{}, ended: map[flowKey]time.Time{}, get: get}
}

func isKordonMark(m uint32) bool { return m >= egress.MarkDNS && m <= egress.MarkBypass }

func verdictOf(mark uint32) string {
	if mark == egress.MarkAudit {
		return VerdictAudit
	}
	return VerdictAllowed
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_ICMP:
		return "icmp"
	case unix.IPPROTO_ICMPV6:
		return "icmpv6"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

func (t *tracker) internal(a netip.Addr) bool {
	for _, p := range t.cfg.Internal {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// client attributes src through the registry.
func (t *tracker) client(src netip.Addr) (Client, bool) {
	c := Client{IP: src}
	w, ok := t.cfg.Registry.ByIP(src)
	if !ok {
		return c, false
	}
	c.Namespace, c.Pod, c.ServiceAccount = w.Namespace, w.Name, w.ServiceAccount
	c.SPIFFEID = w.SPIFFEID(t.cfg.TrustDomain)
	c.Node = w.Node
	if c.Node == "" {
		c.Node = t.cfg.Node
	}
	return c, true
}

// describe fills the identity, name, policy and detection facts of a flow
// from src to dst; ok is false when the flow is not logged.
// Flows to internal destinations are not egress and are dropped unless
// keepInternal (resolver bypasses).
func (t *tracker) describe(proto uint8, src, dst netip.AddrPort, mark uint32, kordon, keepInternal bool) (Record, observation, bool) {
	if mark == egress.MarkInternal {
		return Record{}, observation{}, false
	}
	c, known := t.client(src.Addr())
	if !known && !kordon {
		return Record{}, observation{}, false
	}
	internal := t.internal(dst.Addr())
	if internal && !keepInternal {
		return Record{}, observation{}, false
	}
	rec := Record{Client: c, Proto: protoName(proto), Src: src.Addr(), SPort: src.Port(), Dst: dst.Addr(), DPort: dst.Port(), Verdict: verdictOf(mark)}
	o := observation{client: c, proto: rec.Proto, dst: dst, mark: mark, verdict: rec.Verdict, internal: internal}
	if t.cfg.Names != nil {
		rec.DNSName, _ = t.cfg.Names.Lookup(src.Addr(), dst.Addr())
		o.dnsName = rec.DNSName
		o.learned = t.cfg.Names.Learned(src.Addr(), dst.Addr())
	}
	if t.cfg.Policies != nil {
		o.policy = t.cfg.Policies.Policy(src.Addr())
		rec.Policy = o.policy.Name
	}
	return rec, o, true
}

// track starts following f (key k), or returns nil when it is not logged.
func (t *tracker) track(k flowKey, f *conntrack.Flow, now time.Time) *flowState {
	rec, o, ok := t.describe(k.proto, k.src, k.dst, f.Mark, isKordonMark(f.Mark), f.Mark == egress.MarkBypass)
	if !ok {
		return nil
	}
	st := &flowState{rec: rec, obs: o, tuple: f.TupleOrig, zone: f.Zone, start: now, created: now}
	t.flows[k] = st
	t.m.flows.WithLabelValues(rec.Verdict).Inc()
	t.counters(st, f, now)
	if a, ok := t.det.observe(&st.obs, now); ok {
		t.alerts = append(t.alerts, a)
	}
	return st
}

// counters takes f's counters when they are newer (New and Update events
// carry none; counters only grow) and its start time, and feeds the
// outbound delta to volume detection.
func (t *tracker) counters(st *flowState, f *conntrack.Flow, now time.Time) {
	// The kernel's start time (Dump, Get and Destroy carry it when
	// nf_conntrack_timestamp is on) beats the time an event was read,
	// and is the only one for a flow first seen after it began.
	if !f.Timestamp.Start.IsZero() {
		st.start = f.Timestamp.Start
	}
	if f.CountersOrig.Packets >= st.out.Packets && f.CountersOrig.Bytes >= st.out.Bytes {
		st.out.Packets, st.out.Bytes = f.CountersOrig.Packets, f.CountersOrig.Bytes
	}
	if f.CountersReply.Packets >= st.in.Packets && f.CountersReply.Bytes >= st.in.Bytes {
		st.in.Packets, st.in.Bytes = f.CountersReply.Packets, f.CountersReply.Bytes
	}
	st.obs.bytesOut, st.obs.bytesIn = st.out.Bytes, st.in.Bytes
	if st.out.Bytes > st.counted {
		delta := int64(st.out.Bytes - st.counted)
		st.counted = st.out.Bytes
		if a, ok := t.det.addVolume(&st.obs, delta, now); ok {
			t.alerts = append(t.alerts, a)
		}
	}
}

func (t *tracker) write(st *flowState, at time.Time, final bool) {
	if at.Before(st.start) { // a Dump that began before the flow
		at = st.start
	}
	r := st.rec
	r.Time = at
	r.BytesOut, r.PacketsOut = st.out.Bytes, st.out.Packets
	r.BytesIn, r.PacketsIn = st.in.Bytes, st.in.Packets
	if d := at.Sub(st.start); d > 0 {
		r.Duration = d.Seconds()
	}
	r.Final = final
	t.out.add(&r)
	if final {
		st.done = true
	}
}

func closedTCP(f *conntrack.Flow) bool {
	return f.ProtoInfo.TCP != nil && (f.ProtoInfo.TCP.State == tcpTimeWait || f.ProtoInfo.TCP.State == tcpClose)
}

// follow returns the state of flow k, updating its counters from f, or
// starts following f (nil when it is not logged).
func (t *tracker) follow(k flowKey, f *conntrack.Flow, now time.Time) *flowState {
	if st := t.flows[k]; st != nil {
		t.counters(st, f, now)
		return st
	}
	return t.track(k, f, now)
}

// event handles one conntrack event.
func (t *tracker) event(ev *conntrack.Event, now time.Time) {
	f := ev.Flow
	if f == nil {
		return
	}
	k := keyOf(f)
	st := t.follow(k, f, now)
	if st == nil {
		return
	}
	if f.Mark != 0 && f.Mark != st.obs.mark && isKordonMark(f.Mark) && f.Mark != egress.MarkInternal {
		st.obs.mark, st.rec.Verdict, st.obs.verdict = f.Mark, verdictOf(f.Mark), verdictOf(f.Mark)
	}
	switch ev.Type {
	case conntrack.EventUpdate:
		// Why ask at once: DESTROY comes only when conntrack's garbage
		// collector sweeps, up to a minute after the close, while the
		// Update to TIME_WAIT/CLOSE arrives with the last packet. It has
		// no counters, so they are read from the entry (Get).
		if closedTCP(f) && !st.done && !st.closing {
			st.closing = t.get(k, st.tuple, st.zone)
		}
	case conntrack.EventDestroy:
		if !st.done {
			end := now
			if !f.Timestamp.Stop.IsZero() {
				end = f.Timestamp.Stop
			}
			t.write(st, end, true)
		}
		t.forget(k, now)
	}
}

// forget stops following flow k, which has ended.
func (t *tracker) forget(k flowKey, now time.Time) {
	delete(t.flows, k)
	t.ended[k] = now
}

// errNotFound reports a Get for an entry that is gone.
func errNotFound(err error) bool { return errors.Is(err, unix.ENOENT) }

// got handles the answer to a Get asked for by an Update to a closed TCP
// state.
func (t *tracker) got(k flowKey, f *conntrack.Flow, err error, now time.Time) {
	st := t.flows[k]
	if st == nil || st.done {
		return
	}
	switch {
	case err == nil:
		t.counters(st, f, now)
		t.write(st, now, true)
	case errNotFound(err):
		// Gone already: its Destroy event carries the counters.
	default:
		t.write(st, now, true) // with the last Dump's counters
	}
}

// dump handles one full Dump, generation gen, asked for at started.
func (t *tracker) dump(flows []conntrack.Flow, gen uint64, started, now time.Time) {
	half := t.cfg.Interval / 2
	for i := range flows {
		f := &flows[i]
		k := keyOf(f)
		if _, gone := t.ended[k]; gone {
			continue // ended while this Dump ran
		}
		st := t.follow(k, f, now)
		if st == nil {
			continue
		}
		st.dumpGen, st.missed = gen, 0
		if !st.done && !st.closing && closedTCP(f) {
			// Closed, and no Get on its way (its close Update was lost
			// to an overrun or came before Run, or the Get queue was
			// full): these are its final counters.
			t.write(st, started, true)
			continue
		}
		// The counters are as of the Dump's start.
		if !st.done && !st.closing && started.Sub(st.start) >= half {
			t.write(st, started, false)
		}
	}
	// Entries that were there before the Dump began and are missing from
	// two Dumps in a row are gone and their Destroy was lost (socket
	// overrun): end them with the counters known. Why two: an entry that
	// ends while the Dump runs is missing from it, and its Destroy event
	// may still be on its way on the other socket.
	for k, st := range t.flows {
		if st.dumpGen != gen && st.created.Before(started) {
			if st.missed++; st.missed < 2 {
				continue
			}
			if !st.done {
				t.write(st, now, true)
			}
			t.forget(k, now)
		}
	}
	// A Dump that began after a flow ended cannot list it (conntrack IDs
	// are not reused while an entry lives).
	for k, at := range t.ended {
		if at.Before(started) {
			delete(t.ended, k)
		}
	}
	t.det.prune(now)
	t.pruneBlocked(now)
}

// pruneBlocked forgets blocked tuples last seen blockDedup or more ago.
func (t *tracker) pruneBlocked(now time.Time) {
	for k, at := range t.block {
		if now.Sub(at) >= blockDedup {
			delete(t.block, k)
		}
	}
}

// packet handles one NFLOG packet of kordon's group.
func (t *tracker) packet(p *logPacket, now time.Time) {
	reason := reasonOf(p.Prefix)
	if reason == "" || reason == reasonAudit || !p.Src.IsValid() {
		// Audit packets were let through: their conntrack entry (MarkAudit)
		// is the record.
		return
	}
	src, dst := netip.AddrPortFrom(p.Src, p.SPort), netip.AddrPortFrom(p.Dst, p.DPort)
	bk := blockKey{p.Proto, src, dst}
	last, seen := t.block[bk]
	t.block[bk] = now
	if seen && now.Sub(last) < blockDedup {
		return
	}
	if len(t.block) > maxBlockedTuples {
		t.pruneBlocked(now)
		if len(t.block) > maxBlockedTuples {
			clear(t.block)
		}
	}
	rec, o, ok := t.describe(p.Proto, src, dst, 0, true, reason == reasonDoT)
	if !ok {
		return
	}
	rec.Time, rec.Verdict, rec.Reason, rec.Final = now, VerdictBlocked, reason, true
	o.verdict, o.reason = VerdictBlocked, reason
	t.out.add(&rec)
	t.m.flows.WithLabelValues(VerdictBlocked).Inc()
	if a, ok := t.det.observe(&o, now); ok {
		t.alerts = append(t.alerts, a)
	}
}

// take returns the pending records and alerts and resets them.
func (t *tracker) take() (*chunk, []Alert) {
	c := &chunk{b: t.out.b, n: t.out.n}
	t.out = chunk{}
	a := t.alerts
	t.alerts = nil
	return c, a
}
