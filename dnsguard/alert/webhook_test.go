package alert

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestSignStandardWebhooksVector: the Standard Webhooks reference
// libraries' own test vector, so receivers using them verify kordon's
// deliveries.
func TestSignStandardWebhooksVector(t *testing.T) {
	t.Parallel()
	got := Sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

func TestVerifyWebhook(t *testing.T) {
	t.Parallel()
	const secret = "s3cret"
	sent := time.Unix(1_800_000_000, 0)
	body := []byte(`{"kind":"exfiltration"}`)
	signed := func(id string, ts time.Time, sig string) http.Header {
		h := http.Header{}
		h.Set("webhook-id", id)
		h.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
		h.Set("webhook-signature", sig)
		return h
	}
	good := Sign(secret, "msg_1", sent, body)
	for _, tc := range []struct {
		name   string
		header http.Header
		body   []byte
		now    time.Time
		want   error
	}{
		{name: "fresh", header: signed("msg_1", sent, good), body: body, now: sent.Add(time.Minute)},
		{name: "one of several signatures (secret rotation)", header: signed("msg_1", sent, "v1,AAAA "+good), body: body, now: sent},
		// A captured delivery replayed later with a new timestamp: the
		// signature covers the timestamp, so it no longer matches.
		{name: "replay with a modified timestamp", header: signed("msg_1", sent.Add(time.Hour), good), body: body, now: sent.Add(time.Hour), want: ErrWebhookSignature},
		// Replayed unchanged after the tolerance: refused by its age.
		{name: "replay after the tolerance", header: signed("msg_1", sent, good), body: body, now: sent.Add(6 * time.Minute), want: ErrWebhookTimestamp},
		{name: "timestamp from the future", header: signed("msg_1", sent, good), body: body, now: sent.Add(-6 * time.Minute), want: ErrWebhookTimestamp},
		{name: "modified body", header: signed("msg_1", sent, good), body: []byte(`{"kind":"blocked"}`), now: sent, want: ErrWebhookSignature},
		{name: "modified id", header: signed("msg_2", sent, good), body: body, now: sent, want: ErrWebhookSignature},
		{name: "wrong secret", header: signed("msg_1", sent, Sign("other", "msg_1", sent, body)), body: body, now: sent, want: ErrWebhookSignature},
		{name: "old body-only signature", header: signed("msg_1", sent, "sha256=00"), body: body, now: sent, want: ErrWebhookSignature},
		{name: "no headers", header: http.Header{}, body: body, now: sent, want: ErrWebhookHeaders},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if err := VerifyWebhook(secret, tc.header, tc.body, tc.now, 0); !errors.Is(err, tc.want) {
				t.Fatalf("VerifyWebhook = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestWebhookRedeliveryKeepsItsID: a delivery the receiver refused is
// sent again with the same webhook-id (the idempotency key) and a fresh
// timestamp and signature; another alert gets another id.
func TestWebhookRedeliveryKeepsItsID(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var ids []string
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := VerifyWebhook("s3cret", r.Header, body, time.Now(), 0); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		ids = append(ids, r.Header.Get("webhook-id"))
		if len(ids) == 1 {
			http.Error(w, "try later", http.StatusServiceUnavailable)
		}
	}))
	defer recv.Close()
	retry := make(chan time.Time, 1)
	f := newTestFeed(t, t.TempDir(), func(c *Config) {
		c.Webhooks = []WebhookConfig{{Name: "siem", URL: recv.URL, Secret: "s3cret", After: func(time.Duration) <-chan time.Time { return retry }}}
	})
	defer f.Close()
	first, _, err := f.Publish(context.Background(), sample(0))
	if err != nil {
		t.Fatal(err)
	}
	second, _, err := f.Publish(context.Background(), sample(1))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(ids)
		mu.Unlock()
		if n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("receiver got %v", ids)
		}
		select {
		case retry <- time.Now(): // fire the backoff timer
		case <-time.After(10 * time.Millisecond): // polling the receiver, bounded by the deadline
		}
	}
	want1, _ := WebhookID(first)
	want2, _ := WebhookID(second)
	mu.Lock()
	defer mu.Unlock()
	if ids[0] != want1 || ids[1] != want1 || ids[2] != want2 || want1 == want2 {
		t.Fatalf("webhook-ids %v, want [%s %s %s]", ids, want1, want1, want2)
	}
	// The id does not depend on the feed's own numbering.
	renumbered := first
	renumbered.ID = 99
	if id, _ := WebhookID(renumbered); id != want1 {
		t.Fatalf("WebhookID depends on the feed id: %s != %s", id, want1)
	}
}
