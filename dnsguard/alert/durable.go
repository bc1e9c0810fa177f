package alert

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Retry bounds one durable sink's attempts: each delivery gets Timeout
// (default 5s); after a failure the sink waits MinBackoff (default 500ms),
// doubling up to MaxBackoff (default 1m), and tries the same alert again.
type Retry struct {
	Timeout                time.Duration
	MinBackoff, MaxBackoff time.Duration
	// After waits (default time.After); tests replace it.
	After func(time.Duration) <-chan time.Time
}

func (r *Retry) defaults() {
	if r.Timeout <= 0 {
		r.Timeout = 5 * time.Second
	}
	if r.MinBackoff <= 0 {
		r.MinBackoff = 500 * time.Millisecond
	}
	if r.MaxBackoff <= 0 {
		r.MaxBackoff = time.Minute
	}
	if r.After == nil {
		r.After = time.After
	}
}

// durableSink is what every receiver of the feed (webhooks, Kubernetes
// Events, syslog) is delivered through: alerts in ID order, at least
// once. The cursor (the last ID the receiver acknowledged) is kept in a
// file beside the log, so alerts raised while the receiver is down, or
// while kordon restarts, are sent later; a failed delivery is retried,
// with backoff, until it succeeds.
type durableSink struct {
	feed    *Feed
	name    string // metrics label and log attribute
	path    string // cursor file
	cursor  uint64
	retry   Retry
	deliver func(ctx context.Context, a Alert) error
	// stop, if set, releases the receiver's resources when run returns.
	stop func()
}

// checkSinkName validates a sink's name, which names its cursor file.
func checkSinkName(kind, name string) error {
	if name == "" || strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
		return fmt.Errorf("alert: %s name %q must be letters, digits and '-'", kind, name)
	}
	return nil
}

// newDurableSink loads the cursor in file (in the feed's directory); a new
// sink starts from now, not from the whole history.
func newDurableSink(f *Feed, name, file string, retry Retry, deliver func(context.Context, Alert) error) (*durableSink, error) {
	retry.defaults()
	d := &durableSink{feed: f, name: name, path: filepath.Join(f.cfg.Dir, file), retry: retry, deliver: deliver}
	if b, err := os.ReadFile(d.path); err == nil {
		d.cursor, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("alert: %w", err)
	} else {
		d.cursor = f.lastID
		if err := d.saveCursor(); err != nil {
			return nil, err
		}
	}
	return d, nil
}

func (d *durableSink) saveCursor() error {
	tmp := d.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatUint(d.cursor, 10)+"\n"), 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, d.path)
}

func (d *durableSink) attempt(ctx context.Context, a Alert) error {
	ctx, cancel := context.WithTimeout(ctx, d.retry.Timeout)
	defer cancel()
	return d.deliver(ctx, a)
}

func (d *durableSink) run(ctx context.Context) {
	wake, cancel := d.feed.subscribe()
	defer cancel()
	if d.stop != nil {
		defer d.stop()
	}
	backoff := d.retry.MinBackoff
	for {
		pending := d.feed.List(Filter{After: d.cursor})
		d.feed.metrics.pending.WithLabelValues(d.name).Set(float64(len(pending)))
		failed := false
		for _, a := range pending {
			if err := d.attempt(ctx, a); err != nil {
				d.feed.metrics.delivered.WithLabelValues(d.name, "error").Inc()
				d.feed.log.Debug("alert delivery failed", "sink", d.name, "alert_id", a.ID, "error", err)
				failed = true
				break
			}
			d.feed.metrics.delivered.WithLabelValues(d.name, "ok").Inc()
			d.cursor = a.ID
			if err := d.saveCursor(); err != nil {
				d.feed.log.Warn("alert sink cursor not saved", "sink", d.name, "error", err)
			}
			backoff = d.retry.MinBackoff
		}
		if failed {
			select {
			case <-ctx.Done():
				return
			case <-d.retry.After(backoff):
			}
			backoff = min(backoff*2, d.retry.MaxBackoff)
			continue
		}
		d.feed.metrics.pending.WithLabelValues(d.name).Set(0)
		select {
		case <-ctx.Done():
			return
		case _, ok := <-wake:
			if !ok {
				return
			}
		}
	}
}
