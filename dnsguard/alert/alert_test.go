package alert

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func newTestFeed(t *testing.T, dir string, mutate func(*Config)) *Feed {
	t.Helper()
	cfg := Config{Dir: dir}
	if mutate != nil {
		mutate(&cfg)
	}
	f, err := NewFeed(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func sample(i int) Alert {
	return Alert{Severity: "high", Kind: KindExfiltration, Namespace: "shop", Pod: fmt.Sprintf("worker-%d", i), Domain: "evil.example", Action: "alerted"}
}

func TestRestartLosesNothingAndTruncatesTornTail(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := newTestFeed(t, dir, nil)
	for i := 0; i < 20; i++ {
		if _, ok, err := f.Publish(context.Background(), sample(i)); err != nil || !ok {
			t.Fatal(ok, err)
		}
	}
	// Simulate a crash: no Close, and a half-written record at the end.
	seg, _ := filepath.Glob(filepath.Join(dir, "alerts-*.jsonl"))
	fh, err := os.OpenFile(seg[len(seg)-1], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteString(`{"id":21,"time":"2026-`)
	fh.Close()
	g := newTestFeed(t, dir, nil)
	defer g.Close()
	got := g.List(Filter{})
	if len(got) != 20 || got[0].ID != 1 || got[19].ID != 20 {
		t.Fatalf("recovered %d alerts", len(got))
	}
	a, ok, err := g.Publish(context.Background(), sample(99))
	if err != nil || !ok || a.ID != 21 {
		t.Fatalf("next id %d %v %v", a.ID, ok, err)
	}
	f.Close()
}

func TestCooldownAndFilters(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	f := newTestFeed(t, t.TempDir(), func(c *Config) { c.Now = clock; c.Cooldown = time.Minute })
	defer f.Close()
	ctx := context.Background()
	if _, ok, _ := f.Publish(ctx, sample(1)); !ok {
		t.Fatal("first alert suppressed")
	}
	if _, ok, _ := f.Publish(ctx, sample(1)); ok {
		t.Fatal("repeat within cooldown not suppressed")
	}
	other := sample(1)
	other.Kind = KindTunneling
	if _, ok, _ := f.Publish(ctx, other); !ok {
		t.Fatal("another kind was suppressed")
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	if _, ok, _ := f.Publish(ctx, sample(1)); !ok {
		t.Fatal("suppressed after the cooldown")
	}
	if n := len(f.List(Filter{Kind: KindTunneling})); n != 1 {
		t.Fatalf("kind filter: %d", n)
	}
	if n := len(f.List(Filter{Since: now.Add(-time.Minute)})); n != 1 {
		t.Fatalf("since filter: %d", n)
	}
	if n := len(f.List(Filter{Namespace: "other"})); n != 0 {
		t.Fatalf("namespace filter: %d", n)
	}
}

// TestWebhookDownThenUpGetsEveryAlertOnce: alerts raised while the
// receiver is down (and across a kordon restart) arrive later, in order,
// each exactly once, signed.
func TestWebhookDownThenUpGetsEveryAlertOnce(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []uint64
	recv := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := VerifyWebhook("s3cret", r.Header, body, time.Now(), 0); err != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var a Alert
		json.Unmarshal(body, &a)
		mu.Lock()
		got = append(got, a.ID)
		mu.Unlock()
	})
	// Reserve an address, then keep it closed: the receiver is down.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	retry := make(chan time.Time)
	hook := WebhookConfig{Name: "siem", URL: "http://" + addr + "/hook", Secret: "s3cret", Timeout: time.Second,
		After: func(time.Duration) <-chan time.Time { return retry }}
	dir := t.TempDir()
	f := newTestFeed(t, dir, func(c *Config) { c.Webhooks = []WebhookConfig{hook} })
	for i := 0; i < 5; i++ {
		f.Publish(context.Background(), sample(i))
	}
	f.Close() // kordon restarts while the receiver is still down
	f = newTestFeed(t, dir, func(c *Config) { c.Webhooks = []WebhookConfig{hook} })
	defer f.Close()
	for i := 5; i < 8; i++ {
		f.Publish(context.Background(), sample(i))
	}
	// The receiver comes back on the same address.
	ln, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("address %s was taken meanwhile: %v", addr, err)
	}
	srv := &http.Server{Handler: recv}
	go srv.Serve(ln)
	defer srv.Close()
	deadline := time.After(20 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 8 {
			break
		}
		select {
		case retry <- time.Now(): // fire the backoff timer
		case <-deadline:
			t.Fatalf("receiver got %v", got)
		case <-time.After(10 * time.Millisecond): // the webhook may be idle, not waiting
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i, id := range got {
		if id != uint64(i+1) {
			t.Fatalf("deliveries out of order or repeated: %v", got)
		}
	}
}

func TestHTTPListAndFollow(t *testing.T) {
	t.Parallel()
	f := newTestFeed(t, t.TempDir(), nil)
	defer f.Close()
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()
	for i := 0; i < 3; i++ {
		f.Publish(context.Background(), sample(i))
	}
	resp, err := http.Get(srv.URL + "/v1/alerts?namespace=shop&limit=2")
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Alerts []Alert }
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if len(body.Alerts) != 2 || body.Alerts[1].ID != 3 {
		t.Fatalf("list: %+v", body.Alerts)
	}
	if resp, _ := http.Get(srv.URL + "/v1/alerts?since=yesterday"); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad since: %d", resp.StatusCode)
	}
	// Follow from after id 2: gets 3, then a newly published 4.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/alerts?follow=1", nil)
	req.Header.Set("Last-Event-ID", "2")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err = http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var ids []string
	for sc.Scan() {
		if id, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
			ids = append(ids, id)
			if len(ids) == 1 {
				f.Publish(context.Background(), sample(9))
			}
			if len(ids) == 2 {
				break
			}
		}
	}
	if strings.Join(ids, ",") != "3,4" {
		t.Fatalf("stream ids %v", ids)
	}
	// Ingestion from a node agent.
	post, _ := http.Post(srv.URL+"/v1/alerts", "application/json", strings.NewReader(`{"severity":"high","kind":"tunneling","node":"node-b","namespace":"shop","pod":"x","domain":"t.example","action":"alerted"}`))
	if post.StatusCode != http.StatusCreated {
		t.Fatalf("ingest: %d", post.StatusCode)
	}
	bad, _ := http.Post(srv.URL+"/v1/alerts", "application/json", strings.NewReader(`{"kind":"nope"}`))
	if bad.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad ingest: %d", bad.StatusCode)
	}
}
