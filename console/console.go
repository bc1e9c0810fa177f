// Package console is kordon's web console: one page, served at /ui, that
// shows the live alert feed, the quarantines (with a lift button), each
// workload's egress (names resolved and blocked, top destinations by
// bytes, blocked direct-egress attempts) and a policy explain form.
//
// The package owns only the user interface: plain HTML, CSS and
// JavaScript embedded in the binary (no CDN, no build step, works
// offline). The page reads and acts through the HTTP APIs kordon already
// serves beside it (/v1/alerts, /v1/quarantines, /v1/egress/quarantines,
// /v1/dns/summary, /v1/egress/flows/summary, /v1/policy/explain), so the
// same page works against kordon dev and the controller; an API a server
// does not offer is shown as such.
package console

import (
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

//go:embed assets
var assets embed.FS

// Prefix is where Handler expects to be mounted.
const Prefix = "/ui/"

// Config configures the console.
type Config struct {
	// Mode names the server in the page's header ("dev", "controller").
	Mode string
	// Metrics registers kordon_console_requests_total; nil skips it.
	Metrics prometheus.Registerer
}

// Handler serves the console under Prefix ("/ui/", and "/ui" redirects
// there): the embedded files and GET /ui/config.json ({"mode": ...}).
// Mount it with mux.Handle("/ui/", h) and mux.Handle("/ui", h).
func Handler(cfg Config) (http.Handler, error) {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		return nil, err
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "console", Name: "requests_total",
		Help: "Requests for the web console's files, by response code."}, []string{"code"})
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(requests); err != nil {
			return nil, err
		}
	}
	conf, err := json.Marshal(map[string]string{"mode": cfg.Mode})
	if err != nil {
		return nil, err
	}
	files := http.StripPrefix(strings.TrimSuffix(Prefix, "/"), http.FileServerFS(sub))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
	})
	mux.HandleFunc("GET /ui/config.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(conf)
	})
	mux.Handle("GET /ui/", files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Why: the page renders alert fields an attacker chooses (query
		// names, pod names). It builds the DOM with textContent only, and
		// this policy also refuses inline and foreign scripts, so a name
		// can never run as code; framing is refused against clickjacking
		// of the lift button.
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		mux.ServeHTTP(rec, r)
		requests.WithLabelValues(strconv.Itoa(rec.code)).Inc()
	}), nil
}

// statusRecorder remembers the response code for the metric.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}
