package dnsguard

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrNoHealthyUpstream is returned when every upstream failed.
var ErrNoHealthyUpstream = errors.New("dnsguard: no healthy upstream")

// upstream is one forwarding target with a pool of connected UDP sockets.
// Each socket has one reader goroutine that hands responses to waiting
// queries by message ID, so many queries share few sockets (no socket per
// query) and each query gets a random ID. Sockets are replaced after a
// number of queries so the source port keeps changing (RFC 5452).
type upstream struct {
	addr    string
	timeout time.Duration

	mu    sync.Mutex
	conns []*udpConn
	next  uint32
	// live holds every socket whose reader runs, including retired ones
	// still waiting for answers, for the fast-miss timeout sweep.
	live map[*udpConn]struct{}

	// tcpIdle holds idle TCP connections for truncated answers, reused
	// one query at a time (at most maxIdleTCP kept).
	tcpMu     sync.Mutex
	tcpIdle   []*dns.Conn
	tcpClosed bool

	// fails counts consecutive failures; healthy is derived from it.
	fails   atomic.Int32
	maxFail int32

	// okCount and errCount are this upstream's upstream_requests_total
	// children, looked up once rather than per query.
	okCount, errCount prometheus.Counter
	healthyGauge      prometheus.Gauge

	// misses finishes the fast misses this upstream's sockets carry.
	misses missCompleter
}

// missCompleter finishes the fast-path misses (queries forwarded from
// wire bytes, see fastmiss.go) that an upstream socket's reader matched
// by ID: the pool only matches answers to queries and batches them; what
// is answered, and how, belongs to its owner (the Server implements it).
type missCompleter interface {
	// missAnswered takes the upstream's answer resp to fm, already
	// removed from its socket, and reports whether it queued a reply on
	// rb (otherwise it took charge of fm itself).
	missAnswered(fm *fastMiss, resp []byte, rb *replyBatch) bool
	// missReplies sends the replies queued on rb for done, the fast
	// misses of one batch of answers in the order they were queued.
	missReplies(done []*fastMiss, rb *replyBatch)
	// missAbandoned takes fm, which gets no answer on its socket (timeout,
	// closed socket, write error), with what was learned of the upstreams.
	missAbandoned(fm *fastMiss, tried missHint)
}

// udpConn is one pooled socket.
type udpConn struct {
	up      *upstream
	conn    *net.UDPConn
	rc      syscall.RawConn // conn's, for batched writes
	mu      sync.Mutex
	pending map[uint16]waiter
	used    int
	closed  bool
}

// waiter is a query waiting for its answer on a udpConn: either a full
// path exchange blocked on ch, or a fast-path miss that the socket's
// reader answers itself.
type waiter struct {
	ch       chan *dns.Msg
	fm       *fastMiss
	deadline time.Time // fm's, in real time (the sweeper's clock)
}

const (
	poolSize        = 4
	queriesPerSock  = 4096
	maxUDPResponse  = 65535
	defaultMaxFails = 3
	maxIdleTCP      = 4
)

func newUpstream(addr string, timeout time.Duration) (*upstream, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, "53")
	}
	if _, err := net.ResolveUDPAddr("udp", addr); err != nil {
		return nil, fmt.Errorf("dnsguard: upstream %q: %w", addr, err)
	}
	return &upstream{addr: addr, timeout: timeout, conns: make([]*udpConn, poolSize), maxFail: defaultMaxFails, live: map[*udpConn]struct{}{}}, nil
}

func (u *upstream) healthy() bool { return u.fails.Load() < u.maxFail }

// acquire returns a pooled socket with a fresh random query ID registered
// on it for w, replacing worn-out sockets. Registering under the socket's
// lock means a socket being retired is never closed under a query.
func (u *upstream) acquire(w waiter) (*udpConn, uint16, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	i := int(u.next % uint32(len(u.conns)))
	u.next++
	c := u.conns[i]
	if c != nil {
		c.mu.Lock()
		if c.used < queriesPerSock && !c.closed {
			c.used++
			id := c.register(w)
			c.mu.Unlock()
			return c, id, nil
		}
		c.mu.Unlock()
		c.retire()
	}
	raddr, err := net.ResolveUDPAddr("udp", u.addr)
	if err != nil {
		return nil, 0, err
	}
	nc, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		return nil, 0, err
	}
	rc, err := nc.SyscallConn()
	if err != nil {
		nc.Close()
		return nil, 0, err
	}
	c = &udpConn{up: u, conn: nc, rc: rc, pending: map[uint16]waiter{}, used: 1}
	id := c.register(w)
	u.conns[i] = c
	u.live[c] = struct{}{}
	go c.readLoop()
	return c, id, nil
}

// register picks a random unused ID for w; c.mu must be held.
func (c *udpConn) register(w waiter) uint16 {
	for {
		id := uint16(rand.Uint32())
		if _, taken := c.pending[id]; !taken {
			c.pending[id] = w
			return id
		}
	}
}

// retire closes the socket once no query waits on it.
func (c *udpConn) retire() {
	c.mu.Lock()
	c.closed = true
	idle := len(c.pending) == 0
	c.mu.Unlock()
	if idle {
		c.conn.Close()
	}
}

// readLoop hands answers to their waiters, reading batches of datagrams
// where the platform allows. Fast-path misses are answered right here,
// their replies sent in one batch per read.
func (c *udpConn) readLoop() {
	r := newPacketReader(c.conn)
	defer r.release()
	var (
		done    []*fastMiss
		replies replyBatch
	)
	defer func() {
		c.up.mu.Lock()
		delete(c.up.live, c)
		c.up.mu.Unlock()
	}()
	for {
		n, err := r.recv()
		if err != nil {
			c.mu.Lock()
			c.closed = true
			var orphans []*fastMiss
			for id, w := range c.pending {
				if w.ch != nil {
					close(w.ch)
				} else {
					orphans = append(orphans, w.fm)
				}
				delete(c.pending, id)
			}
			c.mu.Unlock()
			refused := errors.Is(err, syscall.ECONNREFUSED)
			for _, fm := range orphans {
				if refused { // the upstream failed them, as exchange would see
					c.up.failed()
					c.up.misses.missAbandoned(fm, missHint{asked: c.up})
				} else {
					c.up.misses.missAbandoned(fm, missHint{})
				}
			}
			return
		}
		closeNow := false
		for i := 0; i < n; i++ {
			pkt := r.packet(i)
			if len(pkt) < 12 || pkt[2]&0x80 == 0 {
				continue // not an answer: ignore, the query times out
			}
			id := uint16(pkt[0])<<8 | uint16(pkt[1])
			c.mu.Lock()
			w, ok := c.pending[id]
			c.mu.Unlock()
			if !ok {
				continue // late (timed out) or spoofed: ignore
			}
			var m *dns.Msg
			if w.ch != nil {
				// Unparseable bytes under a valid ID are ignored, as any
				// garbage: the query times out rather than failing early.
				if m = new(dns.Msg); m.Unpack(pkt) != nil {
					continue
				}
			}
			c.mu.Lock()
			if w2, still := c.pending[id]; still && w2 == w {
				delete(c.pending, id)
			} else {
				ok = false // timed out meanwhile
			}
			closeNow = closeNow || c.closed && len(c.pending) == 0
			c.mu.Unlock()
			switch {
			case !ok:
			case w.ch != nil:
				w.ch <- m
			default:
				if c.up.misses.missAnswered(w.fm, pkt, &replies) {
					done = append(done, w.fm)
				}
			}
		}
		if len(done) > 0 {
			c.up.misses.missReplies(done, &replies)
			clear(done)
			done = done[:0]
		}
		if closeNow {
			c.conn.Close()
			return
		}
	}
}

// truncatedAnswer cuts an answer that did not fit our buffer down to its
// header and question and sets TC; nil if even those are unreadable.
func truncatedAnswer(p []byte) []byte {
	end, ok := skipQuestion(p)
	if !ok {
		return nil
	}
	p = p[:end]
	p[2] |= 0x02
	for i := 6; i < 12; i++ {
		p[i] = 0
	}
	return p
}

// exchange sends q (whose ID it overwrites) and waits for the matching
// answer. A truncated answer is retried over TCP.
func (u *upstream) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	ch := make(chan *dns.Msg, 1)
	c, id, err := u.acquire(waiter{ch: ch})
	if err != nil {
		return nil, err
	}
	q.Id = id
	wire, err := q.Pack()
	if err != nil {
		c.forget(id)
		return nil, err
	}
	if _, err := c.conn.Write(wire); err != nil {
		c.forget(id)
		return nil, err
	}
	timer := time.NewTimer(u.timeout)
	defer timer.Stop()
	select {
	case m, ok := <-ch:
		if !ok {
			return nil, errors.New("dnsguard: upstream socket closed or answer unparseable")
		}
		if !sameQuestion(q, m) {
			return nil, errors.New("dnsguard: upstream answered a different question")
		}
		if m.Truncated {
			return u.exchangeTCP(ctx, q)
		}
		return m, nil
	case <-timer.C:
		c.forget(id)
		return nil, fmt.Errorf("dnsguard: upstream %s: timeout after %s", u.addr, u.timeout)
	case <-ctx.Done():
		c.forget(id)
		return nil, ctx.Err()
	}
}

// forget drops a query that will not wait for its answer (timeout, write
// error, cancellation) and reports whether it was still pending. If that
// was the last query on a retired socket, the socket is closed here: no
// answer will arrive to let readLoop do it.
func (c *udpConn) forget(id uint16) bool {
	c.mu.Lock()
	_, was := c.pending[id]
	delete(c.pending, id)
	closeNow := c.closed && len(c.pending) == 0
	c.mu.Unlock()
	if closeNow {
		c.conn.Close()
	}
	return was
}

// expireMisses removes the fast misses on c past their deadline.
func (c *udpConn) expireMisses(now time.Time) []*fastMiss {
	var late []*fastMiss
	c.mu.Lock()
	for id, w := range c.pending {
		if w.fm != nil && now.After(w.deadline) {
			delete(c.pending, id)
			late = append(late, w.fm)
		}
	}
	closeNow := late != nil && c.closed && len(c.pending) == 0
	c.mu.Unlock()
	if closeNow {
		c.conn.Close()
	}
	return late
}

// expire hands timed-out fast misses to the full path, counting each as
// a failure of its upstream (the full path then tries the others first).
func (f *forwarder) expire(now time.Time) {
	if f == nil {
		return
	}
	for _, u := range f.ups {
		u.mu.Lock()
		conns := make([]*udpConn, 0, len(u.live))
		for c := range u.live {
			conns = append(conns, c)
		}
		u.mu.Unlock()
		for _, c := range conns {
			for _, fm := range c.expireMisses(now) {
				u.failed()
				u.misses.missAbandoned(fm, missHint{asked: u})
			}
		}
	}
}

// succeeded records an answer from u (any rcode: it is reachable).
func (u *upstream) succeeded() {
	if u.fails.Swap(0) >= u.maxFail {
		u.healthyGauge.Set(1)
	}
	u.okCount.Inc()
}

// failed records a timeout or error from u.
func (u *upstream) failed() {
	u.errCount.Inc()
	if u.fails.Add(1) == u.maxFail {
		u.healthyGauge.Set(0)
	}
}

// firstHealthy is the upstream a fast miss goes to: the first healthy one
// in order, as forward tries them; nil if none is healthy.
func (f *forwarder) firstHealthy() *upstream {
	if f == nil {
		return nil
	}
	for _, u := range f.ups {
		if u.healthy() {
			return u
		}
	}
	return nil
}

// exchangeTCP sends q over a pooled TCP connection (RFC 7766 reuse). A
// reused connection the upstream has meanwhile closed is retried once on
// a fresh one.
func (u *upstream) exchangeTCP(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	q.Id = dns.Id()
	deadline := time.Now().Add(u.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	for {
		c, reused, err := u.getTCP(deadline)
		if err != nil {
			return nil, err
		}
		m, err := tcpRoundTrip(c, q, deadline)
		if err != nil {
			c.Close()
			if reused && ctx.Err() == nil && time.Now().Before(deadline) {
				continue
			}
			return nil, fmt.Errorf("dnsguard: upstream %s over tcp: %w", u.addr, err)
		}
		u.putTCP(c)
		if !sameQuestion(q, m) {
			return nil, errors.New("dnsguard: upstream answered a different question")
		}
		return m, nil
	}
}

func tcpRoundTrip(c *dns.Conn, q *dns.Msg, deadline time.Time) (*dns.Msg, error) {
	if err := c.SetDeadline(deadline); err != nil {
		return nil, err
	}
	if err := c.WriteMsg(q); err != nil {
		return nil, err
	}
	m, err := c.ReadMsg()
	if err != nil {
		return nil, err
	}
	if m.Id != q.Id {
		return nil, errors.New("answer id mismatch")
	}
	return m, nil
}

// getTCP pops an idle connection or dials a new one.
func (u *upstream) getTCP(deadline time.Time) (*dns.Conn, bool, error) {
	u.tcpMu.Lock()
	if n := len(u.tcpIdle); n > 0 {
		c := u.tcpIdle[n-1]
		u.tcpIdle = u.tcpIdle[:n-1]
		u.tcpMu.Unlock()
		return c, true, nil
	}
	u.tcpMu.Unlock()
	nc, err := net.DialTimeout("tcp", u.addr, time.Until(deadline))
	if err != nil {
		return nil, false, fmt.Errorf("dnsguard: upstream %s over tcp: %w", u.addr, err)
	}
	return &dns.Conn{Conn: nc}, false, nil
}

// putTCP returns a healthy connection to the idle pool.
func (u *upstream) putTCP(c *dns.Conn) {
	u.tcpMu.Lock()
	if !u.tcpClosed && len(u.tcpIdle) < maxIdleTCP {
		u.tcpIdle = append(u.tcpIdle, c)
		c = nil
	}
	u.tcpMu.Unlock()
	if c != nil {
		c.Close()
	}
}

func sameQuestion(q, m *dns.Msg) bool {
	if len(q.Question) != 1 || len(m.Question) != 1 {
		return len(q.Question) == len(m.Question)
	}
	a, b := q.Question[0], m.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

func (u *upstream) close() {
	u.tcpMu.Lock()
	for _, c := range u.tcpIdle {
		c.Close()
	}
	u.tcpIdle = nil
	u.tcpClosed = true
	u.tcpMu.Unlock()
	u.mu.Lock()
	defer u.mu.Unlock()
	for i, c := range u.conns {
		if c != nil {
			c.conn.Close()
			u.conns[i] = nil
		}
	}
}

// forwarder tries healthy upstreams in order, failing over on error, and
// probes unhealthy ones in the background.
type forwarder struct {
	ups []*upstream
}

// newForwarder builds the pools for addrs; misses finishes the fast
// misses they carry.
func newForwarder(addrs []string, timeout time.Duration, m *metrics, misses missCompleter) (*forwarder, error) {
	f := &forwarder{}
	for _, a := range addrs {
		u, err := newUpstream(a, timeout)
		if err != nil {
			return nil, err
		}
		u.okCount = m.upstreamRequests.WithLabelValues(u.addr, "ok")
		u.errCount = m.upstreamRequests.WithLabelValues(u.addr, "error")
		u.healthyGauge = m.upstreamHealthy.WithLabelValues(u.addr)
		u.misses = misses
		f.ups = append(f.ups, u)
	}
	return f, nil
}

// forward sends q to the first healthy upstream, then the others. It
// returns the answer and the upstream that gave it. A SERVFAIL or REFUSED
// answer also moves on to the next upstream (without marking the first
// unhealthy: it answered); if no upstream does better, the first such
// answer is returned.
//
// hint carries a fast miss's attempt: the upstream it asked is not asked
// again (its answer, if any, counts as that attempt's result), and one
// that answered truncated is asked over TCP.
func (f *forwarder) forward(ctx context.Context, q *dns.Msg, hint *missHint) (*dns.Msg, string, error) {
	if f == nil || len(f.ups) == 0 {
		return nil, "", ErrNoHealthyUpstream
	}
	var (
		lastErr  error = ErrNoHealthyUpstream
		soft     *dns.Msg
		softFrom string
		asked    *upstream
		viaTCP   *upstream
	)
	if hint != nil {
		asked, viaTCP = hint.asked, hint.tcp
		if m := hint.answer; m != nil {
			if m.Rcode != dns.RcodeServerFailure && m.Rcode != dns.RcodeRefused {
				return m, asked.addr, nil
			}
			soft, softFrom = m, asked.addr
		}
	}
	// First pass: healthy upstreams; second pass: the rest, so a full
	// outage still gets tried rather than refused outright.
	for pass := 0; pass < 2; pass++ {
		for _, u := range f.ups {
			if u.healthy() != (pass == 0) || u == asked {
				continue
			}
			// exchange only sets the ID: a shallow copy keeps q intact.
			qc := *q
			var (
				m   *dns.Msg
				err error
			)
			if u == viaTCP {
				m, err = u.exchangeTCP(ctx, &qc) // it already answered truncated over UDP
			} else {
				m, err = u.exchange(ctx, &qc)
			}
			if err == nil {
				u.succeeded()
				if m.Rcode != dns.RcodeServerFailure && m.Rcode != dns.RcodeRefused {
					return m, u.addr, nil
				}
				if soft == nil {
					soft, softFrom = m, u.addr
				}
				continue
			}
			lastErr = err
			u.failed()
			if ctx.Err() != nil {
				if soft != nil {
					return soft, softFrom, nil
				}
				return nil, "", ctx.Err()
			}
		}
	}
	if soft != nil {
		return soft, softFrom, nil
	}
	return nil, "", lastErr
}

// healthCheck probes unhealthy upstreams with a root NS query so they
// return to service without waiting for real traffic to fail over.
func (f *forwarder) healthCheck(ctx context.Context, every time.Duration) {
	if f == nil || len(f.ups) == 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, u := range f.ups {
			if u.healthy() {
				continue
			}
			q := new(dns.Msg)
			q.SetQuestion(".", dns.TypeNS)
			if _, err := u.exchange(ctx, q); err == nil {
				u.fails.Store(0)
				u.healthyGauge.Set(1)
			}
		}
	}
}

func (f *forwarder) close() {
	if f == nil {
		return
	}
	for _, u := range f.ups {
		u.close()
	}
}
