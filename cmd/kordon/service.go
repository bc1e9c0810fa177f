package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/kordon-dev/kordon/internal/handover"
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
	// member is set by a process that hands over to a successor beside
	// it (kordon node): its listeners bind with SO_REUSEPORT and /readyz
	// answers 503 once a newer generation runs (internal/handover).
	member *handover.Member

	parts run.Group
	// closers run in reverse order after every part has returned.
	closers []func() error
}

func newService(log *slog.Logger) *service {
	s := &service{log: log, reg: prometheus.NewRegistry()}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.mux = serviceMux(s.reg, s.isReady)
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
	ln, err := s.listen(addr)
	if err != nil {
		return err
	}
	s.httpLn = ln
	s.parts.Add("http", run.HTTPServer(&http.Server{Handler: s.mux, ReadHeaderTimeout: 5 * time.Second}, ln, 0))
	return nil
}

// listen binds a TCP address, with SO_REUSEPORT when the process hands
// over to a successor.
func (s *service) listen(addr string) (net.Listener, error) {
	if s.member != nil {
		return handover.ListenTCP(addr)
	}
	return net.Listen("tcp", addr)
}

// isReady is what /readyz answers: ready is set and no newer generation
// of this agent runs beside it (with SO_REUSEPORT either may answer a
// probe, so a 200 must mean the newest agent is ready).
func (s *service) isReady() bool { return s.ready.Load() && !s.member.Superseded() }

// close runs the closers, last added first.
func (s *service) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i](); err != nil {
			s.log.Warn("close failed", "error", err)
		}
	}
}

// serviceMux serves /metrics from reg, /healthz, and /readyz while ready
// reports true; callers add their own APIs.
func serviceMux(reg *prometheus.Registry, ready func() bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
