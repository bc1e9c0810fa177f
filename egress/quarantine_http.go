package egress

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"slices"
)

// AddrQuarantine is one destination address blocked for one workload
// address (detection action Quarantine on direct egress, or an operator).
type AddrQuarantine struct {
	Client      netip.Addr `json:"client"`
	Destination netip.Addr `json:"destination"`
}

// Quarantines lists the quarantined (client, destination) pairs, sorted.
func (f *Firewall) Quarantines() []AddrQuarantine {
	f.mu.Lock()
	out := make([]AddrQuarantine, 0, len(f.quar))
	for k := range f.quar {
		out = append(out, AddrQuarantine{Client: k[0], Destination: k[1]})
	}
	f.mu.Unlock()
	slices.SortFunc(out, func(a, b AddrQuarantine) int {
		if c := a.Client.Compare(b.Client); c != 0 {
			return c
		}
		return a.Destination.Compare(b.Destination)
	})
	return out
}

// Handler serves the address quarantines beside dnsguard's name
// quarantines:
//
//	GET    /v1/egress/quarantines                      {"quarantines": [{"client", "destination"}]}
//	POST   /v1/egress/quarantines/{client}/{destination}  quarantine (an operator's block)
//	DELETE /v1/egress/quarantines/{client}/{destination}  lift
func (f *Firewall) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/egress/quarantines", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"quarantines": f.Quarantines()})
	})
	set := func(on bool) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			client, err1 := netip.ParseAddr(r.PathValue("client"))
			dst, err2 := netip.ParseAddr(r.PathValue("destination"))
			if err := errors.Join(err1, err2); err != nil {
				http.Error(w, "want /v1/egress/quarantines/CLIENT-IP/DESTINATION-IP: "+err.Error(), http.StatusBadRequest)
				return
			}
			client, dst = client.Unmap(), dst.Unmap()
			if !on && !slices.Contains(f.Quarantines(), AddrQuarantine{Client: client, Destination: dst}) {
				http.Error(w, "no such quarantine", http.StatusNotFound)
				return
			}
			fn := f.LiftAddr
			if on {
				fn = f.QuarantineAddr
			}
			if err := fn(client, dst); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.WriteHeader(http.StatusNoContent)
		}
	}
	mux.HandleFunc("POST /v1/egress/quarantines/{client}/{destination}", set(true))
	mux.HandleFunc("DELETE /v1/egress/quarantines/{client}/{destination}", set(false))
	return mux
}
