package alert

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
)

// FuzzIngest posts arbitrary bodies to POST /v1/alerts: the handler never
// panics, garbage gets a 4xx (never a 5xx: a bad alert is the sender's
// fault), and an accepted alert is stored as sent, with the feed's own ID.
func FuzzIngest(f *testing.F) {
	for _, s := range []string{
		`{"severity":"high","kind":"exfiltration","namespace":"shop","pod":"worker-1","domain":"evil.example","action":"alerted"}`,
		`{"time":"2026-12-01T10:00:00+02:00","severity":"low","kind":"tunneling","clientIp":"10.0.0.5","domain":"t.example","score":0.93,"evidence":{"entropy":4.1,"labels":["a","b"]},"action":"blocked","policy":"shop/egress"}`,
		`{"id":99,"severity":"high","kind":"blocked","domain":"x.example","action":"blocked"}`,
		`{"severity":"high","kind":"quarantine","domain":"x.example","action":"quarantined","message":"pod cut off"}`,
		`{"severity":"high","kind":"nope","domain":"x.example"}`,
		`{"severity":"high","kind":"blocked","domain":"x.example","colour":"red"}`,
		`{"time":"0000-01-01T00:00:00+01:00","severity":"high","kind":"blocked","domain":"x.example","action":"blocked"}`,
		`{"severity":"high","kind":"blocked","domain":"x.example","action":"blocked"} {"trailing":1}`,
		`{"severity":"high","kind":"blocked","domain":"x.example","action":"blocked"}` + "\ngarbage",
		`[]`, `null`, ``, `{`, `"str"`,
	} {
		f.Add([]byte(s))
	}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	feed, err := NewFeed(Config{Dir: f.TempDir(), Fsync: FsyncInterval, Cooldown: -1, Memory: 16, Now: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { feed.Close() })
	h := feed.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/alerts", strings.NewReader(string(body))))
		switch {
		case rec.Code >= 500:
			t.Fatalf("%d for %q: %s", rec.Code, body, rec.Body)
		case rec.Code >= 400:
			return
		case rec.Code != http.StatusCreated && rec.Code != http.StatusOK:
			t.Fatalf("unexpected status %d", rec.Code)
		}
		var sent Alert
		if err := json.Unmarshal(body, &sent); err != nil {
			t.Fatalf("accepted a body that is not one alert: %q: %v", body, err)
		}
		var resp struct {
			ID      uint64 `json:"id"`
			Written bool   `json:"written"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
			t.Fatalf("response %q: %v", rec.Body, err)
		}
		if !resp.Written {
			return
		}
		var got *Alert
		for _, a := range feed.List(Filter{}) {
			if a.ID == resp.ID {
				got = &a
			}
		}
		if got == nil {
			t.Fatalf("alert %d not listed", resp.ID)
		}
		// What the feed changes: its own ID, a time (now if unset), UTC.
		sent.ID = resp.ID
		if sent.Time.IsZero() {
			sent.Time = now
		}
		if !got.Time.Equal(sent.Time) || got.Time.Location() != time.UTC {
			t.Fatalf("time %v stored as %v", sent.Time, got.Time)
		}
		sent.Time = got.Time
		// Evidence is kept as JSON; compare it as a value.
		var ge, se any
		_ = json.Unmarshal(got.Evidence, &ge)
		_ = json.Unmarshal(sent.Evidence, &se)
		if !reflect.DeepEqual(ge, se) {
			t.Fatalf("evidence %s stored as %s", sent.Evidence, got.Evidence)
		}
		sent.Evidence, got.Evidence = nil, nil
		if !reflect.DeepEqual(*got, sent) {
			t.Fatalf("alert changed:\nsent %+v\ngot  %+v", sent, *got)
		}
	})
}

func TestIngestRejects(t *testing.T) {
	t.Parallel()
	feed := newTestFeed(t, t.TempDir(), nil)
	t.Cleanup(func() { feed.Close() })
	h := feed.Handler()
	const ok = `{"severity":"high","kind":"blocked","domain":"x.example","action":"blocked"`
	cases := []struct {
		name, body, want string
	}{
		{name: "second value after the alert", body: ok + `} {"trailing":1}`, want: "invalid alert: data after the alert\n"},
		{name: "garbage after the alert", body: ok + "}\ngarbage", want: "invalid alert: data after the alert\n"},
		{name: "time before year 0 in UTC", body: ok + `,"time":"0000-01-01T00:00:00+01:00"}`, want: "invalid alert: time: year outside of range [0,9999]\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/alerts", strings.NewReader(tc.body)))
			if rec.Code != http.StatusBadRequest || rec.Body.String() != tc.want {
				t.Fatalf("got %d %q, want 400 %q", rec.Code, rec.Body, tc.want)
			}
		})
	}
	if n := len(feed.List(Filter{})); n != 0 {
		t.Fatalf("%d rejected alerts stored", n)
	}
}
