package egress_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/kordon-dev/kordon/internal/netns"
	"github.com/miekg/dns"
)

// dnsStream sends queries at a fixed rate from one pod over several UDP
// sockets (several source ports, so the kernel's SO_REUSEPORT choice
// varies) and records which were answered.
type dnsStream struct {
	conns    []*net.UDPConn
	server   *net.UDPAddr
	sent     atomic.Int64
	answered atomic.Int64
	failed   atomic.Int64 // answered with another rcode than NOERROR
	mu       sync.Mutex
	pending  []map[uint16]time.Time
}

func newDNSStream(t *testing.T, pod *netns.Pod, server netip.AddrPort, sockets int) *dnsStream {
	t.Helper()
	s := &dnsStream{server: net.UDPAddrFromAddrPort(server)}
	for i := 0; i < sockets; i++ {
		var c *net.UDPConn
		if err := pod.Do(func() (err error) {
			c, err = net.ListenUDP("udp", &net.UDPAddr{IP: pod.IP4.AsSlice()})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s.conns = append(s.conns, c)
		s.pending = append(s.pending, map[uint16]time.Time{})
	}
	return s
}

// receive reads answers on socket i until it is closed.
func (s *dnsStream) receive(i int) {
	buf := make([]byte, 1500)
	for {
		n, err := s.conns[i].Read(buf)
		if err != nil {
			return
		}
		var m dns.Msg
		if m.Unpack(buf[:n]) != nil {
			continue
		}
		s.mu.Lock()
		_, ok := s.pending[i][m.Id]
		delete(s.pending[i], m.Id)
		s.mu.Unlock()
		if !ok {
			continue
		}
		s.answered.Add(1)
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) == 0 {
			s.failed.Add(1)
		}
	}
}

// run sends qps queries a second (in bursts every 5 ms, catching up on
// late ticks) until stop is closed.
func (s *dnsStream) run(qps int, name string, stop <-chan struct{}) error {
	const tick = 5 * time.Millisecond
	ids := make([]uint16, len(s.conns))
	t := time.NewTicker(tick)
	defer t.Stop()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	start := time.Now()
	for n := 0; ; {
		select {
		case <-stop:
			return nil
		case <-t.C:
		}
		due := int(time.Since(start).Seconds() * float64(qps))
		for ; n < due; n++ {
			i := n % len(s.conns)
			ids[i]++
			q.Id = ids[i]
			b, err := q.Pack()
			if err != nil {
				return err
			}
			s.mu.Lock()
			s.pending[i][q.Id] = time.Now()
			s.mu.Unlock()
			if _, err := s.conns[i].WriteToUDP(b, s.server); err != nil {
				return fmt.Errorf("send: %w", err)
			}
			s.sent.Add(1)
		}
	}
}

// lost counts the queries still unanswered once every answer had wait to
// arrive.
func (s *dnsStream) lost(wait time.Duration) int {
	deadline := time.Now().Add(wait)
	for {
		s.mu.Lock()
		n := 0
		for _, p := range s.pending {
			n += len(p)
		}
		s.mu.Unlock()
		if n == 0 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// enforcement probes the firewall in a loop: an allowed address resolved
// once stays connectable, a blocked IP literal stays refused, and an
// established connection keeps moving data.
type enforcement struct {
	allowedOK, allowedFail   atomic.Int64
	refusedOK, refusedFail   atomic.Int64
	roundTrips, roundTripErr atomic.Int64
	socketOK, socketFail     atomic.Int64
	mu                       sync.Mutex
	firstErr                 []string
}

func (e *enforcement) note(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.firstErr) < 5 {
		e.firstErr = append(e.firstErr, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
	}
}

func (e *enforcement) run(pod *netns.Pod, allowed, blocked netip.AddrPort, established net.Conn, socket string, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		if c, err := dial(pod, "tcp", allowed); err != nil {
			e.allowedFail.Add(1)
			e.note("connect to allowed %s: %v", allowed, err)
		} else {
			e.allowedOK.Add(1)
			c.Close()
		}
		if c, err := dial(pod, "tcp", blocked); err == nil {
			c.Close()
			e.refusedFail.Add(1)
			e.note("blocked IP literal %s connected", blocked)
		} else if isRefused(err) {
			e.refusedOK.Add(1)
		} else {
			e.refusedFail.Add(1)
			e.note("blocked IP literal %s: %v (not a fast refusal)", blocked, err)
		}
		if err := roundTrip(established, 4096); err != nil {
			e.roundTripErr.Add(1)
			e.note("established connection: %v", err)
		} else {
			e.roundTrips.Add(1)
		}
		// The workload's SPIFFE Workload API socket: always there and
		// accepting (renamed over by each successor).
		if c, err := net.DialTimeout("unix", socket, time.Second); err != nil {
			e.socketFail.Add(1)
			e.note("workload API socket: %v", err)
		} else {
			e.socketOK.Add(1)
			c.Close()
		}
		time.Sleep(20 * time.Millisecond) // pacing of a probe, not synchronisation
	}
}

// freePort finds a free TCP port on the node namespace's loopback.
func freePort(t *testing.T, ns *netns.NS) int {
	t.Helper()
	var port int
	if err := ns.Do(func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	}); err != nil {
		t.Fatal(err)
	}
	return port
}

// TestDevHandoverLosesNoQueries is issue 14's proof for a node agent
// upgrade: five consecutive handovers of kordon dev --egress-firewall on
// the same fixed DNS, HTTP and xDS addresses and the same state folder
// (start the successor, wait for /readyz, SIGTERM the old one, wait for
// its exit) under 2,000 DNS queries a second from a pod lose no query,
// and the firewall never lapses.
func TestDevHandoverLosesNoQueries(t *testing.T) {
	tp := netns.NewTopology(t, 1)
	web := tp.Pods[0]
	anyIP(t, tp)
	echo := &echoServers{got: map[string]int64{}}
	echo.listen(t, tp.Outside, ":443")

	first := startKordon(t, tp)
	base := first.dir
	first.stop()
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t, tp.Node))
	xdsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t, tp.Node))
	gen := func(i int) *kordon {
		dir := filepath.Join(base, fmt.Sprintf("gen%d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		k := &kordon{t: t, tp: tp, bin: first.bin, dir: dir, out: first.out, outMu: first.outMu}
		k.args = append([]string(nil), first.args...)
		for j := 0; j < len(k.args)-1; j++ {
			switch k.args[j] {
			case "--http-listen":
				k.args[j+1] = httpAddr
			case "--xds-listen":
				k.args[j+1] = xdsAddr
			case "--addr-file":
				k.args[j+1] = filepath.Join(dir, "addr")
			case "--flow-log":
				k.args[j+1] = filepath.Join(dir, "flows.log")
			case "--query-log":
				k.args[j+1] = ""
			}
		}
		k.start()
		t.Cleanup(k.stop)
		return k
	}
	readyz := func(k *kordon) int {
		resp, err := k.httpClient().Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	cur := gen(0)
	poll(t, 10*time.Second, "generation 0 /readyz", func() bool { return readyz(cur) == 200 })

	allowedIP := resolve(t, tp, web, "cdn.shop.example", dns.TypeA) // resolved once, never again
	established, err := dial(web, "tcp", netip.AddrPortFrom(resolve(t, tp, web, "api.shop.example", dns.TypeA), 443))
	if err != nil {
		t.Fatal(err)
	}
	defer established.Close()

	stream := newDNSStream(t, web, dnsAddr(tp), 8)
	for i := range stream.conns {
		go stream.receive(i)
	}
	stop := make(chan struct{})
	streamErr := make(chan error, 1)
	go func() { streamErr <- stream.run(2000, "api.shop.example", stop) }()
	enf := &enforcement{}
	enfDone := make(chan struct{})
	go func() {
		defer close(enfDone)
		enf.run(web, netip.AddrPortFrom(allowedIP, 443), netip.MustParseAddrPort("203.0.113.99:443"), established, filepath.Join(base, "state", "agent", "shop_web.sock"), stop)
	}()

	const handovers = 5
	start := time.Now()
	var took []time.Duration
	// overlaps are the windows with two agents running: from a
	// successor's start to its predecessor's exit.
	var overlaps [][2]time.Time
	for i := 1; i <= handovers; i++ {
		time.Sleep(500 * time.Millisecond) // traffic on one generation between handovers
		h := time.Now()
		next := gen(i)
		poll(t, 15*time.Second, fmt.Sprintf("generation %d /readyz on the shared port", i), func() bool { return readyz(next) == 200 })
		if err := cur.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-cur.done:
		case <-time.After(20 * time.Second):
			t.Fatalf("generation %d did not exit within 20s of SIGTERM", i-1)
		}
		if !cur.cmd.ProcessState.Success() {
			t.Errorf("generation %d exited with %v", i-1, cur.cmd.ProcessState)
		}
		took = append(took, time.Since(h))
		overlaps = append(overlaps, [2]time.Time{h, time.Now()})
		cur = next
		if code := readyz(cur); code != 200 {
			t.Errorf("after handover %d /readyz = %d", i, code)
		}
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	<-enfDone
	if err := <-streamErr; err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	lost := stream.lost(3 * time.Second)
	sent := stream.sent.Load()
	t.Logf("%d handovers in %s (each: %v); DNS: %d queries sent (%.0f qps), %d answered, %d lost, %d not NOERROR",
		handovers, elapsed.Round(time.Millisecond), took, sent, float64(sent)/elapsed.Seconds(), stream.answered.Load(), lost, stream.failed.Load())
	t.Logf("firewall: allowed address connected %d/%d, blocked IP literal refused %d/%d, established connection round trips %d ok, %d failed; workload API socket connected %d/%d",
		enf.allowedOK.Load(), enf.allowedOK.Load()+enf.allowedFail.Load(), enf.refusedOK.Load(), enf.refusedOK.Load()+enf.refusedFail.Load(),
		enf.roundTrips.Load(), enf.roundTripErr.Load(), enf.socketOK.Load(), enf.socketOK.Load()+enf.socketFail.Load())
	if lost != 0 || stream.failed.Load() != 0 {
		t.Errorf("%d queries lost, %d failed across %d handovers", lost, stream.failed.Load(), handovers)
	}
	if enf.allowedFail.Load()+enf.refusedFail.Load()+enf.roundTripErr.Load() != 0 || enf.allowedOK.Load() == 0 || enf.roundTrips.Load() == 0 {
		t.Errorf("enforcement lapsed: %v", enf.firstErr)
	}
	if enf.socketFail.Load() != 0 || enf.socketOK.Load() == 0 {
		t.Errorf("workload API socket lapsed: %v", enf.firstErr)
	}
	if rate := float64(sent) / elapsed.Seconds(); rate < 1900 {
		t.Errorf("the stream ran at %.0f qps, not 2,000", rate)
	}

	// The last generation, alone, removes the table at exit.
	cur.stop()
	flowLogOverlap(t, base, handovers, established, overlaps)
	c, err := nftables.New(nftables.WithNetNSFd(tp.Node.Fd(t)))
	if err != nil {
		t.Fatal(err)
	}
	if tb, err := c.ListTableOfFamily("kordon", nftables.TableFamilyINet); err == nil && tb != nil {
		t.Errorf("table inet kordon left after the last kordon dev exited")
	}
}

// flowLogOverlap reports how the flow logs of the generations count the
// established connection: both agents log it while they overlap.
func flowLogOverlap(t *testing.T, base string, handovers int, c net.Conn, overlaps [][2]time.Time) {
	t.Helper()
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	type rec struct {
		flowRecord
		Time  time.Time `json:"time"`
		SPort uint16    `json:"sport"`
	}
	total, inOverlap := 0, 0
	perGen := make([]int, handovers+1)
	for g := 0; g <= handovers; g++ {
		b, err := os.ReadFile(filepath.Join(base, fmt.Sprintf("gen%d", g), "flows.log"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			var r rec
			if json.Unmarshal([]byte(line), &r) != nil || r.SPort != local.Port() || r.Dport != 443 {
				continue
			}
			perGen[g]++
			total++
			for _, o := range overlaps {
				if !r.Time.Before(o[0]) && !r.Time.After(o[1]) {
					inOverlap++
					break
				}
			}
		}
	}
	t.Logf("flow log: the established connection has %d interval records in the %d generations' logs (per generation %v), %d of them written while two agents ran (each such window is logged by both)",
		total, handovers+1, perGen, inOverlap)
	if total == 0 {
		t.Errorf("no flow record of the established connection in any generation's log")
	}
}
