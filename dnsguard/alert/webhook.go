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

// webhook is the HTTP POST of one WebhookConfig, delivered through a
// durableSink (cursor file webhook-<name>.cursor). Receivers deduplicate
// by the webhook-id header (WebhookID).
type webhook struct {
	feed *Feed
	cfg  WebhookConfig
}

func newWebhook(f *Feed, cfg WebhookConfig) (*durableSink, error) {
	if err := checkSinkName("webhook", cfg.Name); err != nil {
		return nil, err
	}
	if cfg.URL == "" && cfg.Sink == nil {
		return nil, fmt.Errorf("alert: webhook %s has no URL", cfg.Name)
	}
	retry := Retry{Timeout: cfg.Timeout, MinBackoff: cfg.MinBackoff, MaxBackoff: cfg.MaxBackoff, After: cfg.After}
	retry.defaults()
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: retry.Timeout}
	}
	deliver := (&webhook{feed: f, cfg: cfg}).deliver
	if cfg.Sink != nil {
		deliver = cfg.Sink.Deliver
	}
	return newDurableSink(f, cfg.Name, "webhook-"+cfg.Name+".cursor", retry, deliver)
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

func (w *webhook) deliver(ctx context.Context, a Alert) error {
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
