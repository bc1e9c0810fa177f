package authdns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Server.
type Config struct {
	// Zones are served; at least one is required.
	Zones []*Zone
	// Logger receives start/stop messages and, at Debug, every query.
	// Nil discards.
	Logger *slog.Logger
	// Registerer, when set, receives the server's metrics.
	Registerer prometheus.Registerer
}

// Server answers queries for its zones over UDP and TCP. Names outside every
// zone get REFUSED. It is a dns.Handler, so it can also be mounted on a
// caller's dns.Server.
type Server struct {
	zones   zoneSet
	log     *slog.Logger
	queries *prometheus.CounterVec

	mu      sync.Mutex
	servers []*dns.Server
}

var _ dns.Handler = (*Server)(nil)

// New returns a Server for cfg.Zones.
func New(cfg Config) (*Server, error) {
	if len(cfg.Zones) == 0 {
		return nil, errors.New("authdns: no zones")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		zones: newZoneSet(cfg.Zones),
		log:   log,
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kordon", Subsystem: "authdns", Name: "queries_total",
			Help: "Queries answered by the authoritative server, by response code.",
		}, []string{"rcode"}),
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(s.queries); err != nil {
			return nil, fmt.Errorf("authdns: register metrics: %w", err)
		}
	}
	return s, nil
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := s.answer(r)
	s.queries.WithLabelValues(dns.RcodeToString[m.Rcode]).Inc()
	if len(r.Question) == 1 {
		s.log.Debug("query", "qname", r.Question[0].Name, "qtype", dns.TypeToString[r.Question[0].Qtype], "rcode", dns.RcodeToString[m.Rcode], "client", w.RemoteAddr().String())
	}
	if _, isUDP := w.RemoteAddr().(*net.UDPAddr); isUDP {
		size := dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	// A client that went away is not the server's error.
	_ = w.WriteMsg(m)
}

// answer builds the response to r.
func (s *Server) answer(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	if r.Opcode != dns.OpcodeQuery {
		m.SetRcode(r, dns.RcodeNotImplemented)
		return m
	}
	if len(r.Question) != 1 || r.Response {
		m.SetRcode(r, dns.RcodeFormatError)
		return m
	}
	m.SetReply(r)
	m.Compress = true
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(dns.DefaultMsgSize, false)
	}
	q := r.Question[0]
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		m.Rcode = dns.RcodeRefused
		return m
	}
	name := dns.CanonicalName(q.Name)
	z := s.zones.zoneFor(name)
	if z == nil {
		m.Rcode = dns.RcodeRefused
		return m
	}
	m.Authoritative = true
	res := z.lookup(name, q.Qtype)
	m.Rcode = res.rcode
	m.Answer = res.answer
	m.Ns = res.authority
	// Keep the client's case in owner names (0x20 randomisation).
	for i, rr := range m.Answer {
		if rr.Header().Name == name && name != q.Name {
			c := dns.Copy(rr)
			c.Header().Name = q.Name
			m.Answer[i] = c
		}
	}
	return m
}

// Listen binds UDP and TCP on the same address (port 0 picks one free port
// for both) and serves until Shutdown. It returns the bound address once
// both listeners are ready.
func (s *Server) Listen(addr string) (net.Addr, error) {
	pc, l, err := listenBoth(addr)
	if err != nil {
		return nil, fmt.Errorf("authdns: %w", err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: s}
	tcp := &dns.Server{Listener: l, Handler: s}
	s.mu.Lock()
	s.servers = append(s.servers, udp, tcp)
	s.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	udp.NotifyStartedFunc = wg.Done
	tcp.NotifyStartedFunc = wg.Done
	for _, srv := range []*dns.Server{udp, tcp} {
		go func() {
			if err := srv.ActivateAndServe(); err != nil {
				s.log.Error("dns server stopped", "err", err)
			}
		}()
	}
	wg.Wait()
	s.log.Info("authoritative DNS listening", "addr", pc.LocalAddr().String())
	return pc.LocalAddr(), nil
}

// Shutdown stops every listener started by Listen.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.mu.Unlock()
	var errs []error
	for _, srv := range servers {
		if err := srv.ShutdownContext(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// listenBoth binds UDP and TCP on one port. With port 0 it retries a few
// times when the port the kernel gave UDP is taken for TCP.
func listenBoth(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, err
		}
		bound := pc.LocalAddr().(*net.UDPAddr)
		l, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(bound.Port)))
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		lastErr = err
		if port != "0" {
			break
		}
	}
	return nil, nil, lastErr
}
