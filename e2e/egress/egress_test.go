// Package egress_test runs the real kordon binary (kordon dev
// --egress-firewall) in a node network namespace and drives real traffic
// from pod namespaces to servers on TEST-NET addresses in an outside
// namespace: DNS through the intercepted resolver, TCP and UDP
// connections allowed or refused by the kernel, the flow log and the alert
// feed. Everything stays inside namespaces the test creates (see
// internal/netns); they are deleted at the end, failed or not.
package egress_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/kordon-dev/kordon/internal/netns"
	"github.com/miekg/dns"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// kordonBin builds the binary under test once per package run.
func kordonBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kordon-egress-e2e")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "kordon")
		out, err := exec.Command("go", "build", "-o", binPath, "../../cmd/kordon").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// The shop of these tests: pod 0 is under an Enforce policy, pod 1 under an
// Audit one, pod 2 has none.
const workloadsYAML = `
- {name: web, namespace: shop, serviceAccount: web, labels: {app: web}, ips: [10.244.0.2, "fd00:244:0::2"], node: dev}
- {name: batch, namespace: shop, serviceAccount: batch, labels: {app: batch}, ips: [10.244.1.2, "fd00:244:1::2"], node: dev}
- {name: legacy, namespace: legacy, serviceAccount: legacy, labels: {app: legacy}, ips: [10.244.2.2, "fd00:244:2::2"], node: dev}
- {name: jobs, namespace: shop, serviceAccount: jobs, labels: {app: jobs}, ips: [10.244.3.2, "fd00:244:3::2"], node: dev}
`

const egressYAML = `
apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata: {name: web-egress, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  allow: [api.shop.example, cdn.shop.example, short.shop.example, "*.many.shop.example", v6.shop.example, udp.shop.example]
---
apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata: {name: batch-egress, namespace: shop}
spec:
  selector: {matchLabels: {app: batch}}
  mode: Audit
  allow: [api.shop.example]
---
# No allow list (not filtered), but a direct connection quarantines the
# address for this workload.
apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata: {name: jobs-watch, namespace: shop}
spec:
  selector: {matchLabels: {app: jobs}}
  deny: ["*.adnet.example"]
  detection: {action: Quarantine}
`

const manyNames = 150

// zonesYAML: short.shop.example has a 1 s TTL (with --egress-ttl-grace 1s
// its address expires for new connections 2 s after the answer).
func zonesYAML() string {
	var b strings.Builder
	b.WriteString(`zones:
- origin: shop.example
  ttl: 300
  records:
  - "api A 198.51.100.10"
  - "short 1 A 198.51.100.11"
  - "v6 AAAA 2001:db8:100::10"
  - "udp A 198.51.100.12"
  - "cdn CNAME edge"
  - "edge A 198.51.100.13"
`)
	// Many names, each with its own address, for resolve-then-connect.
	// (198.51.100.50-199: never an address the tests use as a literal.)
	for i := 0; i < manyNames; i++ {
		fmt.Fprintf(&b, "  - \"n%d.many 2 A 198.51.100.%d\"\n", i, 50+i)
	}
	return b.String()
}

type kordon struct {
	t        *testing.T
	tp       *netns.Topology
	bin      string
	args     []string
	cmd      *exec.Cmd
	out      *bytes.Buffer
	outMu    *sync.Mutex
	dir      string
	http     string
	flowLog  string
	queryLog string
	done     chan struct{}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// startKordon writes the config and runs kordon dev --egress-firewall in the
// node namespace.
func startKordon(t *testing.T, tp *netns.Topology) *kordon {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		filepath.Join(cfg, "workloads.yaml"): workloadsYAML,
		filepath.Join(cfg, "egress.yaml"):    egressYAML,
		filepath.Join(dir, "zones.yaml"):     zonesYAML(),
	} {
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	k := &kordon{t: t, tp: tp, bin: kordonBin(t), dir: dir, out: new(bytes.Buffer), outMu: new(sync.Mutex),
		flowLog: filepath.Join(dir, "flows.log"), queryLog: filepath.Join(dir, "queries.log")}
	args := []string{"dev", "--config", cfg, "--upstream-zones", filepath.Join(dir, "zones.yaml"),
		"--egress-firewall", "--egress-ttl-grace", "1s", "--flow-interval", "1s",
		"--dns-listen", netip.AddrPortFrom(tp.DNS4, 53).String(),
		"--http-listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0",
		"--state-dir", filepath.Join(dir, "state"), "--addr-file", filepath.Join(dir, "addr"),
		"--query-log", k.queryLog, "--flow-log", k.flowLog}
	for _, p := range tp.Internal {
		args = append(args, "--internal-cidr", p.String())
	}
	k.args = args
	k.start()
	t.Cleanup(k.stop)
	return k
}

func (k *kordon) start() {
	t := k.t
	t.Helper()
	_ = os.Remove(filepath.Join(k.dir, "addr"))
	k.cmd = k.tp.Node.Command(append([]string{k.bin}, k.args...)...)
	k.cmd.Stdout = lockedWriter{k.outMu, k.out}
	k.cmd.Stderr = lockedWriter{k.outMu, k.out}
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	k.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(k.cmd, k.done)
	addrFile := filepath.Join(k.dir, "addr")
	poll(t, 30*time.Second, "kordon dev ready", func() bool {
		select {
		case <-k.done:
			t.Fatalf("kordon dev exited:\n%s", k.output())
		default:
		}
		b, err := os.ReadFile(addrFile)
		if err != nil {
			return false
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "http="); ok {
				k.http = v
				return true
			}
		}
		return false
	})
}

// kill stops kordon dev with SIGKILL, as a crashed or OOM-killed agent.
func (k *kordon) kill() {
	_ = k.cmd.Process.Signal(syscall.SIGKILL)
	<-k.done
}

func (k *kordon) stop() {
	if k.cmd == nil || k.cmd.Process == nil {
		return
	}
	select {
	case <-k.done:
		return
	default:
	}
	_ = k.cmd.Process.Signal(os.Interrupt)
	select {
	case <-k.done:
	case <-time.After(15 * time.Second):
		_ = k.cmd.Process.Kill()
		<-k.done
	}
	if k.t.Failed() {
		k.t.Logf("kordon dev output:\n%s", k.output())
	}
}

func (k *kordon) output() string {
	k.outMu.Lock()
	defer k.outMu.Unlock()
	s := k.out.String()
	if len(s) > 6000 {
		s = s[len(s)-6000:]
	}
	return s
}

// poll calls f until it returns true or the deadline passes.
func poll(t *testing.T, within time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for wait := time.Millisecond; ; wait = min(wait*2, 100*time.Millisecond) {
		if f() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(wait)
	}
}

// query asks server from the pod, over UDP (or TCP).
func query(pod *netns.Pod, server netip.AddrPort, name string, qtype uint16, network string) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(1232, false)
	var resp *dns.Msg
	err := pod.Do(func() error {
		c := &dns.Client{Net: network, Timeout: 3 * time.Second}
		var err error
		resp, _, err = c.Exchange(m, server.String())
		return err
	})
	return resp, err
}

func dnsAddr(tp *netns.Topology) netip.AddrPort { return netip.AddrPortFrom(tp.DNS4, 53) }

// resolve asks kordon for name from the pod and returns the first address.
func resolve(t *testing.T, tp *netns.Topology, pod *netns.Pod, name string, qtype uint16) netip.Addr {
	t.Helper()
	resp, err := query(pod, dnsAddr(tp), name, qtype, "udp")
	if err != nil {
		t.Fatalf("resolve %s: %v", name, err)
	}
	for _, rr := range resp.Answer {
		switch a := rr.(type) {
		case *dns.A:
			return netip.MustParseAddr(a.A.String())
		case *dns.AAAA:
			return netip.MustParseAddr(a.AAAA.String())
		}
	}
	t.Fatalf("resolve %s: no address in %s answer", name, dns.RcodeToString[resp.Rcode])
	return netip.Addr{}
}

func dial(pod *netns.Pod, network string, dst netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := pod.Do(func() (err error) {
		c, err = net.DialTimeout(network, dst.String(), 3*time.Second)
		return err
	})
	return c, err
}

// echoServers listen in the outside namespace and echo what they read.
type echoServers struct {
	mu  sync.Mutex
	lns []net.Listener
	got map[string]int64 // remote ip -> bytes read, on finished connections
}

func (e *echoServers) listen(t *testing.T, ns *netns.NS, addr string) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.lns = append(e.lns, ln)
	e.mu.Unlock()
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(c, c)
				e.mu.Lock()
				e.got[netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().String()] += n
				e.mu.Unlock()
			}()
		}
	}()
}

// roundTrip writes n bytes and reads them back.
func roundTrip(c net.Conn, n int) error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := bytes.Repeat([]byte("k"), n)
	errc := make(chan error, 1)
	go func() { _, err := c.Write(buf); errc <- err }()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	return <-errc
}

// anyIP makes the outside namespace accept connections on every address of
// the TEST-NET ranges (local routes), so servers can listen on 0.0.0.0.
func anyIP(t *testing.T, tp *netns.Topology) {
	for _, p := range []string{"198.51.100.0/24", "203.0.113.0/24"} {
		tp.Outside.Exec(t, "ip", "route", "add", "local", p, "dev", "lo")
	}
	tp.Outside.Exec(t, "ip", "-6", "route", "add", "local", "2001:db8:100::/48", "dev", "lo")
}

type flowRecord struct {
	Client struct {
		IP, Namespace, Pod string
	} `json:"client"`
	Proto    string `json:"proto"`
	Dst      string `json:"dst"`
	Dport    int    `json:"dport"`
	BytesOut int64  `json:"bytesOut"`
	BytesIn  int64  `json:"bytesIn"`
	DNSName  string `json:"dnsName"`
	Verdict  string `json:"verdict"`
	Policy   string `json:"policy"`
	Final    bool   `json:"final"`
}

func readFlows(t *testing.T, path string) []flowRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []flowRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r flowRecord
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Verdict != "" {
			out = append(out, r)
		}
	}
	return out
}

func findFlow(t *testing.T, path string, match func(r flowRecord) bool) (flowRecord, bool) {
	for _, r := range readFlows(t, path) {
		if match(r) {
			return r, true
		}
	}
	return flowRecord{}, false
}

type feedAlert struct {
	Kind, Namespace, Pod, Domain, Action, Message string
}

// httpClient reaches kordon dev's HTTP API on the node namespace's loopback.
func (k *kordon) httpClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := k.tp.Node.Do(func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}
}

// alerts reads the feed through the node namespace's loopback.
func (k *kordon) alerts(t *testing.T) []feedAlert {
	t.Helper()
	resp, err := k.httpClient().Get("http://" + k.http + "/v1/alerts")
	if err != nil {
		t.Logf("alerts: %v", err)
		return nil
	}
	defer resp.Body.Close()
	var body struct {
		Alerts []feedAlert `json:"alerts"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Logf("alerts: %v", err)
	}
	return body.Alerts
}

func (k *kordon) waitAlert(t *testing.T, what string, match func(a feedAlert) bool) feedAlert {
	t.Helper()
	var found feedAlert
	poll(t, 20*time.Second, what, func() bool {
		for _, a := range k.alerts(t) {
			if match(a) {
				found = a
				return true
			}
		}
		return false
	})
	return found
}

func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EACCES)
}

// TestEgressFirewall is the story end to end on one topology (starting
// kordon dev and the namespaces once keeps the suite quick); each subtest
// is one claim of the egress firewall.
func TestEgressFirewall(t *testing.T) {
	tp := netns.NewTopology(t, 4)
	web, batch, legacy, jobs := tp.Pods[0], tp.Pods[1], tp.Pods[2], tp.Pods[3]
	anyIP(t, tp)
	echo := &echoServers{got: map[string]int64{}}
	for _, a := range []string{":443", "0.0.0.0:6379", "0.0.0.0:853"} {
		echo.listen(t, tp.Outside, a)
	}
	// An outside resolver that would lie (it answers 192.0.2.66 for
	// everything): queries to it must be answered by kordon instead.
	rogue := startRogueResolver(t, tp.Outside, "203.0.113.53:53")
	k := startKordon(t, tp)

	t.Run("allowed name connects and moves data", func(t *testing.T) {
		ip := resolve(t, tp, web, "api.shop.example", dns.TypeA)
		c, err := dial(web, "tcp", netip.AddrPortFrom(ip, 443))
		if err != nil {
			t.Fatalf("connect to %s (from an allowed answer): %v", ip, err)
		}
		defer c.Close()
		if err := roundTrip(c, 1<<20); err != nil {
			t.Fatal(err)
		}
		c.Close()
		r := waitFlow(t, k, "final flow record of the 1 MiB upload", func(r flowRecord) bool {
			return r.Client.IP == "10.244.0.2" && r.Dst == ip.String() && r.Dport == 443 && r.Final
		})
		if r.Verdict != "allowed" || r.DNSName != "api.shop.example" || r.Client.Pod != "web" {
			t.Errorf("flow record: %+v", r)
		}
		// 1 MiB each way plus TCP/IP headers: within 10%.
		for dir, n := range map[string]int64{"bytesOut": r.BytesOut, "bytesIn": r.BytesIn} {
			if n < 1<<20 || n > (1<<20)*11/10 {
				t.Errorf("%s = %d, want 1 MiB plus headers", dir, n)
			}
		}
	})

	t.Run("CNAME chain answer opens the final address", func(t *testing.T) {
		// cdn.shop.example (allowed) is a CNAME for edge.shop.example (not
		// in the allow list): the answer's chain ends at 198.51.100.13.
		ip := resolve(t, tp, web, "cdn.shop.example", dns.TypeA)
		if ip != netip.MustParseAddr("198.51.100.13") {
			t.Fatalf("cdn.shop.example: %s", ip)
		}
		c, err := dial(web, "tcp", netip.AddrPortFrom(ip, 443))
		if err != nil {
			t.Fatalf("connect to the end of the CNAME chain: %v", err)
		}
		c.Close()
	})

	t.Run("UDP to an allowed address", func(t *testing.T) {
		ip := resolve(t, tp, web, "udp.shop.example", dns.TypeA)
		var pc net.PacketConn
		if err := tp.Outside.Do(func() (err error) {
			pc, err = net.ListenPacket("udp", netip.AddrPortFrom(ip, 9999).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		c, err := dial(web, "udp", netip.AddrPortFrom(ip, 9999))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 16)
		if n, _, err := pc.ReadFrom(buf); err != nil || string(buf[:n]) != "hello" {
			t.Fatalf("udp datagram to an allowed address: %q %v", buf[:n], err)
		}
	})

	t.Run("IP literal refused under Enforce within 3s", func(t *testing.T) {
		start := time.Now()
		c, err := dial(web, "tcp", netip.MustParseAddrPort("203.0.113.200:6379"))
		if err == nil {
			c.Close()
			t.Fatal("connection to an address no answer gave was allowed")
		}
		if el := time.Since(start); !isRefused(err) || el > 3*time.Second {
			t.Fatalf("want a fast refusal, got %v after %s", err, el)
		}
		waitFlow(t, k, "blocked record", func(r flowRecord) bool {
			return r.Client.IP == "10.244.0.2" && r.Dst == "203.0.113.200" && r.Verdict == "blocked"
		})
		k.waitAlert(t, "direct-egress alert (blocked)", func(a feedAlert) bool {
			return a.Kind == "direct-egress" && a.Pod == "web" && a.Domain == "203.0.113.200"
		})
	})

	t.Run("IP literal let through and alerted under Audit and without policy", func(t *testing.T) {
		for _, tc := range []struct {
			pod     *netns.Pod
			name    string
			verdict string
		}{{batch, "batch", "audit"}, {legacy, "legacy", "allowed"}} {
			c, err := dial(tc.pod, "tcp", netip.MustParseAddrPort("203.0.113.200:6379"))
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if err := roundTrip(c, 64<<10); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			c.Close()
			waitFlow(t, k, tc.name+" flow", func(r flowRecord) bool {
				return r.Client.Pod == tc.name && r.Dst == "203.0.113.200" && r.Verdict == tc.verdict && r.Final && r.BytesOut >= 64<<10
			})
			k.waitAlert(t, tc.name+" direct-egress alert", func(a feedAlert) bool {
				return a.Kind == "direct-egress" && a.Pod == tc.name && a.Domain == "203.0.113.200"
			})
		}
	})

	t.Run("the console's flow summary: top destination by bytes and blocked attempts", func(t *testing.T) {
		// What the runs above moved, as GET /v1/egress/flows/summary (fed
		// the flow log) reports it for web: the 1 MiB upload to
		// api.shop.example first, the refused IP literal as an attempt.
		type dest struct {
			Dst      string `json:"dst"`
			Port     int    `json:"port"`
			DNSName  string `json:"dnsName"`
			BytesOut int64  `json:"bytesOut"`
			BytesIn  int64  `json:"bytesIn"`
			Blocked  int64  `json:"blocked"`
			Reason   string `json:"reason"`
		}
		type workloadFlows struct {
			Workload     string `json:"workload"`
			Destinations []dest `json:"destinations"`
			Attempts     []dest `json:"attempts"`
		}
		summary := func() workloadFlows {
			var got struct {
				Workloads []workloadFlows `json:"workloads"`
			}
			resp, err := k.httpClient().Get("http://" + k.http + "/v1/egress/flows/summary?namespace=shop&pod=web")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || len(got.Workloads) != 1 {
				t.Fatalf("flow summary: %v %+v", err, got)
			}
			return got.Workloads[0]
		}
		ok := func(w workloadFlows) (top, attempt bool) {
			top = len(w.Destinations) > 0 && w.Destinations[0].DNSName == "api.shop.example" && w.Destinations[0].Port == 443 &&
				w.Destinations[0].BytesOut >= 1<<20 && w.Destinations[0].BytesIn >= 1<<20
			for _, d := range w.Attempts {
				attempt = attempt || d.Dst == "203.0.113.200" && d.Port == 6379 && d.Blocked >= 1 && d.Reason != ""
			}
			return top, attempt
		}
		// The summary reads the flow log right after the file is written:
		// poll briefly for the records waitFlow saw in the file.
		w := summary()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); w = summary() {
			if top, attempt := ok(w); top && attempt {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		top, attempt := ok(w)
		if !top {
			t.Errorf("top destination of %s: %+v, want the 1 MiB exchange with api.shop.example:443", w.Workload, w.Destinations)
		}
		if !attempt {
			t.Errorf("attempts of %s: %+v, want the refused 203.0.113.200:6379", w.Workload, w.Attempts)
		}
	})

	t.Run("detection action Quarantine blocks the address for that workload", func(t *testing.T) {
		dst := netip.MustParseAddrPort("203.0.113.201:6379")
		c, err := dial(jobs, "tcp", dst)
		if err != nil {
			t.Fatalf("first connection (not filtered, only watched): %v", err)
		}
		c.Close()
		a := k.waitAlert(t, "quarantined direct-egress alert", func(a feedAlert) bool {
			return a.Kind == "direct-egress" && a.Pod == "jobs" && a.Action == "quarantined"
		})
		if !strings.Contains(a.Message, "/v1/egress/quarantines/10.244.3.2/203.0.113.201") {
			t.Errorf("message does not say how to lift: %q", a.Message)
		}
		poll(t, 10*time.Second, "quarantined address refused", func() bool {
			c, err := dial(jobs, "tcp", dst)
			if err == nil {
				c.Close()
				return false
			}
			return isRefused(err)
		})
		// Only for that workload.
		if c, err := dial(legacy, "tcp", dst); err != nil {
			t.Fatalf("another workload lost the address: %v", err)
		} else {
			c.Close()
		}
		req, _ := http.NewRequest(http.MethodDelete, "http://"+k.http+"/v1/egress/quarantines/10.244.3.2/203.0.113.201", nil)
		resp, err := k.httpClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("lift: %s", resp.Status)
		}
		if c, err := dial(jobs, "tcp", dst); err != nil {
			t.Fatalf("after the lift: %v", err)
		} else {
			c.Close()
		}
	})

	t.Run("query to an outside resolver is answered by kordon", func(t *testing.T) {
		for _, network := range []string{"udp", "tcp"} {
			resp, err := query(web, netip.MustParseAddrPort("203.0.113.53:53"), "api.shop.example", dns.TypeA, network)
			if err != nil {
				t.Fatalf("%s: %v", network, err)
			}
			if len(resp.Answer) == 0 || !strings.Contains(resp.Answer[0].String(), "198.51.100.10") {
				t.Fatalf("%s: answer %v, want kordon's 198.51.100.10 (not the rogue resolver's)", network, resp.Answer)
			}
			// A name the policy blocks gets kordon's refusal.
			resp, err = query(web, netip.MustParseAddrPort("203.0.113.53:53"), "tracker.adnet.example", dns.TypeA, network)
			if err != nil || resp.Rcode != dns.RcodeNameError {
				t.Fatalf("%s: blocked name through the rogue resolver: %v %v", network, resp, err)
			}
		}
		if n := rogue.count(); n != 0 {
			t.Errorf("the outside resolver saw %d queries; want 0", n)
		}
		k.waitAlert(t, "resolver-bypass alert", func(a feedAlert) bool {
			return a.Kind == "resolver-bypass" && a.Pod == "web"
		})
	})

	t.Run("DoT refused", func(t *testing.T) {
		c, err := dial(web, "tcp", netip.MustParseAddrPort("203.0.113.53:853"))
		if err == nil {
			c.Close()
			t.Fatal("DNS over TLS from an enforced workload was allowed")
		}
		if !isRefused(err) {
			t.Fatalf("want a refusal, got %v", err)
		}
	})

	t.Run("IPv6", func(t *testing.T) {
		ip := resolve(t, tp, web, "v6.shop.example", dns.TypeAAAA)
		c, err := dial(web, "tcp", netip.AddrPortFrom(ip, 443))
		if err != nil {
			t.Fatalf("connect to %s: %v", ip, err)
		}
		if err := roundTrip(c, 4096); err != nil {
			t.Fatal(err)
		}
		c.Close()
		c, err = dial(web, "tcp", netip.MustParseAddrPort("[2001:db8:100::66]:443"))
		if err == nil {
			c.Close()
			t.Fatal("IPv6 literal allowed")
		}
		if !isRefused(err) {
			t.Fatalf("IPv6 literal: want a refusal, got %v", err)
		}
	})

	t.Run("after TTL plus grace new connections are refused, established ones keep flowing", func(t *testing.T) {
		ip := resolve(t, tp, web, "short.shop.example", dns.TypeA)
		est, err := dial(web, "tcp", netip.AddrPortFrom(ip, 443))
		if err != nil {
			t.Fatal(err)
		}
		defer est.Close()
		if err := roundTrip(est, 1024); err != nil {
			t.Fatal(err)
		}
		// TTL 1 s + grace 1 s: new connections stop within a few seconds.
		poll(t, 15*time.Second, "new connection refused after TTL+grace", func() bool {
			c, err := dial(web, "tcp", netip.AddrPortFrom(ip, 443))
			if err == nil {
				c.Close()
				return false
			}
			return isRefused(err)
		})
		if err := roundTrip(est, 64<<10); err != nil {
			t.Fatalf("established connection stopped after the TTL: %v", err)
		}
	})

	t.Run("1000 resolve-then-connect iterations", func(t *testing.T) {
		failures := 0
		var first error
		for i := 0; i < 1000; i++ {
			name := fmt.Sprintf("n%d.many.shop.example", i%manyNames)
			resp, err := query(web, dnsAddr(tp), name, dns.TypeA, "udp")
			if err == nil && len(resp.Answer) == 0 {
				err = fmt.Errorf("no answer: %s", dns.RcodeToString[resp.Rcode])
			}
			if err == nil {
				ip := netip.MustParseAddr(resp.Answer[0].(*dns.A).A.String())
				var c net.Conn
				if c, err = dial(web, "tcp", netip.AddrPortFrom(ip, 443)); err == nil {
					c.Close()
				}
			}
			if err != nil {
				failures++
				if first == nil {
					first = fmt.Errorf("iteration %d (%s): %w", i, name, err)
				}
			}
		}
		if failures != 0 {
			t.Fatalf("%d of 1000 resolve-then-connect iterations failed; first: %v", failures, first)
		}
	})

	t.Run("SIGKILL and restart keep enforcement and established connections", func(t *testing.T) {
		ip := resolve(t, tp, web, "api.shop.example", dns.TypeA)
		est, err := dial(web, "tcp", netip.AddrPortFrom(ip, 443))
		if err != nil {
			t.Fatal(err)
		}
		defer est.Close()
		k.kill()
		// Agent down: the table stays, so the established connection moves
		// data, a new one to the learned address works, and a literal is
		// still refused.
		if err := roundTrip(est, 4096); err != nil {
			t.Fatalf("established connection while the agent is down: %v", err)
		}
		if c, err := dial(web, "tcp", netip.AddrPortFrom(ip, 443)); err != nil {
			t.Fatalf("learned address while the agent is down: %v", err)
		} else {
			c.Close()
		}
		if c, err := dial(web, "tcp", netip.MustParseAddrPort("203.0.113.200:6379")); err == nil {
			c.Close()
			t.Fatal("enforcement lapsed while the agent was down")
		}
		k.start()
		if err := roundTrip(est, 4096); err != nil {
			t.Fatalf("established connection after the restart: %v", err)
		}
		if c, err := dial(web, "tcp", netip.AddrPortFrom(ip, 443)); err != nil {
			t.Fatalf("learned address after the restart (restored): %v", err)
		} else {
			c.Close()
		}
		if c, err := dial(web, "tcp", netip.MustParseAddrPort("203.0.113.200:6379")); err == nil {
			c.Close()
			t.Fatal("enforcement lapsed after the restart")
		}
		ip2 := resolve(t, tp, web, "n7.many.shop.example", dns.TypeA)
		if c, err := dial(web, "tcp", netip.AddrPortFrom(ip2, 443)); err != nil {
			t.Fatalf("new answer after the restart: %v", err)
		} else {
			c.Close()
		}
	})

	t.Run("exit removes the table", func(t *testing.T) {
		k.stop()
		// With the table gone, the literal is no longer refused.
		c, err := dial(web, "tcp", netip.MustParseAddrPort("203.0.113.200:6379"))
		if err != nil {
			t.Fatalf("after kordon dev exited, traffic is still filtered: %v", err)
		}
		c.Close()
	})
}

func waitFlow(t *testing.T, k *kordon, what string, match func(r flowRecord) bool) flowRecord {
	t.Helper()
	var got flowRecord
	poll(t, 20*time.Second, what, func() bool {
		var ok bool
		got, ok = findFlow(t, k.flowLog, match)
		return ok
	})
	return got
}

// rogueResolver answers every question with 192.0.2.66 and counts them.
type rogueResolver struct {
	mu sync.Mutex
	n  int
}

func (r *rogueResolver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func startRogueResolver(t *testing.T, ns *netns.NS, addr string) *rogueResolver {
	t.Helper()
	r := &rogueResolver{}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		r.mu.Lock()
		r.n++
		r.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(q)
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.66")}}
		_ = w.WriteMsg(m)
	})
	var pc net.PacketConn
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })
	return r
}

// TestDevFirewallNeedsNetAdmin: without CAP_NET_ADMIN kordon dev
// --egress-firewall says what it needs and exits 1, touching nothing.
func TestDevFirewallNeedsNetAdmin(t *testing.T) {
	netns.RequireRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) not installed")
	}
	ns := netns.New(t, "nocap")
	ns.Exec(t, "ip", "addr", "add", "10.96.0.53/32", "dev", "lo")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config")
	if err := os.MkdirAll(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg, "workloads.yaml"), []byte(workloadsYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(setpriv, "--inh-caps=-all", "--bounding-set=-net_admin", "--",
		kordonBin(t), "dev", "--config", cfg, "--upstream", "127.0.0.1:53", "--egress-firewall",
		"--dns-listen", "10.96.0.53:53", "--http-listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0",
		"--state-dir", filepath.Join(dir, "state"))
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("want exit status 1, got %v:\n%s", err, out)
	}
	if !strings.Contains(string(out), "--egress-firewall needs CAP_NET_ADMIN") {
		t.Fatalf("output does not say what is missing:\n%s", out)
	}
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd(t)))
	if err != nil {
		t.Fatal(err)
	}
	if tables, err := c.ListTables(); err != nil || len(tables) != 0 {
		t.Fatalf("nftables tables after the refusal: %v %v", tables, err)
	}
}
