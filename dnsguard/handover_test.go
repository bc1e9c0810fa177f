//go:build linux

package dnsguard_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/miekg/dns"
)

var handoverQPS = flag.Int("handover.qps", 2000, "TestHandoverLosesNoQueries: queries per second sent across the handovers")

// TestHandoverLosesNoQueries runs real `kordon dnsguard` processes on one
// fixed loopback address and hands over five times while a client sends
// 2,000 queries a second (-handover.qps; half of them new names,
// forwarded upstream, half cached): each time a second process starts with the same flags
// (its own --metrics-listen), its /readyz answers 200, and the first gets
// SIGTERM. Every query must be answered. Meanwhile eight TCP clients ask
// one query per connection: none may fail where net.ipv4.tcp_migrate_req
// is 1 (the kernel moves a closing listener's accept queue to the new
// one); elsewhere their failures are only logged.
func TestHandoverLosesNoQueries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the kordon binary")
	}
	bin := filepath.Join(t.TempDir(), "kordon")
	build := exec.Command("go", "build", "-o", bin, "../cmd/kordon")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	upstream := startAuthoritative(t)
	listen := freeUDPTCPAddr(t)

	var procs []*dnsguardProc
	t.Cleanup(func() {
		for _, p := range procs {
			p.kill()
		}
	})
	start := func() *dnsguardProc {
		p := startDNSGuard(t, bin, listen, upstream)
		procs = append(procs, p)
		p.waitReady(t, 20*time.Second)
		return p
	}
	old := start()

	qps := *handoverQPS
	st := startStream(t, listen, qps)
	defer st.stop()
	tcp := startTCPClients(listen, 8)
	defer tcp.stop()
	const handovers = 5
	for i := 0; i < handovers; i++ {
		st.waitAnswered(t, st.answered.Load()+1000, 10*time.Second)
		next := start()
		// The new process serves: queries reach it beside the old one.
		old.terminate(t, 15*time.Second)
		old = next
	}
	st.waitAnswered(t, st.answered.Load()+1000, 10*time.Second)
	st.stop()
	tcp.stop()
	sent, answered := st.settle(3 * time.Second)
	old.terminate(t, 15*time.Second)
	t.Logf("%d handovers at %d qps: %d queries sent, %d answered, %d lost", handovers, qps, sent, answered, sent-answered)
	migrate, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_migrate_req")
	t.Logf("tcp (tcp_migrate_req %s): %d queries answered, %d failed", strings.TrimSpace(string(migrate)), tcp.ok.Load(), tcp.failed.Load())
	if sent == 0 || answered != sent {
		t.Fatalf("lost %d of %d queries across %d handovers", sent-answered, sent, handovers)
	}
	if tcp.ok.Load() == 0 {
		t.Fatal("no tcp query answered")
	}
	if strings.TrimSpace(string(migrate)) == "1" && tcp.failed.Load() > 0 {
		t.Fatalf("%d tcp queries failed across %d handovers", tcp.failed.Load(), handovers)
	}
}

// TestServeHandsOverInProcess is the handover inside one process: each
// Server binds the address beside the last (UDP and TCP, SO_REUSEPORT),
// answers over TCP once Ready, and the last one's Serve is then ended.
func TestServeHandsOverInProcess(t *testing.T) {
	upstream := startAuthoritative(t)
	listen := freeUDPTCPAddr(t)
	type running struct {
		srv  *dnsguard.Server
		stop context.CancelFunc
		done chan error
	}
	start := func() running {
		srv, err := dnsguard.New(dnsguard.Config{Registry: workload.NewRegistry(), Upstreams: []string{upstream}, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		pc, ln, err := dnsguard.ListenUDPTCP(listen)
		if err != nil {
			t.Fatalf("second instance cannot bind beside the first: %v", err)
		}
		ctx, stop := context.WithCancel(context.Background())
		r := running{srv: srv, stop: stop, done: make(chan error, 1)}
		go func() { r.done <- srv.Serve(ctx, pc, ln) }()
		select {
		case <-srv.Ready():
		case err := <-r.done:
			t.Fatalf("Serve: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("not ready within 10s")
		}
		return r
	}
	stopServer := func(r running) {
		r.stop()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return within 10s of its context ending")
		}
		r.srv.Close()
	}
	old := start()
	st := startStream(t, listen, 2000)
	defer st.stop()
	const handovers = 3
	for i := 0; i < handovers; i++ {
		st.waitAnswered(t, st.answered.Load()+500, 10*time.Second)
		next := start()
		c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion("tcp.example.", dns.TypeA)
		if r, _, err := c.Exchange(m, listen); err != nil || len(r.Answer) != 1 {
			t.Fatalf("tcp query after handover %d: %v %v", i, r, err)
		}
		stopServer(old)
		old = next
	}
	st.waitAnswered(t, st.answered.Load()+500, 10*time.Second)
	st.stop()
	sent, answered := st.settle(3 * time.Second)
	stopServer(old)
	t.Logf("%d handovers at 2000 qps: %d queries sent, %d answered, %d lost", handovers, sent, answered, sent-answered)
	if sent == 0 || answered != sent {
		t.Fatalf("lost %d of %d queries across %d handovers", sent-answered, sent, handovers)
	}
}

// tcpClients ask one query per TCP connection in a loop until stopped.
type tcpClients struct {
	ok, failed atomic.Int64
	stopc      chan struct{}
	wg         sync.WaitGroup
	once       sync.Once
}

func startTCPClients(server string, n int) *tcpClients {
	tc := &tcpClients{stopc: make(chan struct{})}
	for i := 0; i < n; i++ {
		tc.wg.Add(1)
		go func() {
			defer tc.wg.Done()
			c := &dns.Client{Net: "tcp", Timeout: 3 * time.Second}
			for {
				select {
				case <-tc.stopc:
					return
				default:
				}
				m := new(dns.Msg)
				m.SetQuestion("tcp.example.", dns.TypeA)
				if r, _, err := c.Exchange(m, server); err != nil || len(r.Answer) != 1 {
					tc.failed.Add(1)
				} else {
					tc.ok.Add(1)
				}
			}
		}()
	}
	return tc
}

func (tc *tcpClients) stop() {
	tc.once.Do(func() { close(tc.stopc) })
	tc.wg.Wait()
}

// startAuthoritative answers every A query with 192.0.2.1 (TTL 300).
func startAuthoritative(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(192, 0, 2, 1)}}
		}
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: h}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// freeUDPTCPAddr returns a loopback address whose port was free for both
// UDP and TCP when asked (the processes handing over need a fixed one).
func freeUDPTCPAddr(t *testing.T) string {
	t.Helper()
	for try := 0; try < 20; try++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := pc.LocalAddr().String()
		ln, err := net.Listen("tcp", addr)
		pc.Close()
		if err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no port free for both UDP and TCP")
	return ""
}

func freeTCPAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type dnsguardProc struct {
	cmd     *exec.Cmd
	metrics string
	done    chan struct{}
	err     error
}

func startDNSGuard(t *testing.T, bin, listen, upstream string) *dnsguardProc {
	t.Helper()
	p := &dnsguardProc{metrics: freeTCPAddr(t), done: make(chan struct{})}
	p.cmd = exec.Command(bin, "dnsguard", "--dns-listen", listen, "--upstream", upstream, "--metrics-listen", p.metrics)
	p.cmd.Stdout, p.cmd.Stderr = os.Stderr, os.Stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return p
}

// waitReady polls /readyz until it answers 200.
func (p *dnsguardProc) waitReady(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	url := "http://" + p.metrics + "/readyz"
	for {
		select {
		case <-p.done:
			t.Fatalf("dnsguard exited before it was ready: %v", p.err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not 200 within %v (last error %v)", url, within, err)
		}
		select {
		case <-p.done:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// terminate sends SIGTERM and waits for a clean exit.
func (p *dnsguardProc) terminate(t *testing.T, within time.Duration) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("dnsguard (pid %d) exited: %v", p.cmd.Process.Pid, p.err)
		}
	case <-time.After(within):
		t.Fatalf("dnsguard (pid %d) did not exit within %v of SIGTERM", p.cmd.Process.Pid, within)
	}
}

// kill stops the process by its PID if it is still running.
func (p *dnsguardProc) kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// stream sends queries at a fixed rate from several client sockets (so
// the kernel spreads them over the server's sockets) and counts answers;
// a query is never retried.
type stream struct {
	conns    []*net.UDPConn
	stopOnce sync.Once
	stopc    chan struct{}
	sendDone chan struct{}
	readers  sync.WaitGroup

	sent     atomic.Int64
	answered atomic.Int64
	mu       sync.Mutex
	pending  map[int]bool // client socket index<<16 | query ID -> waiting
}

func startStream(t *testing.T, server string, qps int) *stream {
	t.Helper()
	raddr, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	st := &stream{stopc: make(chan struct{}), sendDone: make(chan struct{}), pending: map[int]bool{}}
	for i := 0; i < 16; i++ {
		c, err := net.DialUDP("udp", nil, raddr)
		if err != nil {
			t.Fatal(err)
		}
		st.conns = append(st.conns, c)
		st.readers.Add(1)
		go st.read(i, c)
	}
	go st.send(qps)
	return st
}

func (st *stream) send(qps int) {
	defer close(st.sendDone)
	const tick = 5 * time.Millisecond
	per := qps * int(tick) / int(time.Second)
	tk := time.NewTicker(tick)
	defer tk.Stop()
	seq := 0
	for {
		select {
		case <-st.stopc:
			return
		case <-tk.C:
		}
		for i := 0; i < per; i++ {
			seq++
			// Odd queries are new names (a cache miss, forwarded); even
			// ones repeat a few names (cache hits once warm).
			name := "n" + strconv.Itoa(seq) + ".miss.example."
			if seq%2 == 0 {
				name = "h" + strconv.Itoa(seq%64) + ".hit.example."
			}
			m := new(dns.Msg)
			m.SetQuestion(name, dns.TypeA)
			ci := seq % len(st.conns)
			m.Id = uint16(seq / len(st.conns)) // unique per socket for 1M queries
			wire, _ := m.Pack()
			st.mu.Lock()
			st.pending[ci<<16|int(m.Id)] = true
			st.mu.Unlock()
			st.sent.Add(1)
			if _, err := st.conns[ci].Write(wire); err != nil {
				fmt.Fprintln(os.Stderr, "stream write:", err)
			}
		}
	}
}

func (st *stream) read(ci int, c *net.UDPConn) {
	defer st.readers.Done()
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP refusal (ECONNREFUSED): that query is lost
		}
		m := new(dns.Msg)
		if m.Unpack(buf[:n]) != nil || len(m.Answer) != 1 {
			continue
		}
		key := ci<<16 | int(m.Id)
		st.mu.Lock()
		if st.pending[key] {
			delete(st.pending, key)
			st.answered.Add(1)
		}
		st.mu.Unlock()
	}
}

// waitAnswered polls until at least n queries were answered.
func (st *stream) waitAnswered(t *testing.T, n int64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for st.answered.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d answers within %v", st.answered.Load(), n, within)
		}
		time.Sleep(5 * time.Millisecond) // polling, not synchronisation
	}
}

func (st *stream) stop() {
	st.stopOnce.Do(func() { close(st.stopc) })
	<-st.sendDone
}

// settle waits up to within for the answers still due, then closes the
// client sockets and returns the totals.
func (st *stream) settle(within time.Duration) (sent, answered int64) {
	deadline := time.Now().Add(within)
	for st.answered.Load() < st.sent.Load() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling, not synchronisation
	}
	for _, c := range st.conns {
		c.Close()
	}
	st.readers.Wait()
	return st.sent.Load(), st.answered.Load()
}
