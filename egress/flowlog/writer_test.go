package flowlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// blockedWriter blocks every Write until release is closed.
type blockedWriter struct {
	entered chan struct{}
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *blockedWriter) Write(p []byte) (int, error) {
	select {
	case w.entered <- struct{}{}:
	default:
	}
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func testMetrics(t *testing.T) *metrics {
	t.Helper()
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func oneRecord(port uint16) *chunk {
	c := &chunk{}
	c.add(&Record{Time: time.Unix(1, 0).UTC(), Client: Client{IP: netip.MustParseAddr("10.244.0.2")}, Proto: "tcp", SPort: port, Verdict: VerdictAllowed, Final: true})
	return c
}

func TestWriterDropsWhenFull(t *testing.T) {
	t.Parallel()
	w := &blockedWriter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	m := testMetrics(t)
	rw := newRecordWriter(w, 4, m, slog.New(slog.DiscardHandler))
	rw.send(oneRecord(1))
	<-w.entered // the writer holds record 1 in a blocked Write
	for i := 2; i <= 10; i++ {
		rw.send(oneRecord(uint16(i))) // returns at once: never blocks
	}
	// Records count as queued until written: 1 (in the Write) + 3 more
	// fit the bound of 4; the other 6 are dropped.
	if got := testutil.ToFloat64(m.dropped); got != 6 {
		t.Errorf("dropped = %v, want 6", got)
	}
	close(w.release)
	rw.close()
	if got := testutil.ToFloat64(m.records); got != 4 {
		t.Errorf("records = %v, want 4", got)
	}
	var ports []uint16
	for _, line := range strings.Split(strings.TrimSpace(w.buf.String()), "\n") {
		var r Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		ports = append(ports, r.SPort)
	}
	if !slices.Equal(ports, []uint16{1, 2, 3, 4}) {
		t.Errorf("written sports %v, want [1 2 3 4]", ports)
	}
	rw.send(oneRecord(11)) // after close: dropped, no panic
	if got := testutil.ToFloat64(m.dropped); got != 7 {
		t.Errorf("dropped after close = %v, want 7", got)
	}
}

type failingWriter struct{ n int }

func (w *failingWriter) Write(p []byte) (int, error) {
	w.n++
	return 0, errors.New("disk full")
}

func TestWriterCountsFailedWrites(t *testing.T) {
	t.Parallel()
	m := testMetrics(t)
	fw := &failingWriter{}
	rw := newRecordWriter(fw, 16, m, slog.New(slog.DiscardHandler))
	c := oneRecord(1)
	c.add(&Record{SPort: 2})
	rw.send(c)
	rw.close()
	if got := testutil.ToFloat64(m.dropped); got != 2 {
		t.Errorf("dropped = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.records); got != 0 {
		t.Errorf("records = %v, want 0", got)
	}
	if fw.n != 1 {
		t.Errorf("%d writes, want 1 (both records in one batch)", fw.n)
	}
}

func TestRecordSchema(t *testing.T) {
	t.Parallel()
	c := &chunk{}
	c.add(&Record{
		Time: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), Client: Client{IP: netip.MustParseAddr("10.244.1.2"), Namespace: "shop", Pod: "cache-0", ServiceAccount: "cache", SPIFFEID: "spiffe://cluster.local/ns/shop/sa/cache", Node: "n1"},
		Proto: "tcp", Src: netip.MustParseAddr("10.244.1.2"), SPort: 40000, Dst: netip.MustParseAddr("198.51.100.7"), DPort: 6379,
		BytesOut: 100, BytesIn: 50, PacketsOut: 2, PacketsIn: 1, Duration: 1.5, Verdict: VerdictAllowed, Final: true,
	})
	want := `{"time":"2026-12-01T10:00:00Z","client":{"ip":"10.244.1.2","namespace":"shop","pod":"cache-0","serviceAccount":"cache","spiffeId":"spiffe://cluster.local/ns/shop/sa/cache","node":"n1"},"proto":"tcp","src":"10.244.1.2","sport":40000,"dst":"198.51.100.7","dport":6379,"bytesOut":100,"bytesIn":50,"packetsOut":2,"packetsIn":1,"durationSeconds":1.5,"verdict":"allowed","final":true}` + "\n"
	if string(c.b) != want {
		t.Errorf("record\n got %s\nwant %s", c.b, want)
	}
}
