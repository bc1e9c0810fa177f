package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestNodeMetricsListen: the node agent's --metrics-listen serves the
// registry, health and readiness, and none of the agent's other APIs.
func TestNodeMetricsListen(t *testing.T) {
	t.Parallel()
	n := &nodeAgent{service: newService(slog.New(slog.DiscardHandler)), f: nodeFlags{metricsListen: "127.0.0.1:0"}}
	c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kordon", Name: "test_total", Help: "A test counter."})
	n.reg.MustRegister(c)
	c.Add(7)
	n.mux.HandleFunc("/v1/quarantines", func(http.ResponseWriter, *http.Request) {})
	if err := n.wireMetrics(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.parts.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("metrics server did not stop")
		}
	}()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + n.metricsLn.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "kordon_test_total 7") {
		t.Errorf("/metrics: %d %q", code, body)
	}
	if code, _ := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before ready: %d", code)
	}
	n.ready.Store(true)
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz when ready: %d", code)
	}
	for _, p := range []string{"/v1/quarantines", "/v1/alerts"} {
		if code, _ := get(p); code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, code)
		}
	}
}
