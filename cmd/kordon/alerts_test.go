package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
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
