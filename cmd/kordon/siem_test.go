package main

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/proto"
)

// TestDevDnstapAndSyslogFlags: kordon dev with --dnstap and --syslog. A
// blocked query reaches golang-dnstap's Frame Streams reader as
// CLIENT_QUERY and CLIENT_RESPONSE, and its alert reaches a syslog
// listener as an octet-counted RFC 5424 message. (dnsguard's and alert's
// tests run the same code against dnstap-ldns and rsyslog.)
func TestDevDnstapAndSyslogFlags(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "tap.sock")
	tapLn, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer tapLn.Close()
	frames := make(chan []byte, 64)
	go func() {
		conn, err := tapLn.Accept()
		if err != nil {
			return
		}
		in, err := dnstap.NewFrameStreamInputTimeout(conn, true, 5*time.Second)
		if err != nil {
			t.Error(err)
			return
		}
		in.ReadInto(frames) // until kordon closes the session
	}()
	syslogLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer syslogLn.Close()
	msgs := make(chan string, 16)
	go func() {
		conn, err := syslogLn.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		for {
			m, err := alert.ReadSyslogFrame(r)
			if err != nil {
				return
			}
			msgs <- m
		}
	}()
	h := startDevHarnessWith(t, func(string) {}, func(o *devOptions) {
		o.dnstap = dnstapFlag("unix:" + sock)
		o.syslog = syslogFlags{addrs: []string{"tcp://" + syslogLn.Addr().String()}, format: "sd+json", facility: 13}
	})
	if r := h.query(t, "127.0.0.10", "evil.example", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("rcode %s", dns.RcodeToString[r.Rcode])
	}
	select {
	case m := <-msgs:
		if !strings.HasPrefix(m, "<109>1 ") || !strings.Contains(m, ` dev kordon - blocked [kordon@32473 id="1" `) ||
			!strings.Contains(m, `domain="evil.example"`) || !strings.Contains(m, `"pod":"frontend"`) {
			t.Errorf("syslog message: %s", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no syslog message for the blocked query's alert")
	}
	var types []dnstap.Message_Type
	for len(types) < 2 {
		select {
		case f := <-frames:
			var d dnstap.Dnstap
			if err := proto.Unmarshal(f, &d); err != nil {
				t.Fatal(err)
			}
			m := d.GetMessage()
			types = append(types, m.GetType())
			if string(m.GetQueryAddress()) != string(net.ParseIP("127.0.0.10").To4()) || m.GetSocketProtocol() != dnstap.SocketProtocol_UDP {
				t.Errorf("message %v", m)
			}
			if m.GetType() == dnstap.Message_CLIENT_RESPONSE {
				var resp dns.Msg
				if err := resp.Unpack(m.GetResponseMessage()); err != nil || resp.Rcode != dns.RcodeNameError || resp.Question[0].Name != "evil.example." {
					t.Errorf("response %v %v", &resp, err)
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("dnstap messages: %v", types)
		}
	}
	if types[0] != dnstap.Message_CLIENT_QUERY || types[1] != dnstap.Message_CLIENT_RESPONSE {
		t.Errorf("dnstap types %v", types)
	}
}
