package alert

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

// ClusterQuarantine is one Quarantine object of the cluster as the feed
// serves it (GET /v1/quarantines on the controller): ID is
// namespace/name, the path that lifts it; Domain joins the domains and
// addresses it blocks, as dev mode's one domain per quarantine reads.
type ClusterQuarantine struct {
	ID        string    `json:"id"`
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	Workload  string    `json:"workload"`
	Domain    string    `json:"domain"`
	Domains   []string  `json:"domains,omitempty"`
	Addresses []string  `json:"addresses,omitempty"`
	Since     time.Time `json:"since"`
	Reason    string    `json:"reason,omitempty"`
	Pod       string    `json:"pod,omitempty"`
	Node      string    `json:"node,omitempty"`
	Alert     string    `json:"alert,omitempty"`
}

// ErrNoQuarantine is what QuarantineStore.Lift returns for a quarantine
// that does not exist (404).
var ErrNoQuarantine = errors.New("no such quarantine")

// QuarantineStore lists and lifts the cluster's quarantines
// (internal/kube: the Quarantine objects).
type QuarantineStore interface {
	// List returns the quarantines of namespace ("" for every namespace).
	List(ctx context.Context, namespace string) ([]ClusterQuarantine, error)
	// Lift deletes namespace/name; ErrNoQuarantine when it does not exist.
	Lift(ctx context.Context, namespace, name string) error
}

// QuarantineHandler serves, behind Auth.Wrap(h, QuarantineRule):
//
//	GET    /v1/quarantines?namespace=NS   {"quarantines": [...]} of NS (every namespace without it)
//	DELETE /v1/quarantines/{namespace}/{name}   204, 404 when absent
//
// The namespace listed is the one QuarantineRule authorized, so the
// response holds only what the caller may read.
func QuarantineHandler(s QuarantineStore) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/quarantines", func(w http.ResponseWriter, r *http.Request) {
		qs, err := s.List(r.Context(), r.URL.Query().Get("namespace"))
		if err != nil {
			writeJSONError(w, http.StatusBadGateway, err.Error())
			return
		}
		if qs == nil {
			qs = []ClusterQuarantine{}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"quarantines": qs})
	})
	mux.HandleFunc("DELETE /v1/quarantines/{namespace}/{name}", func(w http.ResponseWriter, r *http.Request) {
		err := s.Lift(r.Context(), r.PathValue("namespace"), r.PathValue("name"))
		switch {
		case errors.Is(err, ErrNoQuarantine):
			writeJSONError(w, http.StatusNotFound, err.Error())
		case err != nil:
			writeJSONError(w, http.StatusBadGateway, err.Error())
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	return mux
}
