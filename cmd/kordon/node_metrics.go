package main

import (
	"context"
	"net/http"
	"time"

	"github.com/kordon-dev/kordon/internal/run"
)

// wireMetrics serves /metrics, /healthz and /readyz only on
// --metrics-listen, for Prometheus to scrape the node agent on the node's
// address (the chart's node.metricsPort). The agent's other APIs (alerts,
// quarantines) stay on --http-listen, loopback by default.
func (n *nodeAgent) wireMetrics(context.Context) error {
	if n.f.metricsListen == "" {
		return nil
	}
	ln, err := n.listen(n.f.metricsListen)
	if err != nil {
		return err
	}
	n.metricsLn = ln
	n.parts.Add("metrics http", run.HTTPServer(&http.Server{Handler: serviceMux(n.reg, n.isReady), ReadHeaderTimeout: 5 * time.Second}, ln, 0))
	return nil
}
