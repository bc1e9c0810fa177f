package main

import (
	"context"
	"io"
	"net/http"
	"sync/atomic"

	"github.com/kordon-dev/kordon/console"
	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/egress/flowlog"
	"github.com/kordon-dev/kordon/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// webConsole is the web console at /ui and the read APIs it needs that
// belong to no other route: the query-log and flow-log summaries (fed by
// teeing those logs) and policy explain against the policies in force.
type webConsole struct {
	ui       http.Handler
	queries  *dnsguard.QuerySummary
	flows    *flowlog.Summary
	flowsOn  bool // a flow log feeds flows
	policies atomic.Pointer[policy.Set]
	opts     policy.CompileOptions
}

// newWebConsole builds the console for mode ("dev", "controller");
// withLogs adds the query and flow summaries (a process that writes those
// logs).
func newWebConsole(mode string, withLogs bool, opts policy.CompileOptions, reg prometheus.Registerer) (*webConsole, error) {
	ui, err := console.Handler(console.Config{Mode: mode, Metrics: reg})
	if err != nil {
		return nil, err
	}
	c := &webConsole{ui: ui, opts: opts}
	if withLogs {
		if c.queries, err = dnsguard.NewQuerySummary(dnsguard.SummaryConfig{Metrics: reg}); err != nil {
			return nil, err
		}
		if c.flows, err = flowlog.NewSummary(flowlog.SummaryConfig{Metrics: reg}); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// tee returns w with s also receiving what is written (s alone when w is nil).
func tee(w, s io.Writer) io.Writer {
	if w == nil {
		return s
	}
	return io.MultiWriter(w, s)
}

// queryLog is the query log writer with the console's summary reading it.
func (c *webConsole) queryLog(w io.Writer) io.Writer {
	if c.queries == nil {
		return w
	}
	return tee(w, lineSink(c.queries.AddLine))
}

// flowSummary is the writer the flow log also goes to (nil without
// logs); asking for it serves /v1/egress/flows/summary.
func (c *webConsole) flowSummary() io.Writer {
	if c.flows == nil {
		return nil
	}
	c.flowsOn = true
	return lineSink(c.flows.AddLine)
}

// setPolicies records the policies in force, for explain.
func (c *webConsole) setPolicies(s *policy.Set) { c.policies.Store(s) }

// mount serves the console and its APIs on mux. With auth (cluster
// mode, the feed's authentication) the APIs need a bearer token whose
// user RBAC lets read what they show; the page's own files are served to
// anyone: they hold no data, and a browser cannot send a token when it
// navigates (the page sends the one typed into it with every API call).
func (c *webConsole) mount(mux *http.ServeMux, auth *alert.Auth) {
	guard := func(h http.Handler, _ alert.Rule) http.Handler { return h }
	if auth != nil {
		guard = auth.Wrap
	}
	mux.Handle(console.Prefix, c.ui)
	mux.Handle("/ui", c.ui)
	mux.Handle("/v1/policy/explain", guard(policy.ExplainHandler(c.policies.Load, c.opts), explainRule))
	if c.queries != nil {
		mux.Handle("/v1/dns/summary", guard(c.queries.Handler(), summaryRule))
	}
	if c.flowsOn {
		mux.Handle("/v1/egress/flows/summary", guard(c.flows.Handler(), summaryRule))
	}
}

// explainRule: explain evaluates the AuthorizationPolicies of a namespace
// and of the root namespace, so it needs list on them cluster-wide.
func explainRule(*http.Request) (alert.Access, error) {
	return alert.Access{Verb: "list", Resource: "authorizationpolicies"}, nil
}

// summaryRule: the summaries tell what workloads resolved and reached,
// as the alerts do; reading them needs what reading the feed needs.
func summaryRule(r *http.Request) (alert.Access, error) {
	acc, err := alert.FeedRule(r)
	acc.Verb = "list"
	return acc, err
}

// wireConsole serves the web console at /ui and policy explain against
// the policies the controller watches (the feed and quarantine views use
// the routes the other steps mount).
func (c *controller) wireConsole(context.Context) error {
	ui, err := newWebConsole("controller", false, policy.CompileOptions{RootNamespace: c.f.rootNamespace, TrustDomain: c.f.trustDomain}, c.reg)
	if err != nil {
		return err
	}
	c.console = ui
	// On the feed's HTTPS listener, behind its authentication (wireFeedAPI
	// runs first); never on the plain --http-listen.
	ui.mount(c.feedAPI.Mux, c.feedAPI.Auth)
	return nil
}
