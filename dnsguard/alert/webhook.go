package alert

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// WebhookConfig is one receiver of the feed. The node agent's forwarder
// to the controller is a webhook pointed at the controller's
// POST /v1/alerts.
type WebhookConfig struct {
	// Name identifies the cursor file (letters, digits, '-').
	Name string
	URL  string
	// Secret signs each body: X-Kordon-Signature: sha256=<hex HMAC>.
	Secret string
	// Timeout per attempt (default 5s).
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the retry delay (defaults 500ms, 1m);
	// it doubles after each failure.
	MinBackoff, MaxBackoff time.Duration
	// Client overrides the HTTP client.
	Client *http.Client
	// After waits (default time.After); tests replace it.
	After func(time.Duration) <-chan time.Time
	// Sink, when set, receives alerts instead of an HTTP POST to URL (for
	// example Kubernetes Events); it gets the same cursor, order and retries.
	Sink Sink
}

// Sink receives alerts in order; an error makes the feed retry later.
type Sink interface {
	Deliver(ctx context.Context, a Alert) error
}

// webhook delivers alerts in ID order, at least once: the cursor (the last
// ID the receiver acknowledged with a 2xx) is kept in a file, so alerts
// raised while the receiver is down, or while kordon restarts, are sent
// later. Receivers deduplicate by the X-Kordon-Alert-Id header.
type webhook struct {
	feed   *Feed
	cfg    WebhookConfig
	cursor uint64
	path   string
}

func newWebhook(f *Feed, cfg WebhookConfig) (*webhook, error) {
	if cfg.Name == "" || strings.Trim(cfg.Name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != "" {
		return nil, fmt.Errorf("alert: webhook name %q must be letters, digits and '-'", cfg.Name)
	}
	if cfg.URL == "" && cfg.Sink == nil {
		return nil, fmt.Errorf("alert: webhook %s has no URL", cfg.Name)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: cfg.Timeout}
	}
	if cfg.After == nil {
		cfg.After = time.After
	}
	w := &webhook{feed: f, cfg: cfg, path: filepath.Join(f.cfg.Dir, "webhook-"+cfg.Name+".cursor")}
	if b, err := os.ReadFile(w.path); err == nil {
		w.cursor, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("alert: %w", err)
	} else {
		// A new webhook starts from now, not from the whole history.
		w.cursor = f.lastID
		if err := w.saveCursor(); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func (w *webhook) saveCursor() error {
	tmp := w.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatUint(w.cursor, 10)+"\n"), 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, w.path)
}

// Sign returns the signature header value for body.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

func (w *webhook) run(ctx context.Context) {
	wake, cancel := w.feed.subscribe()
	defer cancel()
	backoff := w.cfg.MinBackoff
	for {
		pending := w.feed.List(Filter{After: w.cursor})
		w.feed.metrics.pending.WithLabelValues(w.cfg.Name).Set(float64(len(pending)))
		failed := false
		for _, a := range pending {
			if err := w.deliver(ctx, a); err != nil {
				w.feed.metrics.delivered.WithLabelValues(w.cfg.Name, "error").Inc()
				w.feed.log.Debug("webhook delivery failed", "webhook", w.cfg.Name, "alert_id", a.ID, "error", err)
				failed = true
				break
			}
			w.feed.metrics.delivered.WithLabelValues(w.cfg.Name, "ok").Inc()
			w.cursor = a.ID
			if err := w.saveCursor(); err != nil {
				w.feed.log.Warn("webhook cursor not saved", "webhook", w.cfg.Name, "error", err)
			}
			backoff = w.cfg.MinBackoff
		}
		if failed {
			select {
			case <-ctx.Done():
				return
			case <-w.cfg.After(backoff):
			}
			backoff = min(backoff*2, w.cfg.MaxBackoff)
			continue
		}
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

func (w *webhook) deliver(ctx context.Context, a Alert) error {
	if w.cfg.Sink != nil {
		ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
		defer cancel()
		return w.cfg.Sink.Deliver(ctx, a)
	}
	body, err := json.Marshal(&a)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Kordon-Alert-Id", strconv.FormatUint(a.ID, 10))
	if w.cfg.Secret != "" {
		req.Header.Set("X-Kordon-Signature", Sign(w.cfg.Secret, body))
	}
	resp, err := w.cfg.Client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
	return nil
}
