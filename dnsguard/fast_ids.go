package dnsguard

import (
	"sync"

	"github.com/kordon-dev/kordon/internal/workload"
)

// maxCachedIDs bounds the SPIFFE ID cache; it is emptied when full (IDs are
// cheap to rebuild, and a cluster rarely has this many service accounts).
const maxCachedIDs = 4096

// idCache remembers each service account's SPIFFE ID so logging a query
// does not format it again (fmt.Sprintf was a visible share of a query's
// allocations).
type idCache struct {
	trustDomain string
	mu          sync.RWMutex
	ids         map[idKey]string
}

type idKey struct{ namespace, serviceAccount string }

func newIDCache(trustDomain string) *idCache {
	return &idCache{trustDomain: trustDomain, ids: map[idKey]string{}}
}

// id returns wl.SPIFFEID(trustDomain).
func (c *idCache) id(wl *workload.Workload) string {
	k := idKey{wl.Namespace, wl.ServiceAccount}
	c.mu.RLock()
	id, ok := c.ids[k]
	c.mu.RUnlock()
	if ok {
		return id
	}
	id = wl.SPIFFEID(c.trustDomain)
	c.mu.Lock()
	if len(c.ids) >= maxCachedIDs {
		clear(c.ids)
	}
	c.ids[k] = id
	c.mu.Unlock()
	return id
}
