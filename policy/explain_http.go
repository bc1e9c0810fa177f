package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
)

// ExplainRequest is the body of POST /v1/policy/explain: the workload
// (namespace and labels) and the request attributes of Request.
type ExplainRequest struct {
	Namespace        string            `json:"namespace"`
	Labels           map[string]string `json:"labels,omitempty"`
	Principal        string            `json:"principal,omitempty"`
	SourceIP         string            `json:"sourceIP,omitempty"`
	RemoteIP         string            `json:"remoteIP,omitempty"`
	DestinationIP    string            `json:"destinationIP,omitempty"`
	Port             uint32            `json:"port,omitempty"`
	Method           string            `json:"method,omitempty"`
	Path             string            `json:"path,omitempty"`
	Host             string            `json:"host,omitempty"`
	Headers          map[string]string `json:"headers,omitempty"`
	SNI              string            `json:"sni,omitempty"`
	RequestPrincipal string            `json:"requestPrincipal,omitempty"`
	TCP              bool              `json:"tcp,omitempty"`
}

// toRequest converts r to what Explain takes; errors name the field.
func (r *ExplainRequest) toRequest() (Target, Request, error) {
	if r.Namespace == "" {
		return Target{}, Request{}, errors.New("namespace: required")
	}
	req := Request{Principal: r.Principal, Port: r.Port, Method: r.Method, Path: r.Path, Host: r.Host,
		Headers: r.Headers, SNI: r.SNI, RequestPrincipal: r.RequestPrincipal, TCP: r.TCP}
	for _, f := range []struct {
		name string
		val  string
		dst  *netip.Addr
	}{{"sourceIP", r.SourceIP, &req.SourceIP}, {"remoteIP", r.RemoteIP, &req.RemoteIP}, {"destinationIP", r.DestinationIP, &req.DestinationIP}} {
		if f.val == "" {
			continue
		}
		a, err := netip.ParseAddr(f.val)
		if err != nil {
			return Target{}, Request{}, fmt.Errorf("%s: %w", f.name, err)
		}
		*f.dst = a
	}
	return Target{Namespace: r.Namespace, Labels: r.Labels}, req, nil
}

// ExplainHandler serves Explain over HTTP against the policies in force:
//
//	POST /v1/policy/explain   body ExplainRequest   200 Decision (ALLOW or DENY); 400 bad input
//
// policies is called once per request (the set in force then); opts are
// the compile options the data plane is built with.
func ExplainHandler(policies func() *Set, opts CompileOptions) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/policy/explain", func(w http.ResponseWriter, r *http.Request) {
		var er ExplainRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&er); err != nil {
			http.Error(w, "invalid explain request: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := dec.Decode(&json.RawMessage{}); !errors.Is(err, io.EOF) {
			http.Error(w, "invalid explain request: data after the request", http.StatusBadRequest)
			return
		}
		target, req, err := er.toRequest()
		if err != nil {
			http.Error(w, "invalid explain request: "+err.Error(), http.StatusBadRequest)
			return
		}
		set := policies()
		if set == nil {
			set = &Set{}
		}
		d, err := Explain(set, target, req, opts)
		if err != nil {
			http.Error(w, "explain: "+err.Error(), http.StatusUnprocessableEntity)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(d)
	})
	return mux
}
