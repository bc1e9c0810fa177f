package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kordon-dev/kordon/dnsguard/alert"
)

func TestAlertsCommand(t *testing.T) {
	t.Parallel()
	feed, err := alert.NewFeed(alert.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	feed.Publish(context.Background(), alert.Alert{Severity: "high", Kind: alert.KindExfiltration, Namespace: "shop", Pod: "report-worker", Domain: "evil.example", Action: "quarantined", Message: "exfiltration over DNS"})
	feed.Publish(context.Background(), alert.Alert{Severity: "low", Kind: alert.KindBlocked, Namespace: "other", Pod: "x", Domain: "ads.example", Action: "blocked"})
	srv := httptest.NewServer(feed.Handler())
	defer srv.Close()
	run := func(args ...string) string {
		cmd := newRootCmd()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs(append([]string{"alerts", "--server", srv.URL}, args...))
		if err := cmd.Execute(); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	table := run("--namespace", "shop")
	if !strings.Contains(table, "shop/report-worker") || !strings.Contains(table, "evil.example") || strings.Contains(table, "ads.example") {
		t.Fatalf("table:\n%s", table)
	}
	js := run("-o", "json", "--kind", "blocked")
	if strings.Count(js, "\n") != 1 || !strings.Contains(js, `"domain":"ads.example"`) {
		t.Fatalf("json:\n%s", js)
	}
}

// TestAlertsFeedOutputFormats: with --server, -o wide and yaml (formats of
// the cluster read) are refused before any request is made.
func TestAlertsFeedOutputFormats(t *testing.T) {
	t.Parallel()
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		requests.Add(1)
		fmt.Fprintln(w, `{"alerts":[]}`)
	}))
	defer srv.Close()
	for _, tc := range []struct {
		output, wantErr string
	}{
		{output: "wide", wantErr: `-o "wide": with --server, want table or json`},
		{output: "yaml", wantErr: `-o "yaml": with --server, want table or json`},
		{output: "json"},
		{output: "table"},
	} {
		before := requests.Load()
		cmd := newRootCmd()
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		cmd.SetArgs([]string{"alerts", "--server", srv.URL, "-o", tc.output})
		err := cmd.Execute()
		made := requests.Load() - before
		if tc.wantErr == "" {
			if err != nil || made != 1 {
				t.Errorf("-o %s: %v after %d requests, want success after 1", tc.output, err, made)
			}
			continue
		}
		if err == nil || err.Error() != tc.wantErr {
			t.Errorf("-o %s: error %v, want %q", tc.output, err, tc.wantErr)
		}
		if made != 0 {
			t.Errorf("-o %s: %d requests before refusing", tc.output, made)
		}
	}
}
