package flowlog

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/kordon-dev/kordon/egress"
)

// detector decides alerts from flow observations. It is pure logic (the
// clock comes in as arguments) owned by one goroutine.
type detector struct {
	cooldown      time.Duration
	threshold     int64
	window        time.Duration
	canQuarantine bool

	last map[alertKey]time.Time
	vol  map[volKey]*volume
}

// alertKey is what the local cooldown deduplicates on.
type alertKey struct {
	client netip.Addr
	kind   string
	dst    netip.Addr
}

type volKey struct{ client, dst netip.Addr }

// volumeBuckets split the window: the sum over the buckets that overlap
// the last window is compared with the threshold (error at most one
// bucket, a tenth of the window).
const volumeBuckets = 10

type volume struct {
	idx   [volumeBuckets]int64 // bucket number of each slot
	bytes [volumeBuckets]int64
	last  time.Time
}

func newDetector(cfg *Config) *detector {
	return &detector{
		cooldown: cfg.Cooldown, threshold: cfg.VolumeThreshold, window: cfg.VolumeWindow,
		canQuarantine: cfg.Quarantiner != nil,
		last:          map[alertKey]time.Time{}, vol: map[volKey]*volume{},
	}
}

// observation is one flow (or blocked attempt) as detection sees it.
type observation struct {
	client   Client
	proto    string
	dst      netip.AddrPort
	mark     uint32
	verdict  string
	reason   string // blocked attempts: policy, port, dot, quarantine
	dnsName  string // the name whose answer gave dst, when known
	internal bool   // dst is in Config.Internal
	learned  bool   // a DNS answer to client gave dst
	policy   PolicyInfo
	bytesOut uint64
	bytesIn  uint64
}

// allow applies the cooldown.
func (d *detector) allow(k alertKey, now time.Time) bool {
	if last, ok := d.last[k]; ok && now.Sub(last) < d.cooldown {
		return false
	}
	d.last[k] = now
	return true
}

// observe returns the alert for a new flow or a blocked attempt, if any.
func (d *detector) observe(o *observation, now time.Time) (Alert, bool) {
	bypass := o.mark == egress.MarkBypass || (o.verdict == VerdictBlocked && o.reason == reasonDoT)
	switch {
	case bypass:
		if !d.allow(alertKey{o.client.IP, KindResolverBypass, o.dst.Addr()}, now) {
			return Alert{}, false
		}
		a := d.alert(o, now, KindResolverBypass, "medium")
		a.Evidence["resolver"] = o.dst.Addr().String()
		a.Evidence["resolverPort"] = o.dst.Port()
		if o.verdict == VerdictBlocked {
			a.Action = ActionBlocked
			a.Message = fmt.Sprintf("encrypted DNS to %s blocked", o.dst)
		} else {
			a.Action = ActionAlerted
			a.Message = fmt.Sprintf("DNS query to resolver %s redirected to kordon", o.dst)
		}
		return a, true
	case o.internal, o.learned, o.mark == egress.MarkCIDR, o.mark == egress.MarkDNS:
		// Why no alert: in-cluster, or the address came from this
		// workload's own DNS answer (MarkDNS is the kernel saying so), or
		// the policy allows it by CIDR on purpose.
		return Alert{}, false
	}
	if !d.allow(alertKey{o.client.IP, KindDirectEgress, o.dst.Addr()}, now) {
		return Alert{}, false
	}
	a := d.alert(o, now, KindDirectEgress, "high")
	switch {
	case o.verdict == VerdictBlocked:
		a.Action = ActionBlocked
	case o.verdict == VerdictAudit || o.policy.Audit:
		a.Action = ActionAudit
	case o.policy.Quarantine && d.canQuarantine:
		a.Action = ActionQuarantined
	default:
		a.Action = ActionAlerted
	}
	a.Message = fmt.Sprintf("%s connection to %s, an address no DNS answer gave this workload", o.proto, o.dst)
	return a, true
}

// addVolume counts delta outbound bytes from client to dst at now and
// returns an egress-volume alert when the window's total passes the
// threshold.
func (d *detector) addVolume(o *observation, delta int64, now time.Time) (Alert, bool) {
	if delta <= 0 || o.internal {
		return Alert{}, false
	}
	k := volKey{o.client.IP, o.dst.Addr()}
	v := d.vol[k]
	if v == nil {
		v = &volume{}
		d.vol[k] = v
	}
	width := int64(d.window / volumeBuckets)
	if width <= 0 {
		width = 1
	}
	cur := now.UnixNano() / width
	slot := int(cur % volumeBuckets)
	if slot < 0 {
		slot += volumeBuckets
	}
	if v.idx[slot] != cur {
		v.idx[slot], v.bytes[slot] = cur, 0
	}
	v.bytes[slot] += delta
	v.last = now
	var total int64
	for i := range v.idx {
		if v.idx[i] > cur-volumeBuckets {
			total += v.bytes[i]
		}
	}
	if total <= d.threshold || !d.allow(alertKey{o.client.IP, KindEgressVolume, o.dst.Addr()}, now) {
		return Alert{}, false
	}
	a := d.alert(o, now, KindEgressVolume, "medium")
	a.Action = ActionAlerted
	a.Evidence["bytes"] = total
	a.Evidence["windowSeconds"] = d.window.Seconds()
	a.Evidence["threshold"] = d.threshold
	a.Message = fmt.Sprintf("%d bytes to %s within %s", total, o.dst.Addr(), d.window)
	return a, true
}

func (d *detector) alert(o *observation, now time.Time, kind, severity string) Alert {
	a := Alert{
		Time: now, Kind: kind, Severity: severity, Client: o.client, Proto: o.proto, Dst: o.dst,
		Policy: o.policy.Name,
		Evidence: map[string]any{
			"proto": o.proto, "dst": o.dst.Addr().String(), "dport": o.dst.Port(), "verdict": o.verdict,
			"bytesOut": o.bytesOut, "bytesIn": o.bytesIn,
		},
	}
	if o.reason != "" {
		a.Evidence["reason"] = o.reason
	}
	if o.dnsName != "" {
		a.Evidence["dnsName"] = o.dnsName
	}
	return a
}

// prune forgets cooldowns and volume windows that have run out.
func (d *detector) prune(now time.Time) {
	for k, t := range d.last {
		if now.Sub(t) >= d.cooldown {
			delete(d.last, k)
		}
	}
	for k, v := range d.vol {
		if now.Sub(v.last) >= d.window {
			delete(d.vol, k)
		}
	}
}
