package flowlog

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/kordon-dev/kordon/egress"
	"github.com/kordon-dev/kordon/internal/workload"
)

// harness runs a tracker on synthetic kernel input with a fake clock.
type harness struct {
	t    *testing.T
	tr   *tracker
	now  time.Time
	gets []flowKey
	// getsFull makes the Get queue refuse requests.
	getsFull bool
	recs     []Record
	as       []Alert
}

func newHarness(t *testing.T, edit func(*Config)) *harness {
	t.Helper()
	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{{Name: "cache-0", Namespace: "shop", ServiceAccount: "cache", IPs: []netip.Addr{pod}}})
	cfg := Config{Registry: reg, Node: "n1", Interval: 30 * time.Second, Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.fill(); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, now: t0}
	h.tr = newTracker(&cfg, testMetrics(t), func(k flowKey, _ conntrack.Tuple, _ uint16) bool {
		h.gets = append(h.gets, k)
		return !h.getsFull
	})
	return h
}

// take collects what the tracker produced.
func (h *harness) take() {
	c, as := h.tr.take()
	for _, line := range bytes.Split(bytes.TrimSpace(c.b), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r Record
		if err := json.Unmarshal(line, &r); err != nil {
			h.t.Fatal(err)
		}
		h.recs = append(h.recs, r)
	}
	h.as = append(h.as, as...)
}

func (h *harness) event(typ conntrack.Event, f conntrack.Flow) {
	typ.Flow = &f
	h.tr.event(&typ, h.now)
	h.take()
}

func tcpFlow(id uint32, src netip.Addr, sport uint16, dst netip.AddrPort, mark uint32) conntrack.Flow {
	f := conntrack.NewFlow(unix.IPPROTO_TCP, 0, src, dst.Addr(), sport, dst.Port(), 120, mark)
	f.ID = id
	return f
}

func withState(f conntrack.Flow, state uint8) conntrack.Flow {
	f.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: state}
	return f
}

func withCounters(f conntrack.Flow, out, pout, in, pin uint64) conntrack.Flow {
	f.CountersOrig = conntrack.Counter{Bytes: out, Packets: pout}
	f.CountersReply = conntrack.Counter{Bytes: in, Packets: pin}
	return f
}

var (
	evNew     = conntrack.Event{Type: conntrack.EventNew}
	evUpdate  = conntrack.Event{Type: conntrack.EventUpdate}
	evDestroy = conntrack.Event{Type: conntrack.EventDestroy}
)

func TestTrackerCloseUpdateThenDestroy(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	f := tcpFlow(7, pod, 40000, leakTo, egress.MarkUnmanaged)
	h.event(evNew, f)
	if len(h.as) != 1 || h.as[0].Kind != KindDirectEgress {
		t.Fatalf("alerts %+v, want one direct-egress", h.as)
	}
	h.now = h.now.Add(2 * time.Second)
	h.event(evUpdate, withState(f, 3)) // ESTABLISHED
	if len(h.gets) != 0 || len(h.recs) != 0 {
		t.Fatalf("gets %v records %v before the close", h.gets, h.recs)
	}
	h.event(evUpdate, withState(f, tcpTimeWait))
	if len(h.gets) != 1 || h.gets[0] != keyOf(&f) {
		t.Fatalf("gets %v, want the flow's key", h.gets)
	}
	h.event(evUpdate, withState(f, tcpTimeWait)) // asked once only
	if len(h.gets) != 1 {
		t.Fatalf("%d gets, want 1", len(h.gets))
	}
	got := withCounters(f, 1048576+1620, 31, 1200, 24)
	h.tr.got(keyOf(&f), &got, nil, h.now)
	h.take()
	if len(h.recs) != 1 {
		t.Fatalf("records %+v, want one", h.recs)
	}
	r := h.recs[0]
	want := Record{
		Time: h.now, Client: Client{IP: pod, Namespace: "shop", Pod: "cache-0", ServiceAccount: "cache", SPIFFEID: "spiffe://cluster.local/ns/shop/sa/cache", Node: "n1"},
		Proto: "tcp", Src: pod, SPort: 40000, Dst: leakTo.Addr(), DPort: 6379, BytesOut: 1048576 + 1620, PacketsOut: 31, BytesIn: 1200, PacketsIn: 24,
		Duration: 2, Verdict: VerdictAllowed, Final: true,
	}
	if r != want {
		t.Errorf("record\n got %+v\nwant %+v", r, want)
	}
	// The Destroy a minute later must not log the flow again.
	h.now = h.now.Add(time.Minute)
	h.event(evDestroy, withCounters(f, 1048576+1672, 32, 1200, 24))
	if len(h.recs) != 1 {
		t.Errorf("records after Destroy %+v, want still one", h.recs)
	}
	if len(h.tr.flows) != 0 {
		t.Errorf("%d flows kept after Destroy", len(h.tr.flows))
	}
}

func TestTrackerGetMisses(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	f := tcpFlow(8, pod, 40001, leakTo, egress.MarkDNS)
	h.event(evNew, f)
	h.event(evUpdate, withState(f, tcpClose))
	h.tr.got(keyOf(&f), nil, unix.ENOENT, h.now) // gone: wait for Destroy
	h.take()
	if len(h.recs) != 0 {
		t.Fatalf("records %+v before Destroy", h.recs)
	}
	h.now = h.now.Add(time.Second)
	d := withCounters(f, 5000, 5, 300, 4)
	d.Timestamp.Stop = h.now.Add(-500 * time.Millisecond)
	h.event(evDestroy, d)
	if len(h.recs) != 1 || h.recs[0].BytesOut != 5000 || !h.recs[0].Final || !h.recs[0].Time.Equal(d.Timestamp.Stop) || h.recs[0].Duration != 0.5 {
		t.Errorf("records %+v, want one final with the Destroy's counters and stop time", h.recs)
	}
	if len(h.as) != 0 {
		t.Errorf("alerts %+v for a MarkDNS flow", h.as)
	}
}

func TestTrackerFilters(t *testing.T) {
	t.Parallel()
	stranger := netip.MustParseAddr("192.168.9.9")
	internal := netip.MustParseAddrPort("10.96.0.10:443")
	for _, tc := range []struct {
		name string
		flow conntrack.Flow
		want bool
	}{
		{name: "workload to outside", flow: tcpFlow(1, pod, 1, leakTo, 0), want: true},
		{name: "unknown source, no mark", flow: tcpFlow(2, stranger, 1, leakTo, 0)},
		{name: "unknown source with a kordon mark", flow: tcpFlow(3, stranger, 1, leakTo, egress.MarkUnmanaged), want: true},
		{name: "foreign mark", flow: tcpFlow(4, stranger, 1, leakTo, 0x1234), want: false},
		{name: "internal destination", flow: tcpFlow(5, pod, 1, internal, egress.MarkUnmanaged)},
		{name: "MarkInternal", flow: tcpFlow(6, pod, 1, leakTo, egress.MarkInternal)},
		{name: "resolver bypass to an internal address", flow: tcpFlow(7, pod, 1, netip.MustParseAddrPort("10.96.0.53:53"), egress.MarkBypass), want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, nil)
			h.event(evNew, tc.flow)
			h.event(evDestroy, withCounters(tc.flow, 100, 1, 0, 0))
			if got := len(h.recs) == 1; got != tc.want {
				t.Errorf("logged %v (%+v), want %v", got, h.recs, tc.want)
			}
		})
	}
}

func TestTrackerDumps(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *Config) { c.Interval = 10 * time.Second })
	long := tcpFlow(1, pod, 1, leakTo, egress.MarkUnmanaged)
	short := tcpFlow(2, pod, 2, leakTo, egress.MarkUnmanaged)
	h.event(evNew, long)
	h.now = h.now.Add(8 * time.Second)
	h.event(evNew, short)

	dump := func(gen uint64, fs ...conntrack.Flow) {
		started := h.now
		h.now = h.now.Add(10 * time.Millisecond)
		h.tr.dump(fs, gen, started, h.now)
		h.take()
	}
	h.now = h.now.Add(2 * time.Second) // long is 10 s old, short 2 s
	dump(1, withCounters(long, 1000, 2, 100, 1), withCounters(short, 10, 1, 0, 0))
	if len(h.recs) != 1 || h.recs[0].SPort != 1 || h.recs[0].Final || h.recs[0].BytesOut != 1000 || h.recs[0].Duration != 10 {
		t.Fatalf("records %+v, want one interval record of the long flow", h.recs)
	}
	// A flow first seen in a Dump (begun before the listener) is logged,
	// with the kernel's start time.
	old := withCounters(tcpFlow(3, pod, 3, leakTo, egress.MarkUnmanaged), 70, 1, 0, 0)
	old.Timestamp.Start = h.now.Add(-time.Hour)
	h.now = h.now.Add(10 * time.Second)
	dump(2, withCounters(long, 2000, 3, 100, 1), old) // short is gone once
	if n := len(h.recs); n != 3 || h.recs[1].BytesOut != 2000 || h.recs[2].SPort != 3 || h.recs[2].Duration < 3600 {
		t.Fatalf("records %+v, want interval records of long and old", h.recs)
	}
	h.recs = nil
	h.now = h.now.Add(10 * time.Second)
	closed := withState(withCounters(tcpFlow(4, pod, 4, leakTo, egress.MarkUnmanaged), 90, 3, 60, 2), tcpTimeWait)
	dump(3, withCounters(long, 3000, 4, 100, 1), old, closed) // short gone twice: its Destroy was lost
	var final *Record
	for i := range h.recs {
		if h.recs[i].SPort == 2 {
			final = &h.recs[i]
		}
	}
	if final == nil || !final.Final || final.BytesOut != 10 {
		t.Fatalf("records %+v, want a final record of the vanished flow with its last counters", h.recs)
	}
	n := 0
	for _, r := range h.recs {
		if r.SPort == 4 {
			n++
			if !r.Final || r.BytesOut != 90 || r.BytesIn != 60 {
				t.Errorf("record of a flow first seen closed %+v, want final with the Dump's counters", r)
			}
		}
	}
	if n != 1 {
		t.Errorf("%d records of the flow first seen closed, want 1", n)
	}
	h.recs = nil
	h.now = h.now.Add(10 * time.Second)
	dump(4, withCounters(long, 3000, 4, 100, 1), old, closed)
	for _, r := range h.recs {
		if r.SPort == 4 {
			t.Errorf("closed flow logged again: %+v", r)
		}
	}
	if _, ok := h.tr.flows[keyOf(&short)]; ok {
		t.Error("vanished flow kept")
	}
}

func TestTrackerVolumeFromDeltas(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *Config) { c.VolumeThreshold = 1000 })
	f := tcpFlow(1, pod, 1, netip.MustParseAddrPort("203.0.113.5:443"), egress.MarkDNS)
	h.event(evNew, f)
	h.tr.dump([]conntrack.Flow{withCounters(f, 600, 1, 0, 0)}, 1, h.now, h.now)
	h.take()
	if len(h.as) != 0 {
		t.Fatalf("alerts %+v at 600 bytes", h.as)
	}
	h.event(evDestroy, withCounters(f, 1200, 2, 0, 0))
	if len(h.as) != 1 || h.as[0].Kind != KindEgressVolume || h.as[0].Evidence["bytes"] != int64(1200) {
		t.Fatalf("alerts %+v, want egress-volume with 1200 bytes (600 + the final 600)", h.as)
	}
}

func TestTrackerBlockedPackets(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *Config) {
		c.Names = fakeNames{{pod, netip.MustParseAddr("203.0.113.9")}: "api.example.com"}
		c.Policies = fixedPolicy{Name: "shop/egress", Enforced: true}
	})
	p := logPacket{Prefix: egress.PrefixBlockPolicy, Proto: unix.IPPROTO_TCP, Src: pod, SPort: 5000, Dst: leakTo.Addr(), DPort: 6379}
	send := func(p logPacket) {
		h.tr.packet(&p, h.now)
		h.take()
	}
	send(p)
	h.now = h.now.Add(time.Second)
	send(p) // SYN retransmission
	h.now = h.now.Add(3 * time.Second)
	send(p)
	if len(h.recs) != 1 {
		t.Fatalf("records %+v, want one (retransmissions deduplicated)", h.recs)
	}
	r := h.recs[0]
	if r.Verdict != VerdictBlocked || r.Reason != reasonPolicy || !r.Final || r.Policy != "shop/egress" || r.Client.Pod != "cache-0" || r.DPort != 6379 {
		t.Errorf("record %+v", r)
	}
	if len(h.as) != 1 || h.as[0].Action != ActionBlocked || h.as[0].Kind != KindDirectEgress || h.as[0].Policy != "shop/egress" {
		t.Errorf("alerts %+v, want one blocked direct-egress", h.as)
	}
	h.now = h.now.Add(6 * time.Second)
	send(p) // quiet for longer than the dedup window: a new attempt
	if len(h.recs) != 2 {
		t.Errorf("records %+v, want a second record after a quiet period", h.recs)
	}
	// Port blocked to an address a DNS answer gave: a record, no alert.
	send(logPacket{Prefix: egress.PrefixBlockPort, Proto: unix.IPPROTO_TCP, Src: pod, SPort: 5001, Dst: netip.MustParseAddr("203.0.113.9"), DPort: 22})
	if len(h.recs) != 3 || h.recs[2].Reason != reasonPort || h.recs[2].DNSName != "api.example.com" || len(h.as) != 1 {
		t.Errorf("records %+v alerts %+v", h.recs, h.as)
	}
	// DoT to an outside resolver: resolver-bypass.
	send(logPacket{Prefix: egress.PrefixBlockDoT, Proto: unix.IPPROTO_TCP, Src: pod, SPort: 5002, Dst: netip.MustParseAddr("1.1.1.1"), DPort: 853})
	if len(h.as) != 2 || h.as[1].Kind != KindResolverBypass || h.as[1].Action != ActionBlocked {
		t.Errorf("alerts %+v, want resolver-bypass", h.as)
	}
	// Audit packets and foreign prefixes are not records.
	send(logPacket{Prefix: egress.PrefixAudit, Proto: unix.IPPROTO_TCP, Src: pod, SPort: 5003, Dst: leakTo.Addr(), DPort: 1})
	send(logPacket{Prefix: "someone else", Proto: unix.IPPROTO_TCP, Src: pod, SPort: 5004, Dst: leakTo.Addr(), DPort: 1})
	if len(h.recs) != 4 {
		t.Errorf("records %+v, want 4", h.recs)
	}
}

type fixedPolicy PolicyInfo

func (p fixedPolicy) Policy(netip.Addr) PolicyInfo { return PolicyInfo(p) }

func TestTrackerCloseWithGetQueueFull(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	h.getsFull = true
	f := tcpFlow(9, pod, 40009, leakTo, egress.MarkUnmanaged)
	h.event(evNew, f)
	h.event(evUpdate, withState(f, tcpTimeWait))
	if len(h.recs) != 0 {
		t.Fatalf("records %+v before any counters", h.recs)
	}
	// The next Dump has the entry in TIME_WAIT with its counters.
	h.tr.dump([]conntrack.Flow{withState(withCounters(f, 700, 5, 300, 4), tcpTimeWait)}, 1, h.now, h.now)
	h.take()
	if len(h.recs) != 1 || !h.recs[0].Final || h.recs[0].BytesOut != 700 {
		t.Fatalf("records %+v, want one final from the Dump", h.recs)
	}
	h.event(evDestroy, withCounters(f, 700, 5, 300, 4))
	if len(h.recs) != 1 {
		t.Errorf("records %+v after Destroy, want still one", h.recs)
	}
}

func TestTrackerDumpDoesNotPreemptGet(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	f := tcpFlow(10, pod, 40010, leakTo, egress.MarkUnmanaged)
	h.event(evNew, f)
	h.event(evUpdate, withState(f, tcpTimeWait)) // Get on its way
	h.tr.dump([]conntrack.Flow{withState(withCounters(f, 600, 4, 300, 4), tcpTimeWait)}, 1, h.now.Add(-time.Second), h.now)
	h.take()
	if len(h.recs) != 0 {
		t.Fatalf("records %+v: the Dump wrote a flow whose Get is pending", h.recs)
	}
	got := withCounters(f, 700, 5, 300, 4)
	h.tr.got(keyOf(&f), &got, nil, h.now)
	h.take()
	if len(h.recs) != 1 || h.recs[0].BytesOut != 700 || h.recs[0].Duration < 0 {
		t.Errorf("records %+v, want one with the Get's counters", h.recs)
	}
}

// TestTrackerDumpAfterDestroy: a Dump that began before a flow's Destroy
// still lists it, in TIME_WAIT, and comes back after the Destroy was
// handled (the two sockets race; seen under load as two final records
// of one flow). The flow is not followed again.
func TestTrackerDumpAfterDestroy(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	f := tcpFlow(11, pod, 40011, leakTo, egress.MarkUnmanaged)
	h.event(evNew, f)
	started := h.now
	h.now = h.now.Add(time.Second)
	h.event(evDestroy, withCounters(f, 800, 5, 300, 4))
	if len(h.recs) != 1 || !h.recs[0].Final {
		t.Fatalf("records %+v, want one final from the Destroy", h.recs)
	}
	h.tr.dump([]conntrack.Flow{withState(withCounters(f, 800, 5, 300, 4), tcpTimeWait)}, 1, started, h.now)
	h.take()
	if len(h.recs) != 1 {
		t.Fatalf("records %+v: a stale Dump logged an ended flow again", h.recs)
	}
	if len(h.tr.flows) != 0 {
		t.Errorf("%d flows followed after the stale Dump", len(h.tr.flows))
	}
	// The next Dump began after the Destroy: the memory of it is gone.
	h.now = h.now.Add(30 * time.Second)
	h.tr.dump(nil, 2, h.now, h.now)
	if len(h.tr.ended) != 0 {
		t.Errorf("%d ended flows remembered after a Dump that began later", 0)
	}
}

// BenchmarkTrackerFlow is one TCP flow's life through the tracker: New,
// two Updates, the close Update, the Get's answer and Destroy.
func BenchmarkTrackerFlow(b *testing.B) {
	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{{Name: "cache-0", Namespace: "shop", ServiceAccount: "cache", IPs: []netip.Addr{pod}}})
	cfg := Config{Registry: reg, Names: fakeNames{}, Internal: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
	if err := cfg.fill(); err != nil {
		b.Fatal(err)
	}
	m, _ := newMetrics(nil)
	tr := newTracker(&cfg, m, func(flowKey, conntrack.Tuple, uint16) bool { return true })
	now := t0
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		f := tcpFlow(uint32(i), pod, uint16(i), leakTo, egress.MarkDNS)
		est, tw := withState(f, 3), withState(f, tcpTimeWait)
		got := withCounters(f, 5000, 6, 900, 5)
		for _, ev := range []conntrack.Event{{Type: conntrack.EventNew, Flow: &f}, {Type: conntrack.EventUpdate, Flow: &est}, {Type: conntrack.EventUpdate, Flow: &est}, {Type: conntrack.EventUpdate, Flow: &tw}} {
			tr.event(&ev, now)
		}
		tr.got(keyOf(&f), &got, nil, now)
		tr.event(&conntrack.Event{Type: conntrack.EventDestroy, Flow: &got}, now)
		if i%256 == 0 {
			tr.take()
		}
	}
}
