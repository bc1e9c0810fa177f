package replay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/internal/testtool"
	"github.com/miekg/dns"
)

// findUnbound returns Debian's unbound, or skips (loudly) when it is not
// installed, unless KORDON_E2E_REQUIRED=1 makes that a failure.
func findUnbound(t *testing.T) string {
	t.Helper()
	return testtool.Need(t, "unbound", "unbound", "/usr/sbin/unbound")
}

// freePort returns a loopback port free for UDP and TCP at the time asked.
func freePort(t *testing.T) int {
	t.Helper()
	for i := 0; i < 20; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		ln.Close()
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no free loopback port")
	return 0
}

// collectDnstap accepts unbound's dnstap connections on a Unix socket
// (bidirectional Frame Streams) and writes their frames, as they come, to
// one dnstap file, as `dnstap -u SOCKET -w FILE` does. It returns the
// count of frames written so far and a function that closes the socket
// and waits for the file to be complete.
func collectDnstap(t *testing.T, sock, path string) (*atomic.Int64, func()) {
	t.Helper()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := dnstap.NewWriter(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var frames atomic.Int64
	go func() {
		var werr error
		for {
			conn, err := ln.Accept()
			if err != nil {
				break
			}
			r, err := dnstap.NewReader(conn, &dnstap.ReaderOptions{Bidirectional: true, Timeout: 5 * time.Second})
			if err != nil {
				werr = err
				conn.Close()
				continue
			}
			buf := make([]byte, 1<<20)
			for {
				n, err := r.ReadFrame(buf)
				if err != nil {
					break // EOF, or unbound gone before the FINISH handshake
				}
				if _, err := w.WriteFrame(buf[:n]); err != nil {
					werr = err
				}
				frames.Add(1)
			}
			conn.Close()
		}
		if err := w.Close(); err != nil && werr == nil {
			werr = err
		}
		if err := f.Close(); err != nil && werr == nil {
			werr = err
		}
		done <- werr
	}()
	return &frames, func() {
		ln.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("dnstap file: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("dnstap collector did not finish")
		}
	}
}

const unboundConf = `server:
  verbosity: 1
  interface: 127.0.0.1
  port: %d
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "%s"
  pidfile: ""
  use-syslog: no
  logfile: "%s"
  num-threads: 1
  so-reuseport: no
  outgoing-interface: 127.0.0.1
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  qname-minimisation: no
forward-zone:
  name: "."
  forward-addr: %s
dnstap:
  dnstap-enable: yes
  dnstap-socket-path: "%s"
  dnstap-send-identity: no
  dnstap-send-version: no
  dnstap-log-client-query-messages: yes
  dnstap-log-client-response-messages: yes
`

// startUnbound runs Debian's unbound on 127.0.0.1, forwarding every name
// to upstream (loopback only) and logging client queries and responses
// over dnstap to sock. It returns its address and a stop function that
// waits for unbound to exit (it flushes dnstap on SIGTERM), and how many
// readiness probes it sent.
func startUnbound(t *testing.T, bin, dir, upstream, sock string) (string, func(), int) {
	t.Helper()
	port := freePort(t)
	host, uport, _ := net.SplitHostPort(upstream)
	conf := filepath.Join(dir, "unbound.conf")
	logf := filepath.Join(dir, "unbound.log")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(unboundConf, port, dir, logf, host+"@"+uport, sock)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-d", "-p", "-c", conf)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// Ready when it answers. Probes are logged like any query and
	// replayed too, and a slow machine sends more than one: they ask a
	// name in a domain of their own, so they never count towards
	// exfil.example's findings.
	c := &dns.Client{Timeout: 300 * time.Millisecond}
	deadline := time.Now().Add(15 * time.Second)
	probes := 0
	for {
		probes++
		m := new(dns.Msg)
		m.SetQuestion("ready.probe.example.", dns.TypeA)
		if r, _, err := c.Exchange(m, addr); err == nil && r.Rcode == dns.RcodeSuccess {
			break
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(logf)
			t.Fatalf("unbound exited: %v\n%s%s", err, stderr.String(), log)
		default:
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			log, _ := os.ReadFile(logf)
			t.Fatalf("unbound did not answer on %s\n%s%s", addr, stderr.String(), log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return addr, func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}, probes
}

// TestUnboundDnstapMatchesQueryLog sends the same queries, from
// 127.0.0.1, to Debian's unbound (dnstap on) and to kordon's resolver
// (query log on), both forwarding to a loopback authoritative server: a
// base32 tunnel over TXT and A and some benign names. The dnstap file
// unbound wrote replays to the same alerts as kordon's query log.
func TestUnboundDnstapMatchesQueryLog(t *testing.T) {
	t.Parallel()
	bin := findUnbound(t)
	dir, err := os.MkdirTemp("", "kordon-unbound-") // short: a Unix socket path has 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	authAddr := startAuth(t)
	res := startResolver(t, dir, authAddr)
	kordonAddr := res.addr

	sock, tapPath := filepath.Join(dir, "dnstap.sock"), filepath.Join(dir, "unbound.dnstap")
	frames, finishTap := collectDnstap(t, sock, tapPath)
	unboundAddr, stopUnbound, probes := startUnbound(t, bin, dir, authAddr, sock)

	sent := 0
	for _, q := range tunnelQueries() {
		ask(t, kordonAddr, q.name, q.qtype)
		ask(t, unboundAddr, q.name, q.qtype)
		sent++
		time.Sleep(q.gap)
	}
	// unbound sends dnstap from its own thread and drops what is queued
	// when it exits: wait for a query and a response per query and probe
	// sent (a probe sent before unbound listened leaves none: the wait is
	// bounded).
	for deadline := time.Now().Add(10 * time.Second); frames.Load() < int64(2*(sent+probes)) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	stopUnbound()
	finishTap()
	res.stop()
	qlogPath := res.qlogPath

	// Every finding, not only those past the cooldown: a stronger match.
	read := func(path string) ([]alert.Alert, Stats) {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		got, stats := replayAll(t, Config{Cooldown: -1}, file{filepath.Base(path), data})
		return got, stats[0]
	}
	fromLog, logStats := read(qlogPath)
	fromTap, tapStats := read(tapPath)
	t.Logf("query log: %+v; dnstap: %+v", logStats, tapStats)
	if logStats.Records != sent || logStats.Skipped != 0 {
		t.Fatalf("query log: %d records (%d skipped), sent %d", logStats.Records, logStats.Skipped, sent)
	}
	// unbound logged every query sent, and the probes it answered.
	if tapStats.Format != FormatDnstap || tapStats.Records < sent || tapStats.Skipped != 0 {
		t.Fatalf("dnstap: %+v, sent %d", tapStats, sent)
	}
	if len(fromLog) == 0 {
		t.Fatal("the query log raised no alert")
	}
	type key struct {
		Kind, Severity, Domain, ClientIP string
		Queries, Unique                  int
	}
	summarise := func(as []alert.Alert) []key {
		var out []key
		for _, a := range as {
			var ev struct {
				Queries int `json:"queries"`
				Unique  int `json:"uniqueSubdomains"`
			}
			if err := jsonUnmarshal(a.Evidence, &ev); err != nil {
				t.Fatal(err)
			}
			out = append(out, key{a.Kind, a.Severity, a.Domain, a.ClientIP, ev.Queries, ev.Unique})
		}
		return out
	}
	if g, w := fmt.Sprint(summarise(fromTap)), fmt.Sprint(summarise(fromLog)); g != w {
		t.Fatalf("dnstap alerts %s\nquery log alerts %s", g, w)
	}
	for i := range fromLog {
		if d := fromTap[i].Time.Sub(fromLog[i].Time); d < -time.Second || d > time.Second {
			t.Errorf("alert %d: dnstap time %s, query log %s", i, fromTap[i].Time, fromLog[i].Time)
		}
	}
	t.Logf("%d alerts from each: %s", len(fromLog), fromLog[0].Message)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
