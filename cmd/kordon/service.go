package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/kordon-dev/kordon/internal/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// service is what kordon controller and kordon node share: the logger
// (--log-level, --log-format), the metrics registry, the HTTP mux (/healthz, /readyz once
// ready is set, /metrics, and what the wiring mounts), the parts that run
// together (internal/run) and the closers that release what they used.
type service struct {
	log    *slog.Logger
	reg    *prometheus.Registry
	mux    *http.ServeMux
	ready  atomic.Bool
	httpLn net.Listener

	parts run.Group
	// closers run in reverse order after every part has returned.
	closers []func() error
}

func newService(log *slog.Logger) *service {
	s := &service{log: log, reg: prometheus.NewRegistry()}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.mux = serviceMux(s.reg, &s.ready)
	return s
}

// wire runs each wiring step in order; the first error stops.
func (s *service) wire(ctx context.Context, steps []func(context.Context) error) error {
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return err
		}
	}
	return nil
}

// listenHTTP binds addr and adds the HTTP server of mux to the parts.
func (s *service) listenHTTP(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.httpLn = ln
	s.parts.Add("http", run.HTTPServer(&http.Server{Handler: s.mux, ReadHeaderTimeout: 5 * time.Second}, ln, 0))
	return nil
}

// close runs the closers, last added first.
func (s *service) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i](); err != nil {
			s.log.Warn("close failed", "error", err)
		}
	}
}

// serviceMux serves /metrics from reg, /healthz, and /readyz once ready
// is set; callers add their own APIs.
func serviceMux(reg *prometheus.Registry, ready *atomic.Bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
