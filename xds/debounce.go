package xds

import (
	"context"
	"sync"
	"time"
)

// debouncer owns the set of nodes waiting for a rebuild and the timing of
// pushes: a batch is handed to push once no node was marked for quiet, or
// max after its first mark, as istiod debounces.
type debouncer struct {
	quiet, max time.Duration

	mu    sync.Mutex
	dirty map[string]bool
	kick  chan struct{}
}

func newDebouncer(quiet, max time.Duration) *debouncer {
	return &debouncer{quiet: quiet, max: max, dirty: map[string]bool{}, kick: make(chan struct{}, 1)}
}

// mark adds node IDs to the next batch.
func (d *debouncer) mark(ids ...string) {
	if len(ids) == 0 {
		return
	}
	d.mu.Lock()
	for _, id := range ids {
		d.dirty[id] = true
	}
	d.mu.Unlock()
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// take returns and clears the batch.
func (d *debouncer) take() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	ids := make([]string, 0, len(d.dirty))
	for id := range d.dirty {
		ids = append(ids, id)
	}
	d.dirty = map[string]bool{}
	return ids
}

// run calls push with each batch until ctx is done. other is served in
// the same loop (the registry's change signal, the SVID renewal tick):
// its handler may mark nodes.
func (d *debouncer) run(ctx context.Context, push func([]string), other <-chan struct{}, onOther func(), tick <-chan time.Time, onTick func()) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var first time.Time
	pending := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-other:
			onOther()
		case <-tick:
			onTick()
		case <-d.kick:
			now := time.Now()
			if !pending {
				pending = true
				first = now
			}
			delay := d.quiet
			if deadline := first.Add(d.max); now.Add(delay).After(deadline) {
				delay = max(deadline.Sub(now), 0)
			}
			timer.Reset(delay)
		case <-timer.C:
			pending = false
			if ids := d.take(); len(ids) > 0 {
				push(ids)
			}
		}
	}
}
