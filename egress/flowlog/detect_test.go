package flowlog

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/egress"
)

var (
	t0     = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	pod    = netip.MustParseAddr("10.244.1.2")
	leakTo = netip.MustParseAddrPort("198.51.100.7:6379")
)

type nopQuarantiner struct{}

func (nopQuarantiner) QuarantineAddr(netip.Addr, netip.Addr) error { return nil }

func testDetector(quarantiner bool) *detector {
	cfg := Config{Cooldown: 10 * time.Minute, VolumeThreshold: 50 << 20, VolumeWindow: 10 * time.Minute}
	if quarantiner {
		cfg.Quarantiner = nopQuarantiner{}
	}
	return newDetector(&cfg)
}

func TestObserve(t *testing.T) {
	t.Parallel()
	base := observation{client: Client{IP: pod, Pod: "cache-0"}, proto: "tcp", dst: leakTo, mark: egress.MarkUnmanaged, verdict: VerdictAllowed}
	for _, tc := range []struct {
		name        string
		edit        func(o *observation)
		quarantiner bool
		wantKind    string // "" for no alert
		wantAction  string
		wantSev     string
	}{
		{name: "unmanaged workload, no answer gave the address", wantKind: KindDirectEgress, wantAction: ActionAlerted, wantSev: "high"},
		{name: "a DNS answer gave it", edit: func(o *observation) { o.learned = true }},
		{name: "MarkDNS says an answer gave it", edit: func(o *observation) { o.mark = egress.MarkDNS }},
		{name: "allowCIDRs allows it on purpose", edit: func(o *observation) { o.mark = egress.MarkCIDR }},
		{name: "internal destination", edit: func(o *observation) { o.internal = true }},
		{name: "blocked attempt", edit: func(o *observation) { o.verdict, o.reason, o.mark = VerdictBlocked, reasonPolicy, 0 }, wantKind: KindDirectEgress, wantAction: ActionBlocked, wantSev: "high"},
		{name: "blocked by port, address learned", edit: func(o *observation) { o.verdict, o.reason, o.learned = VerdictBlocked, reasonPort, true }},
		{name: "audit verdict", edit: func(o *observation) { o.mark, o.verdict = egress.MarkAudit, VerdictAudit }, quarantiner: true, wantKind: KindDirectEgress, wantAction: ActionAudit, wantSev: "high"},
		{name: "audit policy", edit: func(o *observation) { o.policy = PolicyInfo{Name: "shop/p", Audit: true, Quarantine: true} }, quarantiner: true, wantKind: KindDirectEgress, wantAction: ActionAudit, wantSev: "high"},
		{name: "quarantine policy", edit: func(o *observation) { o.policy = PolicyInfo{Name: "shop/p", Enforced: true, Quarantine: true} }, quarantiner: true, wantKind: KindDirectEgress, wantAction: ActionQuarantined, wantSev: "high"},
		{name: "quarantine policy without a quarantiner", edit: func(o *observation) { o.policy = PolicyInfo{Name: "shop/p", Quarantine: true} }, wantKind: KindDirectEgress, wantAction: ActionAlerted, wantSev: "high"},
		{name: "resolver bypass redirected", edit: func(o *observation) {
			o.mark, o.dst, o.proto = egress.MarkBypass, netip.MustParseAddrPort("8.8.8.8:53"), "udp"
		}, wantKind: KindResolverBypass, wantAction: ActionAlerted, wantSev: "medium"},
		{name: "resolver bypass to an internal resolver", edit: func(o *observation) {
			o.mark, o.internal, o.dst = egress.MarkBypass, true, netip.MustParseAddrPort("10.96.5.5:53")
		}, wantKind: KindResolverBypass, wantAction: ActionAlerted, wantSev: "medium"},
		{name: "DoT blocked", edit: func(o *observation) {
			o.verdict, o.reason, o.mark, o.dst = VerdictBlocked, reasonDoT, 0, netip.MustParseAddrPort("1.1.1.1:853")
		}, wantKind: KindResolverBypass, wantAction: ActionBlocked, wantSev: "medium"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := base
			if tc.edit != nil {
				tc.edit(&o)
			}
			d := testDetector(tc.quarantiner)
			a, ok := d.observe(&o, t0)
			if tc.wantKind == "" {
				if ok {
					t.Fatalf("unexpected alert %+v", a)
				}
				return
			}
			if !ok {
				t.Fatal("no alert")
			}
			if a.Kind != tc.wantKind || a.Action != tc.wantAction || a.Severity != tc.wantSev || a.Dst != o.dst || a.Client.Pod != "cache-0" || !a.Time.Equal(t0) {
				t.Errorf("alert %+v, want kind %s action %s severity %s", a, tc.wantKind, tc.wantAction, tc.wantSev)
			}
			if a.Evidence["dport"] != o.dst.Port() || a.Evidence["proto"] != o.proto || a.Evidence["verdict"] != o.verdict {
				t.Errorf("evidence %v", a.Evidence)
			}
			if a.Kind == KindResolverBypass && (a.Evidence["resolver"] != o.dst.Addr().String() || a.Evidence["resolverPort"] != o.dst.Port()) {
				t.Errorf("resolver evidence %v", a.Evidence)
			}
			if a.Policy != o.policy.Name {
				t.Errorf("policy %q, want %q", a.Policy, o.policy.Name)
			}
		})
	}
}

func TestObserveCooldown(t *testing.T) {
	t.Parallel()
	d := testDetector(false)
	o := observation{client: Client{IP: pod}, proto: "tcp", dst: leakTo, verdict: VerdictAllowed}
	steps := []struct {
		at   time.Duration
		dst  netip.AddrPort
		want bool
	}{
		{0, leakTo, true},
		{time.Minute, leakTo, false}, // same client, kind, address
		{2 * time.Minute, netip.AddrPortFrom(leakTo.Addr(), 443), false},      // another port, same address
		{2 * time.Minute, netip.MustParseAddrPort("198.51.100.8:6379"), true}, // another address
		{10 * time.Minute, leakTo, true},                                      // cooldown over
	}
	for i, s := range steps {
		o.dst = s.dst
		if _, ok := d.observe(&o, t0.Add(s.at)); ok != s.want {
			t.Errorf("step %d (%s at +%s): alert %v, want %v", i, s.dst, s.at, ok, s.want)
		}
	}
	d.prune(t0.Add(30 * time.Minute))
	if len(d.last) != 0 {
		t.Errorf("prune left %d cooldowns", len(d.last))
	}
}

func TestVolume(t *testing.T) {
	t.Parallel()
	const mb = 1_000_000
	o := observation{client: Client{IP: pod}, proto: "tcp", dst: leakTo, verdict: VerdictAllowed}
	t.Run("100 MB in 10 minutes alerts", func(t *testing.T) {
		t.Parallel()
		d := testDetector(false)
		var alerts []Alert
		for i := range 10 { // 10 MB a minute
			if a, ok := d.addVolume(&o, 10*mb, t0.Add(time.Duration(i)*time.Minute)); ok {
				alerts = append(alerts, a)
			}
		}
		if len(alerts) != 1 {
			t.Fatalf("%d alerts, want 1", len(alerts))
		}
		a := alerts[0]
		if a.Kind != KindEgressVolume || a.Severity != "medium" || a.Evidence["bytes"].(int64) <= 50<<20 || a.Evidence["windowSeconds"] != 600.0 {
			t.Errorf("alert %+v", a)
		}
	})
	t.Run("1 MB a minute for an hour does not", func(t *testing.T) {
		t.Parallel()
		d := testDetector(false)
		for i := range 60 {
			if a, ok := d.addVolume(&o, mb, t0.Add(time.Duration(i)*time.Minute)); ok {
				t.Fatalf("alert at minute %d: %+v", i, a)
			}
		}
	})
	t.Run("the window slides", func(t *testing.T) {
		t.Parallel()
		d := testDetector(false)
		// 40 MiB, then 20 MiB 11 minutes later: never 50 MiB in one window.
		if _, ok := d.addVolume(&o, 40<<20, t0); ok {
			t.Fatal("alert on 40 MiB")
		}
		if _, ok := d.addVolume(&o, 20<<20, t0.Add(11*time.Minute)); ok {
			t.Fatal("alert on bytes from two windows")
		}
		// 31 MiB more within the window of the 20: alert.
		if _, ok := d.addVolume(&o, 31<<20, t0.Add(15*time.Minute)); !ok {
			t.Fatal("no alert on 51 MiB within 10 minutes")
		}
	})
	t.Run("per destination", func(t *testing.T) {
		t.Parallel()
		d := testDetector(false)
		for i := range 20 {
			o := o
			o.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 443)
			if _, ok := d.addVolume(&o, 10<<20, t0); ok {
				t.Fatalf("alert for %s with 10 MiB", o.dst)
			}
		}
	})
	t.Run("internal destinations are not egress", func(t *testing.T) {
		t.Parallel()
		d := testDetector(false)
		o := o
		o.internal = true
		if _, ok := d.addVolume(&o, 1<<30, t0); ok {
			t.Fatal("alert for an internal destination")
		}
	})
}

type recQuarantiner struct {
	err   error
	calls [][2]netip.Addr
}

func (q *recQuarantiner) QuarantineAddr(c, d netip.Addr) error {
	q.calls = append(q.calls, [2]netip.Addr{c, d})
	return q.err
}

func TestDispatchQuarantines(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		err        error
		wantAction string
	}{
		{name: "quarantined", wantAction: ActionQuarantined},
		{name: "quarantine fails", err: errors.New("nft: busy"), wantAction: ActionAlerted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q, s := &recQuarantiner{err: tc.err}, newSink()
			l := &Logger{cfg: Config{Quarantiner: q, Alerts: s}, log: slog.New(slog.DiscardHandler)}
			in := make(chan Alert, 2)
			in <- Alert{Kind: KindDirectEgress, Client: Client{IP: pod}, Dst: leakTo, Action: ActionQuarantined, Message: "m"}
			in <- Alert{Kind: KindEgressVolume, Client: Client{IP: pod}, Dst: leakTo, Action: ActionAlerted}
			close(in)
			l.dispatch(context.Background(), in)
			if len(q.calls) != 1 || q.calls[0] != [2]netip.Addr{pod, leakTo.Addr()} {
				t.Errorf("quarantine calls %v, want one for (client, dst)", q.calls)
			}
			got := s.all()
			if len(got) != 2 || got[0].Action != tc.wantAction || got[1].Action != ActionAlerted {
				t.Fatalf("published %+v", got)
			}
			if tc.err != nil && !strings.Contains(got[0].Message, "quarantine failed: nft: busy") {
				t.Errorf("message %q does not say the quarantine failed", got[0].Message)
			}
		})
	}
}
