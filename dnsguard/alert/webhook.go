package alert

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
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
	// Secret signs each delivery as Standard Webhooks do (webhook-id,
	// webhook-timestamp, webhook-signature: v1,<base64 HMAC-SHA256 of
	// id.timestamp.body>). A "whsec_<base64>" secret is the key's base64,
	// as the Standard Webhooks libraries expect; any other string is the
	// key itself.
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
// later. Receivers deduplicate by the webhook-id header (WebhookID).
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

// WebhookID is the webhook-id of a's deliveries, the receivers'
// idempotency key: a hash of the alert without its feed-local number, so
// a redelivery (after a failed attempt, a restart, or from another
// replica's feed holding the same alert) carries the same id.
func WebhookID(a Alert) (string, error) {
	a.ID = 0
	b, err := json.Marshal(&a)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return "msg_" + hex.EncodeToString(sum[:16]), nil
}

func webhookKey(secret string) []byte {
	if b64, ok := strings.CutPrefix(secret, "whsec_"); ok {
		if key, err := base64.StdEncoding.DecodeString(b64); err == nil {
			return key
		}
	}
	return []byte(secret)
}

// Sign returns the webhook-signature header value ("v1,<base64>") of a
// delivery: HMAC-SHA256 over id + "." + timestamp + "." + body, with the
// timestamp in Unix seconds, as Standard Webhooks specify.
func Sign(secret, id string, timestamp time.Time, body []byte) string {
	m := hmac.New(sha256.New, webhookKey(secret))
	m.Write([]byte(id + "." + strconv.FormatInt(timestamp.Unix(), 10) + "."))
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// Webhook verification errors.
var (
	ErrWebhookHeaders   = errors.New("alert: webhook-id, webhook-timestamp or webhook-signature missing or malformed")
	ErrWebhookTimestamp = errors.New("alert: webhook-timestamp outside the tolerance")
	ErrWebhookSignature = errors.New("alert: no matching webhook-signature")
)

// DefaultWebhookTolerance is how far a webhook-timestamp may be from
// the receiver's clock (the Standard Webhooks default).
const DefaultWebhookTolerance = 5 * time.Minute

// VerifyWebhook checks a delivery as a receiver does: the timestamp
// within tolerance of now (0: DefaultWebhookTolerance), so that a
// captured delivery cannot be replayed later, and one of the
// space-separated v1 signatures matching id, timestamp and body.
func VerifyWebhook(secret string, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultWebhookTolerance
	}
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if id == "" || sigs == "" || err != nil {
		return ErrWebhookHeaders
	}
	t := time.Unix(sec, 0)
	if t.Before(now.Add(-tolerance)) || t.After(now.Add(tolerance)) {
		return ErrWebhookTimestamp
	}
	want := Sign(secret, id, t, body)
	for _, s := range strings.Fields(sigs) {
		if hmac.Equal([]byte(s), []byte(want)) {
			return nil
		}
	}
	return ErrWebhookSignature
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
	return Post(ctx, w.cfg, a, w.feed.cfg.Now())
}

// Post delivers a to cfg.URL once, as the feed's webhooks do (headers,
// signature at now, cfg.Timeout and cfg.Client, when set); the
// controller's leader delivers cluster alerts with it.
func Post(ctx context.Context, cfg WebhookConfig, a Alert, now time.Time) error {
	body, err := json.Marshal(&a)
	if err != nil {
		return err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = http.DefaultClient
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	id, err := WebhookID(a)
	if err != nil {
		return err
	}
	req.Header.Set("X-Kordon-Alert-Id", strconv.FormatUint(a.ID, 10))
	req.Header.Set("webhook-id", id)
	// Each attempt is signed at its own time: a retry an hour later is
	// fresh, a replay of a captured attempt is not.
	req.Header.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
	if cfg.Secret != "" {
		req.Header.Set("webhook-signature", Sign(cfg.Secret, id, now, body))
	}
	resp, err := cfg.Client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
	return nil
}
