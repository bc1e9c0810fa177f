package main

import (
	"context"
	"net/http"
	"strings"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/spf13/pflag"
)

func registerNodeAuthFlag(fl *pflag.FlagSet, on *bool) {
	fl.BoolVar(on, "http-auth", true, "require a bearer token (TokenReview + SubjectAccessReview on egressalerts and quarantines.security.kordon.dev) "+
		"on --http-listen's /v1/alerts, /v1/quarantines and /v1/egress/quarantines: hostNetwork pods share the node's loopback")
}

// wireAPIAuth puts the node agent's alert and quarantine routes behind
// the feed's authentication (the controller's rules: reading alerts needs
// list on egressalerts, lifting a quarantine delete on quarantines);
// /healthz, /readyz and /metrics stay open. It runs before wireHTTP,
// which serves n.mux.
func (n *nodeAgent) wireAPIAuth(context.Context) error {
	if !n.f.httpAuth {
		return nil
	}
	rev := &kube.AccessReviewer{Client: n.clients.Kube}
	auth, err := alert.NewAuth(alert.AuthConfig{Tokens: rev, Authorizer: rev, Logger: n.log, Metrics: n.reg})
	if err != nil {
		return err
	}
	inner := n.mux
	outer := http.NewServeMux()
	outer.Handle("/", inner)
	outer.Handle("/v1/alerts", auth.Wrap(inner, alert.FeedRule))
	outer.Handle("/v1/quarantines", auth.Wrap(inner, alert.QuarantineRule))
	outer.Handle("/v1/quarantines/", auth.Wrap(inner, alert.QuarantineRule))
	outer.Handle("/v1/egress/quarantines", auth.Wrap(inner, egressQuarantineRule))
	outer.Handle("/v1/egress/quarantines/", auth.Wrap(inner, egressQuarantineRule))
	n.mux = outer
	return nil
}

// egressQuarantineRule: the firewall's address quarantines are this
// node's, keyed by addresses, not namespaced objects: reading them needs
// list on quarantines cluster-wide, changing them create or delete.
func egressQuarantineRule(r *http.Request) (alert.Access, error) {
	verb := map[string]string{http.MethodGet: "list", http.MethodHead: "list", http.MethodPost: "create", http.MethodDelete: "delete"}[r.Method]
	if verb == "" || verb != "list" && !strings.HasPrefix(r.URL.Path, "/v1/egress/quarantines/") {
		return alert.Access{NodeAgent: true}, nil // nothing a token may do
	}
	return alert.Access{Verb: verb, Resource: alert.ResourceQuarantines}, nil
}
