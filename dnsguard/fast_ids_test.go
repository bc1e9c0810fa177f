package dnsguard

import (
	"strconv"
	"testing"

	"github.com/kordon-dev/kordon/internal/workload"
)

func TestIDCacheMatchesSPIFFEIDAndStaysBounded(t *testing.T) {
	c := newIDCache("example.org")
	for i := 0; i < maxCachedIDs+10; i++ {
		wl := &workload.Workload{Namespace: "ns" + strconv.Itoa(i%7), ServiceAccount: "sa" + strconv.Itoa(i)}
		if got, want := c.id(wl), wl.SPIFFEID("example.org"); got != want {
			t.Fatalf("id = %q, want %q", got, want)
		}
		if again := c.id(wl); again != wl.SPIFFEID("example.org") {
			t.Fatalf("cached id = %q", again)
		}
	}
	if n := len(c.ids); n > maxCachedIDs {
		t.Fatalf("cache holds %d ids, bound %d", n, maxCachedIDs)
	}
}
