package replay

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/proto"
)

// dnstapFile writes events as a resolver's dnstap log: a CLIENT_QUERY and
// a CLIENT_RESPONSE per query (responses of odd queries first logged
// later, as a busy server interleaves them), plus the resolver's own
// upstream traffic, which replay must ignore. raw frames are appended
// as they are.
func dnstapFile(t *testing.T, evs []dnsguard.QueryEvent, raw ...[]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := dnstap.NewWriter(&buf, nil)
	if err != nil {
		t.Fatal(err)
	}
	write := func(m *dnstap.Message) {
		typ := dnstap.Dnstap_MESSAGE
		b, err := proto.Marshal(&dnstap.Dnstap{Type: &typ, Message: m})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteFrame(b); err != nil {
			t.Fatal(err)
		}
	}
	family, proto_ := dnstap.SocketFamily_INET, dnstap.SocketProtocol_UDP
	var late []*dnstap.Message
	for i, ev := range evs {
		q := new(dns.Msg)
		q.SetQuestion(ev.QName, ev.QTypeCode)
		q.Id = uint16(i)
		qw, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		r := new(dns.Msg)
		r.SetRcode(q, dns.StringToRcode[ev.RCode])
		rw, err := r.Pack()
		if err != nil {
			t.Fatal(err)
		}
		sec, nsec := uint64(ev.Time.Unix()), uint32(ev.Time.Nanosecond())
		port := uint32(40000 + i%100)
		addr := ev.Client.IP.AsSlice()
		qt, rt := dnstap.Message_CLIENT_QUERY, dnstap.Message_CLIENT_RESPONSE
		write(&dnstap.Message{Type: &qt, SocketFamily: &family, SocketProtocol: &proto_, QueryAddress: addr, QueryPort: &port,
			QueryTimeSec: &sec, QueryTimeNsec: &nsec, QueryMessage: qw})
		up := dnstap.Message_RESOLVER_QUERY
		write(&dnstap.Message{Type: &up, SocketFamily: &family, SocketProtocol: &proto_, QueryMessage: qw})
		rsec := sec
		resp := &dnstap.Message{Type: &rt, SocketFamily: &family, SocketProtocol: &proto_, QueryAddress: addr, QueryPort: &port,
			ResponseTimeSec: &rsec, ResponseTimeNsec: &nsec, ResponseMessage: rw}
		for _, m := range late {
			write(m)
		}
		late = late[:0]
		if i%2 == 1 {
			late = append(late, resp)
		} else {
			write(resp)
		}
	}
	for _, m := range late {
		write(m)
	}
	for _, b := range raw {
		if _, err := w.WriteFrame(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// asUnknownClient drops the workload: dnstap knows only the address.
func asUnknownClient(evs []dnsguard.QueryEvent, ip string) []dnsguard.QueryEvent {
	out := append([]dnsguard.QueryEvent(nil), evs...)
	for i := range out {
		out[i].Client = dnsguard.Client{IP: netip.MustParseAddr(ip)}
	}
	return out
}

// TestDnstapMatchesQueryLog: the captures and a slow session written as
// dnstap replay to the same alerts as the equivalent query log.
func TestDnstapMatchesQueryLog(t *testing.T) {
	t.Parallel()
	eachSession(t, 2, func(t *testing.T, evs []dnsguard.QueryEvent) {
		evs = asUnknownClient(evs, "127.0.0.1")
		want, _ := replayAll(t, Config{}, file{"q.jsonl", queryLog(t, evs)})
		got, stats := replayAll(t, Config{}, file{"q.dnstap", dnstapFile(t, evs)})
		if st := stats[0]; st.Format != FormatDnstap || st.Records != len(evs) || st.Skipped != 0 || st.Ignored != len(evs) {
			t.Fatalf("stats %+v", st)
		}
		if len(want) == 0 {
			t.Fatal("no alerts")
		}
		if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
			t.Fatalf("dnstap:\n%s\nquery log:\n%s", g, w)
		}
	})
}

// TestDnstapBadFrames: a frame that is not a dnstap message is skipped
// with its number; a truncated file stops with what was read replayed.
func TestDnstapBadFrames(t *testing.T) {
	t.Parallel()
	evs := asUnknownClient([]dnsguard.QueryEvent{event(t0, "www.example.com.", "A", ""), event(t0.Add(time.Second), "mail.example.com.", "MX", "NXDOMAIN")}, "127.0.0.1")
	data := dnstapFile(t, evs, []byte("\xff\xff\xff not protobuf"))
	_, stats := replayAll(t, Config{}, file{"bad.dnstap", data})
	st := stats[0]
	if st.Records != 2 || st.Skipped != 1 || !strings.HasPrefix(st.Errors[0].Error(), "bad.dnstap: frame 7: not a dnstap message: ") {
		t.Fatalf("stats %+v, errors %v", st, st.Errors)
	}
	// Cut inside the last response frame.
	cut := dnstapFile(t, evs)
	cut = cut[:len(cut)-20]
	_, stats = replayAll(t, Config{}, file{"cut.dnstap", cut})
	st = stats[0]
	if st.Records != 2 || st.Skipped != 1 || !strings.HasPrefix(st.Errors[0].Error(), "cut.dnstap: frame 6: damaged or truncated stream, rest of file not read: ") {
		t.Fatalf("stats %+v, errors %v", st, st.Errors)
	}
}
