package alert

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Handler serves:
//
//	GET  /v1/alerts?since=1h|RFC3339&namespace=&kind=&severity=&limit=&after=ID
//	GET  /v1/alerts?follow=1   Server-Sent Events; resumes after Last-Event-ID
//	POST /v1/alerts            ingest one alert (node agents forward here)
func (f *Feed) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/alerts", ListHandler(f, f.cfg.Now).ServeHTTP)
	mux.HandleFunc("POST /v1/alerts", f.serveIngest)
	return mux
}

// Source is what ListHandler serves: alerts in increasing ID order and a
// signal after each change. A Feed is one; so is the controller's view of
// the EgressAlerts of the cluster.
type Source interface {
	List(Filter) []Alert
	Subscribe() (<-chan struct{}, func())
}

// ListHandler serves GET /v1/alerts (list and Server-Sent Events, as
// Feed.Handler) from src; now reads the clock for ?since=.
func ListHandler(src Source, now func() time.Time) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { serveList(src, now, w, r) })
}

func parseFilter(r *http.Request, now time.Time) (Filter, error) {
	q := r.URL.Query()
	flt := Filter{Namespace: q.Get("namespace"), Kind: q.Get("kind"), Severity: q.Get("severity")}
	if s := q.Get("since"); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			flt.Since = now.Add(-d)
		} else if t, err := time.Parse(time.RFC3339, s); err == nil {
			flt.Since = t
		} else {
			return flt, fmt.Errorf("since: want a duration (1h) or RFC 3339 time, got %q", s)
		}
	}
	for name, dst := range map[string]*int{"limit": &flt.Limit} {
		if s := q.Get(name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				return flt, fmt.Errorf("%s: want a non-negative integer, got %q", name, s)
			}
			*dst = n
		}
	}
	after := q.Get("after")
	if le := r.Header.Get("Last-Event-ID"); le != "" {
		after = le
	}
	if after != "" {
		n, err := strconv.ParseUint(after, 10, 64)
		if err != nil {
			return flt, fmt.Errorf("after: want an alert id, got %q", after)
		}
		flt.After = n
	}
	return flt, nil
}

func serveList(f Source, now func() time.Time, w http.ResponseWriter, r *http.Request) {
	flt, err := parseFilter(r, now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.URL.Query().Get("follow") == "" {
		w.Header().Set("Content-Type", "application/json")
		list := f.List(flt)
		if list == nil {
			list = []Alert{}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"alerts": list})
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	wake, cancel := f.Subscribe()
	defer cancel()
	limit := flt.Limit
	flt.Limit = 0
	first := true
	for {
		list := f.List(flt)
		if first && limit > 0 && len(list) > limit {
			list = list[len(list)-limit:]
		}
		first = false
		for _, a := range list {
			b, err := json.Marshal(&a)
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(w, "id: %d\nevent: alert\ndata: %s\n\n", a.ID, b); err != nil {
				return
			}
			flt.After = a.ID
		}
		fl.Flush()
		select {
		case <-r.Context().Done():
			return
		case _, ok := <-wake:
			if !ok {
				return
			}
		case <-time.After(15 * time.Second):
			if _, err := fmt.Fprint(w, ": keepalive\n\n"); err != nil {
				return
			}
			fl.Flush()
		}
	}
}

func (f *Feed) serveIngest(w http.ResponseWriter, r *http.Request) {
	var a Alert
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		http.Error(w, "invalid alert: "+err.Error(), http.StatusBadRequest)
		return
	}
	// One body, one alert: a second value after it is rejected rather
	// than silently dropped.
	if err := dec.Decode(&json.RawMessage{}); !errors.Is(err, io.EOF) {
		http.Error(w, "invalid alert: data after the alert", http.StatusBadRequest)
		return
	}
	if a.Kind == "" || a.Domain == "" || a.Severity == "" {
		http.Error(w, "invalid alert: kind, domain and severity are required", http.StatusBadRequest)
		return
	}
	// The feed stores times in UTC; one that cannot be written there
	// (0000-01-01T00:00:00+01:00 is year -1) is the sender's error.
	if _, err := a.Time.UTC().MarshalJSON(); err != nil {
		http.Error(w, "invalid alert: time: year outside of range [0,9999]", http.StatusBadRequest)
		return
	}
	switch a.Kind {
	case KindExfiltration, KindTunneling, KindBlocked, KindQuarantine:
	default:
		http.Error(w, "invalid alert: unknown kind "+strings.ReplaceAll(a.Kind, "\n", " "), http.StatusBadRequest)
		return
	}
	a.ID = 0 // this feed numbers its own alerts
	stored, written, err := f.Publish(r.Context(), a)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if !written {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusCreated)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"id": stored.ID, "written": written})
}
