package dnsguard

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// cacheKey identifies an answer: lower-cased name, type, class and the DO
// bit (DNSSEC records differ).
type cacheKey struct {
	name   string
	qtype  uint16
	qclass uint16
	do     bool
}

type cacheEntry struct {
	msg     *dns.Msg    // nil for answers cached by a fast miss (see message)
	wire    *wireAnswer // nil when it cannot be served from wire
	stored  time.Time
	expires time.Time
}

// cache is a sharded positive and negative answer cache with TTL bounds
// and stale retention for serve-stale (RFC 8767).
type cache struct {
	shards   [cacheShards]cacheShard
	seed     maphash.Seed
	perShard int
	minTTL   time.Duration
	maxTTL   time.Duration
	negTTL   time.Duration
	stale    time.Duration
}

const cacheShards = 64

type cacheShard struct {
	mu sync.Mutex
	m  map[cacheKey]*cacheEntry
}

func newCache(size int, minTTL, maxTTL, negTTL, stale time.Duration) *cache {
	c := &cache{seed: maphash.MakeSeed(), perShard: max(size/cacheShards, 1), minTTL: minTTL, maxTTL: maxTTL, negTTL: negTTL, stale: stale}
	for i := range c.shards {
		c.shards[i].m = make(map[cacheKey]*cacheEntry)
	}
	return c
}

func (c *cache) shard(k cacheKey) *cacheShard {
	return &c.shards[maphash.String(c.seed, k.name)%cacheShards]
}

// get returns a copy of the cached answer with TTLs decremented, or, when
// allowStale, an expired one within the stale window with TTL 30 s.
func (c *cache) get(k cacheKey, now time.Time, allowStale bool) (*dns.Msg, bool) {
	s := c.shard(k)
	s.mu.Lock()
	e, ok := s.m[k]
	s.mu.Unlock()
	if !ok {
		return nil, false
	}
	if now.Before(e.expires) {
		m := e.message()
		if m == nil {
			return nil, false
		}
		age := uint32(now.Sub(e.stored) / time.Second)
		for _, rrs := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
			for _, rr := range rrs {
				h := rr.Header()
				if h.Rrtype == dns.TypeOPT {
					continue
				}
				if h.Ttl > age {
					h.Ttl -= age
				} else {
					h.Ttl = 0
				}
			}
		}
		return m, true
	}
	if allowStale && now.Before(e.expires.Add(c.stale)) {
		m := e.message()
		if m == nil {
			return nil, false
		}
		for _, rrs := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
			for _, rr := range rrs {
				if rr.Header().Rrtype != dns.TypeOPT {
					rr.Header().Ttl = 30 // RFC 8767 section 4
				}
			}
		}
		return m, true
	}
	return nil, false
}

// message returns a copy of the entry as a dns.Msg the caller may
// modify: a deep copy of msg, or, for an entry stored in wire form only,
// the wire unpacked (the full path needs it rarely: TCP, truncation,
// serve-stale).
func (e *cacheEntry) message() *dns.Msg {
	if e.msg != nil {
		return e.msg.Copy()
	}
	m := new(dns.Msg)
	if m.Unpack(e.wire.wire) != nil {
		return nil
	}
	return m
}

// putWire stores an answer already in wire form (from wireFromUpstream)
// for ttl.
func (c *cache) putWire(k cacheKey, wa *wireAnswer, now time.Time, ttl time.Duration) {
	s := c.shard(k)
	s.mu.Lock()
	if _, replace := s.m[k]; !replace && len(s.m) >= c.perShard {
		s.evict(now, c.stale)
	}
	s.m[k] = &cacheEntry{wire: wa, stored: now, expires: now.Add(ttl)}
	s.mu.Unlock()
}

// getWire returns the fresh wire answer for k and its age in seconds.
func (c *cache) getWire(k cacheKey, now time.Time) (*wireAnswer, uint32, bool) {
	s := c.shard(k)
	s.mu.Lock()
	e, ok := s.m[k]
	s.mu.Unlock()
	if !ok || e.wire == nil || !now.Before(e.expires) {
		return nil, 0, false
	}
	return e.wire, uint32(now.Sub(e.stored) / time.Second), true
}

// put stores m if it is cacheable: NOERROR with answers (positive) or
// NXDOMAIN/NODATA (negative, TTL from the SOA minimum, RFC 2308).
func (c *cache) put(k cacheKey, m *dns.Msg, now time.Time) {
	if m.Truncated {
		return
	}
	if m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
		return // SERVFAIL, REFUSED: never cached
	}
	minTTL, soaTTL := ^uint32(0), int64(-1)
	for _, rr := range m.Answer {
		minTTL = min(minTTL, rr.Header().Ttl)
	}
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			soaTTL = int64(min(soa.Hdr.Ttl, soa.Minttl))
		}
	}
	ttl := c.ttlFor(m.Rcode, len(m.Answer), minTTL, soaTTL)
	if ttl <= 0 {
		return
	}
	// A shallow copy: callers (finish) never modify m's records or
	// section slices in place, so the cache can share them.
	stored := new(dns.Msg)
	*stored = *m
	stored.Id = 0
	s := c.shard(k)
	s.mu.Lock()
	if _, replace := s.m[k]; !replace && len(s.m) >= c.perShard {
		s.evict(now, c.stale)
	}
	s.m[k] = &cacheEntry{msg: stored, wire: c.packWire(stored, k.name+"."), stored: now, expires: now.Add(ttl)}
	s.mu.Unlock()
}

// ttlFor is how long an answer is cached: positive answers (NOERROR with
// answers) for their smallest TTL within MinTTL..MaxTTL; NXDOMAIN and
// NODATA for the SOA's min(TTL, MINIMUM) capped by the negative TTL, or
// the negative TTL without an SOA (RFC 2308). soaTTL < 0: no SOA.
func (c *cache) ttlFor(rcode, answers int, minAnswerTTL uint32, soaTTL int64) time.Duration {
	if rcode == dns.RcodeSuccess && answers > 0 {
		return min(max(time.Duration(minAnswerTTL)*time.Second, c.minTTL), c.maxTTL)
	}
	if soaTTL >= 0 {
		return min(time.Duration(soaTTL)*time.Second, c.negTTL)
	}
	return c.negTTL
}

// evictSample is how many entries one eviction looks at.
const evictSample = 16

// evict frees one slot in a full shard in constant time, so a full cache
// under a stream of misses does not scan the shard on every insert. It
// samples a few entries (map iteration order is random): those past their
// stale window are dropped; if none is, the sampled entry expiring first
// goes. s.mu must be held.
func (s *cacheShard) evict(now time.Time, stale time.Duration) {
	var (
		victim    cacheKey
		victimExp time.Time
		found     bool
		dropped   bool
		seen      int
	)
	for key, e := range s.m {
		if now.After(e.expires.Add(stale)) {
			delete(s.m, key)
			dropped = true
		} else if !found || e.expires.Before(victimExp) {
			victim, victimExp, found = key, e.expires, true
		}
		if seen++; seen == evictSample {
			break
		}
	}
	if !dropped && found {
		delete(s.m, victim)
	}
}
