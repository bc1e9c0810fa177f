package alert

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/testtool"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestParseSyslogAddress(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, scheme, hostport, err string }{
		{in: "tcp://siem.example:6514", scheme: "tcp", hostport: "siem.example:6514"},
		{in: "tls://127.0.0.1:6514", scheme: "tls", hostport: "127.0.0.1:6514"},
		{in: "tls://[::1]:6514", scheme: "tls", hostport: "[::1]:6514"},
		{in: "udp://127.0.0.1:514", err: `alert: syslog address "udp://127.0.0.1:514": want tcp://host:port or tls://host:port`},
		{in: "tcp://127.0.0.1", err: `alert: syslog address "tcp://127.0.0.1": want tcp://host:port or tls://host:port`},
		{in: "127.0.0.1:514", err: `alert: syslog address "127.0.0.1:514": want tcp://host:port or tls://host:port`},
		{in: "tcp://h:1/path", err: `alert: syslog address "tcp://h:1/path": want tcp://host:port or tls://host:port`},
	} {
		scheme, hostport, err := ParseSyslogAddress(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: error %v, want %s", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || scheme != tc.scheme || hostport != tc.hostport {
			t.Errorf("%q: %q %q %v", tc.in, scheme, hostport, err)
		}
	}
}

func TestSyslogFrame(t *testing.T) {
	t.Parallel()
	a := Alert{ID: 7, Time: time.Date(2026, 11, 22, 12, 33, 8, 120000000, time.UTC), Severity: "high", Kind: KindExfiltration,
		Node: "node-a", Namespace: "shop", Pod: "report-worker", Domain: "reports.example", Score: 1.4, Action: "quarantined",
		Policy: `shop/we"ird]\name`, Message: "exfiltration over DNS to reports.example"}
	id, _ := WebhookID(a)
	for _, tc := range []struct {
		format, want string
	}{
		{SyslogSD, `<107>1 2026-11-22T12:33:08.120000Z node-a kordon - exfiltration [kordon@32473 id="7" eventId="` + id +
			`" severity="high" kind="exfiltration" node="node-a" namespace="shop" pod="report-worker" domain="reports.example" score="1.4" action="quarantined" policy="shop/we\"ird\]\\name"] exfiltration over DNS to reports.example`},
		{SyslogJSON, `<107>1 2026-11-22T12:33:08.120000Z node-a kordon - exfiltration - {"id":7,`},
	} {
		b, err := SyslogFrame(a, tc.format, 13, "-")
		if err != nil {
			t.Fatal(err)
		}
		n, msg, _ := bytes.Cut(b, []byte(" "))
		if l, _ := strconv.Atoi(string(n)); l != len(msg) {
			t.Errorf("%s: octet count %s, message %d bytes", tc.format, n, len(msg))
		}
		if !strings.HasPrefix(string(msg), tc.want) {
			t.Errorf("%s:\n got %s\nwant %s", tc.format, msg, tc.want)
		}
	}
	// sd+json: the JSON body is the feed's schema, whole.
	b, _ := SyslogFrame(a, SyslogSDJSON, 13, "-")
	body := b[bytes.LastIndex(b, []byte("] "))+2:]
	var back Alert
	if err := json.Unmarshal(body, &back); err != nil || back.ID != 7 || back.Policy != a.Policy || back.Score != 1.4 {
		t.Errorf("json body %s: %v", body, err)
	}
	// No node: the configured hostname; severities map.
	b, _ = SyslogFrame(Alert{Kind: KindBlocked, Severity: "low", Time: a.Time}, SyslogSD, 4, "kordon-controller-0")
	if !strings.Contains(string(b), " <37>1 2026-11-22T12:33:08.120000Z kordon-controller-0 kordon - blocked [kordon@32473 ") {
		t.Errorf("no node: %s", b)
	}
}

// rsyslog is Debian's rsyslogd on loopback with its own config: imtcp
// (octet-counted framing is on by default), optionally TLS through the
// gtls driver, writing each message's raw text to out with omfile.
type rsyslog struct {
	dir, out string
	port     int
	tlsFiles []string // ca, cert, key
	cmd      *exec.Cmd
	log      bytes.Buffer
}

func startRsyslog(t *testing.T, r *rsyslog) {
	t.Helper()
	portFile := filepath.Join(r.dir, "port")
	os.Remove(portFile)
	driver, global := "", ""
	if r.tlsFiles != nil {
		global = `global(DefaultNetstreamDriverCAFile="` + r.tlsFiles[0] + `" DefaultNetstreamDriverCertFile="` + r.tlsFiles[1] + `" DefaultNetstreamDriverKeyFile="` + r.tlsFiles[2] + `")`
		driver = `StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"`
	}
	conf := `global(workDirectory="` + r.dir + `" maxMessageSize="64k")
` + global + `
module(load="imtcp" ` + driver + `)
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="out") { action(type="omfile" file="` + r.out + `" template="raw" flushOnTXEnd="on" asyncWriting="off") }
input(type="imtcp" address="127.0.0.1" port="` + strconv.Itoa(r.port) + `" listenPortFileName="` + portFile + `" ruleset="out")
`
	cfgPath := filepath.Join(r.dir, "rsyslog.conf")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	r.log.Reset()
	r.cmd = exec.Command(needRsyslog(t), "-n", "-f", cfgPath, "-i", filepath.Join(r.dir, "rsyslogd.pid"))
	r.cmd.Stdout, r.cmd.Stderr = &r.log, &r.log
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd := r.cmd
	t.Cleanup(func() { stopProcess(t, cmd) })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) { // polling for its port, bounded
		p := r.port // a restart listens where the first start did
		if p == 0 {
			// rsyslog writes the port it bound to port 0 here.
			b, _ := os.ReadFile(portFile)
			p, _ = strconv.Atoi(string(bytes.TrimSpace(b)))
		}
		if p > 0 {
			if c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(p)); err == nil {
				c.Close()
				r.port = p
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("rsyslogd not listening:\n%s\n%s", conf, r.log.String())
		}
	}
}

// stopProcess sends SIGTERM and waits (SIGKILL after 10 s).
func stopProcess(t *testing.T, cmd *exec.Cmd) {
	if cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Errorf("%s did not stop on SIGTERM", cmd.Path)
	}
}

var sdID = regexp.MustCompile(`\[kordon@32473 id="(\d+)"`)

// received counts each alert ID in rsyslog's file.
func (r *rsyslog) received(t *testing.T) map[uint64]int {
	t.Helper()
	b, err := os.ReadFile(r.out)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	got := map[uint64]int{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		m := sdID.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("rsyslog stored a line without the SD-ID: %q", line)
		}
		// The JSON body is the feed's schema, and intact.
		var a Alert
		if err := json.Unmarshal([]byte(line[strings.LastIndex(line, "] ")+2:]), &a); err != nil || strconv.FormatUint(a.ID, 10) != m[1] {
			t.Fatalf("rsyslog line's JSON body: %v: %q", err, line)
		}
		id, _ := strconv.ParseUint(m[1], 10, 64)
		got[id]++
	}
	return got
}

func (r *rsyslog) waitFor(t *testing.T, ids uint64) map[uint64]int {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) { // polling rsyslog's file, bounded
		got := r.received(t)
		if len(got) == int(ids) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("rsyslog has %d of %d alerts: %v\n%s", len(got), ids, got, r.log.String())
		}
	}
}

// needRsyslog returns the path of rsyslogd (testtool.Need).
func needRsyslog(t *testing.T) string {
	t.Helper()
	return testtool.Need(t, "rsyslog", "rsyslogd", "/usr/sbin/rsyslogd")
}

func publishN(t *testing.T, f *Feed, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if _, ok, err := f.Publish(context.Background(), sample(i)); err != nil || !ok {
			t.Fatalf("publish %d: %v %v", i, ok, err)
		}
	}
}

// TestSyslogToRsyslogSurvivesRestart streams alerts to a real rsyslog over
// TCP and restarts it mid-stream: every alert is stored, the ones raised
// while it was down included; a duplicate is only ever an alert whose
// delivery failed (at least once).
func TestSyslogToRsyslogSurvivesRestart(t *testing.T) {
	t.Parallel()
	needRsyslog(t)
	dir := t.TempDir()
	r := &rsyslog{dir: dir, out: filepath.Join(dir, "alerts.log")}
	startRsyslog(t, r)
	f := newTestFeed(t, filepath.Join(dir, "feed"), func(c *Config) {
		c.Syslog = []SyslogConfig{{Name: "siem", Address: "tcp://127.0.0.1:" + strconv.Itoa(r.port),
			Retry: Retry{MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}}}
	})
	defer f.Close()
	publishN(t, f, 1, 20)
	r.waitFor(t, 20)

	// Mid-stream: alerts keep coming while rsyslog stops.
	done := make(chan struct{})
	go func() {
		defer close(done)
		stopProcess(t, r.cmd)
	}()
	publishN(t, f, 21, 40)
	<-done
	publishN(t, f, 41, 60) // raised while it is down
	errors := func() float64 { return testutil.ToFloat64(f.metrics.delivered.WithLabelValues("siem", "error")) }
	for deadline := time.Now().Add(10 * time.Second); errors() == 0; time.Sleep(10 * time.Millisecond) { // polling the retries, bounded
		if time.Now().After(deadline) {
			t.Fatal("no failed delivery while rsyslog was down")
		}
	}
	if p := testutil.ToFloat64(f.metrics.pending.WithLabelValues("siem")); p == 0 {
		t.Error("nothing pending while rsyslog is down")
	}
	startRsyslog(t, r) // same port, same file
	publishN(t, f, 61, 80)
	got := r.waitFor(t, 80)
	dups := 0
	for id := uint64(1); id <= 80; id++ {
		if got[id] == 0 {
			t.Errorf("alert %d lost", id)
		}
		dups += got[id] - 1
	}
	if float64(dups) > errors() {
		t.Errorf("%d duplicates, more than the %v failed deliveries", dups, errors())
	}
	t.Logf("80 alerts, rsyslog restarted mid-stream: none lost, %d duplicated, %v failed attempts", dups, errors())
	// The cursor is on disk: a restarted feed sends nothing again.
	cursor, err := os.ReadFile(filepath.Join(dir, "feed", "syslog-siem.cursor"))
	if err != nil || strings.TrimSpace(string(cursor)) != "80" {
		t.Errorf("cursor %q %v", cursor, err)
	}
}

// writePKI writes the standard library's test certificate for
// 127.0.0.1 (net/http/httptest's, self-signed) and its key for rsyslog,
// and returns a pool trusting it.
func writePKI(t *testing.T, dir string) (files []string, pool *x509.CertPool) {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS()
	srv.Close()
	cert := srv.TLS.Certificates[0]
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pool = x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	ca := write("ca.pem", "CERTIFICATE", cert.Certificate[0])
	return []string{ca, ca, write("key.pem", "PRIVATE KEY", keyDER)}, pool
}

// TestSyslogTLSToRsyslog: tls:// to rsyslog's gtls driver, the server
// verified against its certificate; trusting only the system roots,
// nothing is delivered.
func TestSyslogTLSToRsyslog(t *testing.T) {
	t.Parallel()
	needRsyslog(t)
	testtool.Need(t, "rsyslog-gnutls", "/usr/lib/*/rsyslog/lmnsd_gtls.so")
	dir := t.TempDir()
	files, pool := writePKI(t, dir)
	r := &rsyslog{dir: dir, out: filepath.Join(dir, "alerts.log"), tlsFiles: files}
	startRsyslog(t, r)
	addr := "tls://127.0.0.1:" + strconv.Itoa(r.port)
	f := newTestFeed(t, filepath.Join(dir, "feed"), func(c *Config) {
		c.Syslog = []SyslogConfig{
			{Name: "siem", Address: addr, TLS: &tls.Config{RootCAs: pool}, Format: SyslogSDJSON},
			{Name: "wrong-ca", Address: addr, Retry: Retry{MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond}},
		}
	})
	defer f.Close()
	publishN(t, f, 1, 5)
	got := r.waitFor(t, 5)
	for id, n := range got {
		if n != 1 {
			t.Errorf("alert %d stored %d times", id, n)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); testutil.ToFloat64(f.metrics.delivered.WithLabelValues("wrong-ca", "error")) == 0; time.Sleep(10 * time.Millisecond) { // polling, bounded
		if time.Now().After(deadline) {
			t.Fatal("the sink with the wrong CA did not fail")
		}
	}
	if n := testutil.ToFloat64(f.metrics.delivered.WithLabelValues("wrong-ca", "ok")); n != 0 {
		t.Errorf("wrong CA delivered %v alerts", n)
	}
}

func TestReadSyslogFrame(t *testing.T) {
	t.Parallel()
	a := Alert{ID: 3, Kind: KindBlocked, Severity: "low", Domain: "x.example", Time: time.Unix(0, 0)}
	f1, _ := SyslogFrame(a, SyslogSDJSON, 13, "-")
	a.ID = 4
	f2, _ := SyslogFrame(a, SyslogSD, 13, "-")
	r := bufio.NewReader(bytes.NewReader(append(f1, f2...)))
	for _, want := range [][]byte{f1, f2} {
		m, err := ReadSyslogFrame(r)
		if err != nil || m == "" || !bytes.HasSuffix(want, []byte(m)) || len(want) != len(m)+len(strconv.Itoa(len(m)))+1 {
			t.Fatalf("read %q, %v", m, err)
		}
	}
	for _, tc := range []struct{ in, err string }{
		{"12x", "alert: syslog frame: bad octet count at byte 2"},
		{" 1 a", "alert: syslog frame: bad octet count at byte 0"},
		{"012 a", "alert: syslog frame: bad octet count at byte 0"},
		{"99999999 a", "alert: syslog frame: bad octet count at byte 7"},
		{"2000000 a", "alert: syslog frame: 2000000 octets is more than 1 MiB"},
		{"5 abc", "unexpected EOF"},
	} {
		if _, err := ReadSyslogFrame(bufio.NewReader(strings.NewReader(tc.in))); err == nil || err.Error() != tc.err {
			t.Errorf("%q: %v, want %s", tc.in, err, tc.err)
		}
	}
}

func FuzzReadSyslogFrame(f *testing.F) {
	f.Add([]byte("5 hello3 abc"))
	f.Add([]byte("0 "))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		for i := 0; i < 100; i++ {
			m, err := ReadSyslogFrame(r)
			if err != nil {
				return
			}
			if len(m) > len(b) {
				t.Fatalf("message of %d bytes from %d", len(m), len(b))
			}
		}
	})
}
