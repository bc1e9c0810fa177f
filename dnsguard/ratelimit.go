package dnsguard

import (
	"net/netip"
	"sync"
	"time"
)

// rateLimiter is a per-client token bucket. Buckets idle for a minute are
// dropped, and the number of buckets is capped (maxBuckets) so a flood
// from many (possibly spoofed) source addresses cannot grow memory
// without bound (see makeRoom).
type rateLimiter struct {
	mu         sync.Mutex
	rate       float64 // tokens per second
	burst      float64
	buckets    map[netip.Addr]*bucket
	sweep      time.Time
	maxBuckets int
}

// defaultMaxBuckets bounds the limiter to a few MB.
const defaultMaxBuckets = 1 << 16

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(qps float64, burst int) *rateLimiter {
	if qps <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = int(qps)
	}
	return &rateLimiter{rate: qps, burst: float64(burst), buckets: map[netip.Addr]*bucket{}, maxBuckets: defaultMaxBuckets}
}

// allow takes a token for ip; false means refuse.
func (r *rateLimiter) allow(ip netip.Addr, now time.Time) bool {
	if r == nil {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.sweep) > time.Minute {
		for k, b := range r.buckets {
			if now.Sub(b.last) > time.Minute {
				delete(r.buckets, k)
			}
		}
		r.sweep = now
	}
	b, ok := r.buckets[ip]
	if !ok {
		if len(r.buckets) >= r.maxBuckets {
			r.makeRoom(now)
		}
		b = &bucket{tokens: r.burst, last: now}
		r.buckets[ip] = b
	}
	b.tokens = min(r.burst, b.tokens+now.Sub(b.last).Seconds()*r.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// makeRoom frees one slot at the bucket cap in constant time; r.mu must
// be held. It samples a few buckets (map order is random) and drops the
// one with the most tokens after refill: a full bucket behaves exactly
// like a new one, so that drop changes no decision, and throttled
// clients, whose buckets are nearly empty, are the last to go.
func (r *rateLimiter) makeRoom(now time.Time) {
	var (
		victim netip.Addr
		most   = -1.0
		seen   int
	)
	for k, b := range r.buckets {
		if t := b.tokens + now.Sub(b.last).Seconds()*r.rate; t > most {
			victim, most = k, t
		}
		if seen++; seen == 8 {
			break
		}
	}
	delete(r.buckets, victim)
}
