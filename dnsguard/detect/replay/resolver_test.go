package replay

import (
	"context"
	"encoding/base32"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/internal/demo/authdns"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/miekg/dns"
)

// startAuth serves exfil.example (a wildcard for every type the tunnel
// asks) on loopback and returns its address.
func startAuth(t *testing.T) string {
	t.Helper()
	zones, err := authdns.ParseConfig("zones.yaml", []byte("zones:\n- origin: exfil.example\n  records:\n  - \"* A 203.0.113.7\"\n  - \"* TXT \\\"ok\\\"\"\n  - \"www A 203.0.113.8\"\n- origin: probe.example\n  records:\n  - \"ready A 192.0.2.1\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	auth, err := authdns.New(authdns.Config{Zones: zones})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := auth.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = auth.Shutdown(ctx)
	})
	return addr.String()
}

// resolver is kordon's resolver on loopback with its query log in a file
// and the live detector (inspector and alert feed) on.
type resolver struct {
	addr, qlogPath string
	// stop shuts it down, flushes the log and returns the feed's alerts.
	stop func() []alert.Alert
}

func startResolver(t *testing.T, dir, upstream string) *resolver {
	t.Helper()
	qlogPath := filepath.Join(dir, "queries.jsonl")
	qlog, err := os.Create(qlogPath)
	if err != nil {
		t.Fatal(err)
	}
	feed, err := alert.NewFeed(alert.Config{Dir: filepath.Join(dir, "alerts"), Fsync: alert.FsyncInterval})
	if err != nil {
		t.Fatal(err)
	}
	insp, err := dnsguard.NewInspector(dnsguard.InspectorConfig{Feed: feed, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := dnsguard.New(dnsguard.Config{Registry: workload.NewRegistry(), Upstreams: []string{upstream}, QueryLog: qlog, Inspector: insp, Node: "test"})
	if err != nil {
		t.Fatal(err)
	}
	pc, ln, err := dnsguard.ListenUDPTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(context.Background(), pc, ln) }()
	return &resolver{addr: pc.LocalAddr().String(), qlogPath: qlogPath, stop: func() []alert.Alert {
		srv.Close()
		<-served
		insp.Close() // drains the detector's queue
		if err := qlog.Close(); err != nil {
			t.Fatal(err)
		}
		alerts := feed.List(alert.Filter{})
		if err := feed.Close(); err != nil {
			t.Fatal(err)
		}
		return alerts
	}}
}

type tunnelQuery struct {
	name  string
	qtype uint16
	gap   time.Duration // pause after it
}

// tunnelQueries is a base32 tunnel over TXT and A under t.exfil.example
// with a benign name between, at irregular gaps under 60 ms (never
// "periodic").
func tunnelQueries() []tunnelQuery {
	rng := rand.New(rand.NewPCG(15, 15))
	var out []tunnelQuery
	for i := 0; i < 60; i++ {
		q := tunnelQuery{qtype: dns.TypeTXT, gap: time.Duration(10+rng.IntN(50)) * time.Millisecond}
		switch {
		case i%10 == 3:
			q.name, q.qtype = "www.exfil.example.", dns.TypeA
		default:
			b := make([]byte, 35)
			for j := range b {
				b[j] = byte(rng.IntN(256))
			}
			q.name = fmt.Sprintf("%s.%d.t.exfil.example.", strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString(b), "=")), i)
			if i%3 == 0 {
				q.qtype = dns.TypeA
			}
		}
		out = append(out, q)
	}
	return out
}

func ask(t *testing.T, addr, name string, qt uint16) {
	t.Helper()
	c := &dns.Client{Timeout: 2 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(name, qt)
	if _, _, err := c.Exchange(m, addr); err != nil {
		t.Fatalf("%s %s: %v", addr, name, err)
	}
}

// TestResolverAlertsMatchReplay: a tunnel through kordon's real resolver
// raises alerts in its feed; replaying the query log the same resolver
// wrote gives exactly those alerts (what the resolver finds, replay
// finds, and the other way round).
func TestResolverAlertsMatchReplay(t *testing.T) {
	t.Parallel()
	res := startResolver(t, t.TempDir(), startAuth(t))
	for _, q := range tunnelQueries() {
		ask(t, res.addr, q.name, q.qtype)
		time.Sleep(q.gap)
	}
	live := res.stop()
	if len(live) == 0 {
		t.Fatal("the resolver raised no alert")
	}
	data, err := os.ReadFile(res.qlogPath)
	if err != nil {
		t.Fatal(err)
	}
	replayed, stats := replayAll(t, Config{}, file{"queries.jsonl", data})
	if stats[0].Records != 60 || stats[0].Skipped != 0 {
		t.Fatalf("stats %+v", stats[0])
	}
	if g, w := mustJSON(t, replayed), mustJSON(t, live); g != w {
		t.Fatalf("replay:\n%s\nresolver's feed:\n%s", g, w)
	}
	t.Logf("%d alert(s) from each: %s", len(live), live[0].Message)
}
