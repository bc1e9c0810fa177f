package dnsguard

import (
	"net/netip"
	"testing"
	"time"
)

func clientIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// TestRateLimiterBoundedUnderSpoofing floods the limiter with distinct
// source addresses and checks the bucket count stays at the cap while a
// throttled client stays throttled (its bucket is not full, so the
// lossless sweep keeps it).
func TestRateLimiterBoundedUnderSpoofing(t *testing.T) {
	now := time.Unix(1700000000, 0)
	r := newRateLimiter(10, 5)
	r.maxBuckets = 100
	heavy := netip.MustParseAddr("192.0.2.7")
	for i := 0; i < 5; i++ {
		if !r.allow(heavy, now) {
			t.Fatalf("query %d within the burst refused", i)
		}
	}
	if r.allow(heavy, now) {
		t.Fatal("query past the burst allowed")
	}
	// Spoofed clients, one query each, all within the same 10 ms: the
	// limiter stays at its cap and drops their barely used buckets rather
	// than the heavy client's empty one.
	for i := 0; i < 10000; i++ {
		at := now.Add(time.Duration(i) * time.Microsecond)
		if !r.allow(clientIP(i), at) {
			t.Fatalf("first query of client %d refused", i)
		}
		if len(r.buckets) > r.maxBuckets {
			t.Fatalf("after %d clients: %d buckets, cap %d", i+1, len(r.buckets), r.maxBuckets)
		}
	}
	if _, ok := r.buckets[heavy]; !ok {
		t.Fatal("the throttled client's bucket was evicted by the flood")
	}
	if r.allow(heavy, now.Add(10*time.Millisecond)) {
		t.Fatal("throttled client allowed again after the flood")
	}
	if len(r.buckets) != r.maxBuckets {
		t.Fatalf("%d buckets, want the cap %d", len(r.buckets), r.maxBuckets)
	}
}
