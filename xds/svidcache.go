package xds

import (
	"context"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/identity"
)

// svidCache owns the SVIDs served over SDS, one per SPIFFE ID, renewed
// by identity.RenewTime (half of the lifetime, counted from issue), the
// rule every SVID holder of kordon follows.
type svidCache struct {
	src Identities
	now func() time.Time

	mu    sync.Mutex
	svids map[string]*SVID
}

func newSVIDCache(src Identities, now func() time.Time) *svidCache {
	return &svidCache{src: src, now: now, svids: map[string]*SVID{}}
}

// get returns the cached SVID for id, or a new one when none is cached or
// the cached one is due.
func (c *svidCache) get(ctx context.Context, id string) (*SVID, error) {
	now := c.now()
	c.mu.Lock()
	cur := c.svids[id]
	c.mu.Unlock()
	if cur != nil && now.Before(identity.RenewTime(cur.NotBefore, cur.NotAfter)) {
		return cur, nil
	}
	svid, err := c.src.SVID(ctx, id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.svids[id] = &svid
	c.mu.Unlock()
	return &svid, nil
}

// due returns the SPIFFE IDs whose cached SVID is due for renewal.
func (c *svidCache) due() map[string]bool {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]bool{}
	for id, sv := range c.svids {
		if !now.Before(identity.RenewTime(sv.NotBefore, sv.NotAfter)) {
			out[id] = true
		}
	}
	return out
}
