package console

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestHandler serves the embedded page, its config and the security
// headers; the browser test (cmd/kordon TestWebConsoleInChromium) drives
// the page itself.
func TestHandler(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	h, err := Handler(Config{Mode: "dev", Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(Prefix, h)
	mux.Handle("/ui", h)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	cases := []struct {
		path, contentType, body string
		code                    int
	}{
		{path: "/ui", code: http.StatusMovedPermanently},
		{path: "/ui/", code: 200, contentType: "text/html; charset=utf-8", body: `<script src="app.js" defer></script>`},
		{path: "/ui/app.js", code: 200, contentType: "text/javascript; charset=utf-8", body: `"/v1/alerts?follow=1`},
		{path: "/ui/style.css", code: 200, contentType: "text/css; charset=utf-8", body: ":root"},
		{path: "/ui/config.json", code: 200, contentType: "application/json", body: `{"mode":"dev"}`},
		{path: "/ui/nope.js", code: 404},
	}
	for _, c := range cases {
		resp, err := noRedirect.Get(srv.URL + c.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || (c.contentType != "" && resp.Header.Get("Content-Type") != c.contentType) || !strings.Contains(string(b), c.body) {
			t.Errorf("%s: %d %q %.80q; want %d %q with %q", c.path, resp.StatusCode, resp.Header.Get("Content-Type"), b, c.code, c.contentType, c.body)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("%s: Content-Security-Policy %q", c.path, csp)
		}
	}
	want := `
# HELP kordon_console_requests_total Requests for the web console's files, by response code.
# TYPE kordon_console_requests_total counter
kordon_console_requests_total{code="200"} 4
kordon_console_requests_total{code="301"} 1
kordon_console_requests_total{code="404"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "kordon_console_requests_total"); err != nil {
		t.Error(err)
	}
}
