package dnsguard

import (
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func cacheAnswer(name string, ttl uint32) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Response = true
	rr, err := dns.NewRR(fmt.Sprintf("%s %d IN A 192.0.2.1", name, ttl))
	if err != nil {
		panic(err)
	}
	m.Answer = []dns.RR{rr}
	return m
}

// TestCacheBounded fills the cache far past its size and checks every
// shard stays within its share.
func TestCacheBounded(t *testing.T) {
	now := time.Unix(1700000000, 0)
	c := newCache(cacheShards*4, 0, time.Hour, time.Minute, 24*time.Hour)
	for i := 0; i < 20000; i++ {
		name := fmt.Sprintf("n%d.example.", i)
		c.put(cacheKey{name: name[:len(name)-1], qtype: dns.TypeA, qclass: dns.ClassINET}, cacheAnswer(name, 300), now)
	}
	total := 0
	for i := range c.shards {
		if n := len(c.shards[i].m); n > c.perShard {
			t.Fatalf("shard %d holds %d entries, limit %d", i, n, c.perShard)
		}
		total += len(c.shards[i].m)
	}
	if total == 0 || total > cacheShards*4 {
		t.Fatalf("cache holds %d entries, want 1..%d", total, cacheShards*4)
	}
	// Replacing a present key in a full shard must not evict another.
	k := cacheKey{name: "n19999.example", qtype: dns.TypeA, qclass: dns.ClassINET}
	sh := c.shard(k)
	before := len(sh.m)
	c.put(k, cacheAnswer("n19999.example.", 60), now)
	if len(sh.m) != before {
		t.Fatalf("replacing a cached key changed the shard size %d -> %d", before, len(sh.m))
	}
}

// TestCacheEvictChoice checks which entry an eviction removes when the
// sample covers the whole shard: anything past its stale window, else the
// entry expiring first.
func TestCacheEvictChoice(t *testing.T) {
	now := time.Unix(1700000000, 0)
	key := func(i int) cacheKey { return cacheKey{name: fmt.Sprintf("n%d", i), qtype: dns.TypeA} }
	fill := func() *cacheShard {
		s := &cacheShard{m: map[cacheKey]*cacheEntry{}}
		for i := 0; i < 10; i++ {
			s.m[key(i)] = &cacheEntry{expires: now.Add(time.Duration(10+i) * time.Minute)}
		}
		return s
	}

	s := fill()
	s.m[key(7)].expires = now.Add(time.Minute)
	s.evict(now, time.Hour)
	if _, ok := s.m[key(7)]; ok || len(s.m) != 9 {
		t.Fatalf("want only the entry expiring first evicted, left %d entries (n7 present: %v)", len(s.m), ok)
	}

	s = fill()
	s.m[key(3)].expires = now.Add(-2 * time.Hour)
	s.m[key(5)].expires = now.Add(-30 * time.Minute) // expired, still within the stale window
	s.evict(now, time.Hour)
	_, has3 := s.m[key(3)]
	_, has5 := s.m[key(5)]
	if has3 || !has5 || len(s.m) != 9 {
		t.Fatalf("want only the entry past its stale window dropped: n3 %v n5 %v, %d entries", has3, has5, len(s.m))
	}
}

// BenchmarkCachePutFull measures inserts into a full cache (a stream of
// cache misses at steady state).
func BenchmarkCachePutFull(b *testing.B) {
	now := time.Unix(1700000000, 0)
	c := newCache(100000, 0, time.Hour, time.Minute, 24*time.Hour)
	msgs := make([]*dns.Msg, 1024)
	for i := range msgs {
		msgs[i] = cacheAnswer(fmt.Sprintf("m%d.example.", i), 300)
	}
	for i := 0; i < 200000; i++ {
		c.put(cacheKey{name: fmt.Sprintf("f%d.example", i), qtype: dns.TypeA, qclass: dns.ClassINET}, msgs[i%len(msgs)], now)
	}
	keys := make([]cacheKey, b.N)
	for i := range keys {
		keys[i] = cacheKey{name: fmt.Sprintf("b%d.example", i), qtype: dns.TypeA, qclass: dns.ClassINET}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.put(keys[i], msgs[i%len(msgs)], now)
	}
}
