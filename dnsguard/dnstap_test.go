package dnsguard

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/kordon-dev/kordon/internal/testtool"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
)

func TestParseDnstapAddress(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, network, address, err string
	}{
		{in: "unix:/run/dnstap.sock", network: "unix", address: "/run/dnstap.sock"},
		{in: "tcp:127.0.0.1:6000", network: "tcp", address: "127.0.0.1:6000"},
		{in: "tcp:[::1]:6000", network: "tcp", address: "[::1]:6000"},
		{in: "tcp:127.0.0.1", err: `dnsguard: dnstap address "tcp:127.0.0.1": want unix:/path/to.sock or tcp:host:port`},
		{in: "/run/dnstap.sock", err: `dnsguard: dnstap address "/run/dnstap.sock": want unix:/path/to.sock or tcp:host:port`},
		{in: "udp:127.0.0.1:6000", err: `dnsguard: dnstap address "udp:127.0.0.1:6000": want unix:/path/to.sock or tcp:host:port`},
		{in: "unix:", err: `dnsguard: dnstap address "unix:": want unix:/path/to.sock or tcp:host:port`},
	} {
		network, address, err := ParseDnstapAddress(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: error %v, want %s", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || network != tc.network || address != tc.address {
			t.Errorf("%q: %q %q %v", tc.in, network, address, err)
		}
	}
}

// TestDnstapEncodingMatchesProto decodes the hand-written encoding with
// golang-dnstap's generated types.
func TestDnstapEncodingMatchesProto(t *testing.T) {
	t.Parallel()
	q := new(dns.Msg)
	q.SetQuestion("img.cdn.example.", dns.TypeA)
	qw, _ := q.Pack()
	r := new(dns.Msg)
	r.SetReply(q)
	rw, _ := r.Pack()
	at := time.Unix(1_700_000_000, 123_456_789)
	enc := &tapEncoder{identity: []byte("node-1"), version: []byte("kordon")}
	for _, tc := range []struct {
		name   string
		peer   netip.AddrPort
		tcp    bool
		family dnstap.SocketFamily
		proto  dnstap.SocketProtocol
		ip     []byte
	}{
		{name: "udp4", peer: netip.MustParseAddrPort("127.0.0.10:5353"), family: dnstap.SocketFamily_INET, proto: dnstap.SocketProtocol_UDP, ip: []byte{127, 0, 0, 10}},
		{name: "mapped", peer: netip.MustParseAddrPort("[::ffff:10.1.0.7]:40000"), family: dnstap.SocketFamily_INET, proto: dnstap.SocketProtocol_UDP, ip: []byte{10, 1, 0, 7}},
		{name: "tcp6", peer: netip.MustParseAddrPort("[2001:db8::7]:1"), tcp: true, family: dnstap.SocketFamily_INET6, proto: dnstap.SocketProtocol_TCP, ip: netip.MustParseAddr("2001:db8::7").AsSlice()},
	} {
		ev := QueryEvent{Time: at, Latency: 0.25, tap: tapWire{query: qw, reply: rw, peer: tc.peer, tcp: tc.tcp}}
		b := enc.appendEvent([]byte("prefix"), &ev)
		if !bytes.HasPrefix(b, []byte("prefix")) {
			t.Fatalf("%s: appendEvent did not append", tc.name)
		}
		b = b[len("prefix"):]
		var msgs []*dnstap.Dnstap
		for len(b) > 0 {
			n := binary.BigEndian.Uint32(b)
			var d dnstap.Dnstap
			if err := proto.Unmarshal(b[4:4+n], &d); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			msgs = append(msgs, &d)
			b = b[4+n:]
		}
		if len(msgs) != 2 {
			t.Fatalf("%s: %d frames, want 2", tc.name, len(msgs))
		}
		for i, d := range msgs {
			m := d.GetMessage()
			if d.GetType() != dnstap.Dnstap_MESSAGE || string(d.GetIdentity()) != "node-1" || string(d.GetVersion()) != "kordon" ||
				m.GetSocketFamily() != tc.family || m.GetSocketProtocol() != tc.proto || !bytes.Equal(m.GetQueryAddress(), tc.ip) ||
				m.GetQueryPort() != uint32(tc.peer.Port()) || m.GetQueryTimeSec() != 1_700_000_000 || m.GetQueryTimeNsec() != 123_456_789 {
				t.Errorf("%s frame %d: %v", tc.name, i, d)
			}
		}
		cq, cr := msgs[0].GetMessage(), msgs[1].GetMessage()
		if cq.GetType() != dnstap.Message_CLIENT_QUERY || !bytes.Equal(cq.GetQueryMessage(), qw) || cq.ResponseMessage != nil || cq.ResponseTimeSec != nil {
			t.Errorf("%s: CLIENT_QUERY %v", tc.name, cq)
		}
		if cr.GetType() != dnstap.Message_CLIENT_RESPONSE || !bytes.Equal(cr.GetResponseMessage(), rw) || cr.QueryMessage != nil ||
			cr.GetResponseTimeSec() != 1_700_000_000 || cr.GetResponseTimeNsec() != 373_456_789 {
			t.Errorf("%s: CLIENT_RESPONSE %v", tc.name, cr)
		}
	}
	// An event nothing was written for (a dropped query) has no frames.
	if b := enc.appendEvent(nil, &QueryEvent{Time: at}); len(b) != 0 {
		t.Errorf("no reply: %d bytes", len(b))
	}
}

// fstrmCapture is Debian's fstrm_capture (libfstrm's reference Frame
// Streams receiver) writing what it receives on sock to file.
type fstrmCapture struct {
	cmd  *exec.Cmd
	file string
}

func startFstrmCapture(t *testing.T, listen []string, file string, ready func() bool) *fstrmCapture {
	t.Helper()
	args := append([]string{"-t", "protobuf:dnstap.Dnstap", "-w", file}, listen...)
	cmd := exec.Command("fstrm_capture", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &fstrmCapture{cmd: cmd, file: file}
	t.Cleanup(func() { c.stop(t) })
	for deadline := time.Now().Add(5 * time.Second); !ready(); time.Sleep(10 * time.Millisecond) { // polling for its socket, bounded
		if time.Now().After(deadline) {
			t.Fatalf("fstrm_capture %v not listening: %s", args, out.String())
		}
	}
	return c
}

// stop ends fstrm_capture with SIGTERM (it then closes its file) and waits.
func (c *fstrmCapture) stop(t *testing.T) {
	if c.cmd.Process == nil || c.cmd.ProcessState != nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
		t.Errorf("fstrm_capture did not stop on SIGTERM")
	}
}

// ldns decodes a Frame Streams file with Debian's dnstap-ldns (YAML).
func ldns(t *testing.T, file string) string {
	t.Helper()
	out, err := exec.Command("dnstap-ldns", "-y", "-r", file).CombinedOutput()
	if err != nil {
		t.Fatalf("dnstap-ldns -y -r %s: %v\n%s", file, err, out)
	}
	return string(out)
}

// ldnsMessage is one decoded message of dnstap-ldns -y output.
type ldnsMessage struct{ text string }

// field is the last value of name ("type" is the Message's type).
func (m ldnsMessage) field(name string) string {
	v := ""
	for _, line := range strings.Split(m.text, "\n") {
		if f, ok := strings.CutPrefix(strings.TrimSpace(line), name+": "); ok {
			v = strings.Trim(f, `"`)
		}
	}
	return v
}

func ldnsMessages(out string) []ldnsMessage {
	var msgs []ldnsMessage
	for _, doc := range strings.Split(out, "---") {
		if strings.TrimSpace(doc) != "" {
			msgs = append(msgs, ldnsMessage{doc})
		}
	}
	return msgs
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		testtool.Need(t, tool)
	}
}

// listeningPort waits (bounded) until process pid has a listening TCP
// socket and returns its port: the socket inodes of /proc/pid/fd looked up
// in /proc/pid/net/tcp (state 0A is LISTEN).
func listeningPort(t *testing.T, pid int) int {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) { // polling for its socket, bounded
		inodes := map[string]bool{}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if inode, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
				inodes[strings.TrimSuffix(inode, "]")] = true
			}
		}
		table, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
		for _, line := range strings.Split(string(table), "\n") {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
				continue
			}
			_, port, _ := strings.Cut(f[1], ":")
			if p, err := strconv.ParseUint(port, 16, 16); err == nil {
				return int(p)
			}
		}
	}
	t.Fatalf("process %d has no listening TCP socket", pid)
	return 0
}

func freePort(t *testing.T, network string) int {
	t.Helper()
	switch network {
	case "udp":
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return pc.LocalAddr().(*net.UDPAddr).Port
	default:
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).Port
	}
}

// TestDnstapReadByDnstapLdns sends kordon's dnstap to Debian's
// fstrm_capture over a Unix socket and decodes it with dnstap-ldns:
// dig's queries through every path (a fast miss, a fast cache hit, a
// blocked name on the full path, TCP) each appear as CLIENT_QUERY and
// CLIENT_RESPONSE with dig's address and port. The collector is then
// restarted: kordon reconnects and the later queries reach the new one.
func TestDnstapReadByDnstapLdns(t *testing.T) {
	t.Parallel()
	needTools(t, "fstrm_capture", "dnstap-ldns", "dig")
	dir := t.TempDir()
	sock := filepath.Join(dir, "tap.sock")
	exists := func() bool { _, err := os.Stat(sock); return err == nil }
	capture := startFstrmCapture(t, []string{"-u", sock}, filepath.Join(dir, "1.fstrm"), exists)
	h := newHarness(t, func(c *Config) { c.Dnstap = "unix:" + sock })
	host, port, _ := net.SplitHostPort(h.addr)
	dig := func(from string, sport int, args ...string) string {
		t.Helper()
		args = append([]string{"-b", from + "#" + strconv.Itoa(sport), "@" + host, "-p", port, "+tries=1", "+time=3"}, args...)
		out, err := exec.Command("dig", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	type want struct {
		name, from, proto, rcode string
		port                     int
	}
	var wants []want
	for _, q := range []struct {
		name, from, proto, rcode string
		args                     []string
	}{
		{name: "img.cdn.example.", from: "127.0.0.10", proto: "UDP", rcode: "NOERROR"}, // fast miss
		{name: "img.cdn.example.", from: "127.0.0.10", proto: "UDP", rcode: "NOERROR"}, // fast cache hit
		{name: "google.com.", from: "127.0.0.10", proto: "UDP", rcode: "NXDOMAIN"},     // blocked: full path
		{name: "api.example.", from: "127.0.0.11", proto: "TCP", rcode: "NOERROR", args: []string{"+tcp"}},
	} {
		netw := "udp"
		if q.proto == "TCP" {
			netw = "tcp"
		}
		p := freePort(t, netw)
		out := dig(q.from, p, append([]string{q.name, "A"}, q.args...)...)
		if !strings.Contains(out, "status: "+q.rcode) {
			t.Fatalf("dig %s: %s", q.name, out)
		}
		wants = append(wants, want{q.name, q.from, q.proto, q.rcode, p})
	}
	h.logEvents(t, len(wants)) // every query observed (the tap is queued at the same time)
	pollMetric := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) { // polling the writer, bounded
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	pollMetric("8 dnstap messages", func() bool { return testutil.ToFloat64(h.srv.metrics.tapMessages) >= 8 })
	// The flush runs every 200 ms; fstrm_capture writes what it read.
	capture.stop(t)
	first := ldnsMessages(ldns(t, capture.file))
	if len(first) != 2*len(wants) {
		t.Fatalf("dnstap-ldns decoded %d messages, want %d:\n%s", len(first), 2*len(wants), ldns(t, capture.file))
	}
	for i, w := range wants {
		cq, cr := first[2*i], first[2*i+1]
		for _, m := range []ldnsMessage{cq, cr} {
			if m.field("identity") != "node-1" || m.field("version") != "kordon" || m.field("query_address") != w.from ||
				m.field("query_port") != strconv.Itoa(w.port) || m.field("socket_protocol") != w.proto || m.field("socket_family") != "INET" {
				t.Errorf("query %d (%s) message:\n%s", i, w.name, m.text)
			}
		}
		if cq.field("type") != "CLIENT_QUERY" || !strings.Contains(cq.text, w.name+"\tIN\tA") || !strings.Contains(cq.text, "opcode: QUERY") {
			t.Errorf("query %d: CLIENT_QUERY:\n%s", i, cq.text)
		}
		if cr.field("type") != "CLIENT_RESPONSE" || !strings.Contains(cr.text, "rcode: "+w.rcode) || cr.field("response_time") == "" {
			t.Errorf("query %d: CLIENT_RESPONSE:\n%s", i, cr.text)
		}
	}
	if !strings.Contains(first[1].text, "192.0.2.1") || !strings.Contains(first[3].text, "192.0.2.1") {
		t.Errorf("answers missing:\n%s\n%s", first[1].text, first[3].text)
	}

	// The collector restarts: queries while it is gone are dropped and
	// counted, then kordon reconnects (it redials every second).
	probe := 0
	probeUntil := func(what string, connected float64) {
		t.Helper()
		for ; testutil.ToFloat64(h.srv.metrics.tapConnected) != connected; probe++ {
			if probe == 200 {
				t.Fatalf("dnstap: %s", what)
			}
			dig("127.0.0.10", freePort(t, "udp"), "r"+strconv.Itoa(probe)+".cdn.example.", "A")
			time.Sleep(50 * time.Millisecond) // pacing the probe queries; the loop is bounded
		}
	}
	probeUntil("the lost collector was not noticed", 0)
	second := startFstrmCapture(t, []string{"-u", sock}, filepath.Join(dir, "2.fstrm"), func() bool {
		c, err := net.Dial("unix", sock)
		if err != nil {
			return false
		}
		c.Close() // fstrm_capture drops a connection that sends nothing
		return true
	})
	probeUntil("did not reconnect", 1)
	if testutil.ToFloat64(h.srv.metrics.tapDropped) == 0 {
		t.Error("queries while the collector was down were not counted as dropped")
	}
	p := freePort(t, "udp")
	dig("127.0.0.10", p, "after.cdn.example.", "AAAA")
	h.srv.Close() // STOP; fstrm_capture answers FINISH
	second.stop(t)
	var found bool
	for _, m := range ldnsMessages(ldns(t, second.file)) {
		if m.field("type") == "CLIENT_RESPONSE" && m.field("query_port") == strconv.Itoa(p) && strings.Contains(m.text, "after.cdn.example.\tIN\tAAAA") {
			found = true
		}
	}
	if !found {
		t.Errorf("the query after the reconnect is not in the new collector's file:\n%s", ldns(t, second.file))
	}
}

// TestDnstapOverTCP checks the TCP transport with fstrm_capture.
func TestDnstapOverTCP(t *testing.T) {
	t.Parallel()
	needTools(t, "fstrm_capture", "dnstap-ldns")
	dir := t.TempDir()
	// Port 0: the kernel picks the port, read back from /proc once
	// fstrm_capture listens (it does not print it).
	capture := startFstrmCapture(t, []string{"-a", "127.0.0.1", "-p", "0"}, filepath.Join(dir, "tcp.fstrm"), func() bool { return true })
	addr := "127.0.0.1:" + strconv.Itoa(listeningPort(t, capture.cmd.Process.Pid))
	h := newHarness(t, func(c *Config) { c.Dnstap = "tcp:" + addr })
	h.query(t, "127.0.0.10", "img.cdn.example.", dns.TypeA, "udp")
	h.srv.Close()
	capture.stop(t)
	msgs := ldnsMessages(ldns(t, capture.file))
	if len(msgs) != 2 || msgs[0].field("type") != "CLIENT_QUERY" || msgs[1].field("type") != "CLIENT_RESPONSE" {
		t.Fatalf("decoded: %v", msgs)
	}
}

// TestDnstapNeverBlocks: with no collector at all, queries are answered
// and their messages counted as dropped.
func TestDnstapNeverBlocks(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "nobody.sock")
	h := newHarness(t, func(c *Config) { c.Dnstap = "unix:" + sock })
	for i := 0; i < 20; i++ {
		if r := h.query(t, "127.0.0.10", "n"+strconv.Itoa(i)+".cdn.example.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess {
			t.Fatalf("rcode %d", r.Rcode)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); testutil.ToFloat64(h.srv.metrics.tapDropped) < 20; time.Sleep(10 * time.Millisecond) { // polling, bounded
		if time.Now().After(deadline) {
			t.Fatalf("dropped %v, want 20", testutil.ToFloat64(h.srv.metrics.tapDropped))
		}
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}
