package main

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/internal/run"
	"github.com/spf13/pflag"
)

// feedFlags configure the controller's authenticated feed API.
type feedFlags struct {
	listen string
}

func (f *feedFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.listen, "feed-listen", ":9443", "HTTPS address of the alert feed (/v1/alerts): node agents post with their SVID (mTLS), "+
		"people and tools read with a bearer token checked by TokenReview and SubjectAccessReview on egressalerts.security.kordon.dev; "+
		"also /v1/quarantines (list, and DELETE /v1/quarantines/NS/NAME to lift, by the same review on quarantines)")
}

// feedAPI is the controller's HTTPS API for people and node agents: the
// alert feed, and whatever else must sit behind the same authentication
// (Mux.Handle(path, Auth.Wrap(h, rule)), as a console's /ui would).
type feedAPI struct {
	Auth *alert.Auth
	Mux  *http.ServeMux
	ln   net.Listener
}

// wireFeedAPI serves the feed on --feed-listen with the controller's
// SVID; client certificates are verified against the CA's current roots
// when sent. Only this listener serves /v1/alerts: in a cluster the feed
// is never open (dev mode serves it on loopback instead).
func (c *controller) wireFeedAPI(context.Context) error {
	nodeID, err := identity.WorkloadID(c.ca.TrustDomain(), c.f.namespace, "kordon-node")
	if err != nil {
		return err
	}
	rev := &kube.AccessReviewer{Client: c.clients.Kube}
	auth, err := alert.NewAuth(alert.AuthConfig{Tokens: rev, Authorizer: rev, NodeAgents: []string{nodeID.String()}, Logger: c.log, Metrics: c.reg})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/alerts", auth.Wrap(c.alerts, alert.FeedRule))
	// The Quarantine objects, for the console's lift button and tools.
	quarantines := auth.Wrap(alert.QuarantineHandler(kube.QuarantineStore{Dynamic: c.clients.Dynamic}), alert.QuarantineRule)
	mux.Handle("/v1/quarantines", quarantines)
	mux.Handle("/v1/quarantines/", quarantines)
	ln, err := net.Listen("tcp", c.f.feed.listen)
	if err != nil {
		return err
	}
	c.feedAPI = &feedAPI{Auth: auth, Mux: mux, ln: tls.NewListener(ln, identity.ServerMTLS(c.ca, c.ctrlID))}
	c.parts.Add("feed api", run.HTTPServer(&http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, c.feedAPI.ln, 0))
	return nil
}
