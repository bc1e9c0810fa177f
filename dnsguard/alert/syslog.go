package alert

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Syslog message formats (SyslogConfig.Format).
const (
	// SyslogSDJSON: the alert's fields as RFC 5424 structured data (SD-ID
	// SyslogSDID) and the alert's JSON (the feed's schema) as the message.
	SyslogSDJSON = "sd+json"
	// SyslogSD: structured data, and the alert's text (Message) as the message.
	SyslogSD = "sd"
	// SyslogJSON: no structured data, the alert's JSON as the message.
	SyslogJSON = "json"
)

// SyslogSDID is the structured-data ID of the alert fields: kordon under
// 32473, the private enterprise number RFC 5612 reserves for
// documentation (kordon has none of its own).
const SyslogSDID = "kordon@32473"

// SyslogConfig is a syslog receiver of the feed (a SIEM): RFC 5424
// messages over TCP or TLS with RFC 6587 octet-counting framing, one per
// alert, delivered like webhooks (in order, at least once, cursor file
// syslog-<name>.cursor, retries with backoff).
type SyslogConfig struct {
	// Name identifies the cursor file (letters, digits, '-'; default syslog).
	Name string
	// Address is tcp://host:port or tls://host:port.
	Address string
	// TLS configures tls:// (nil: the system roots, ServerName the host).
	TLS *tls.Config
	// Format is SyslogSDJSON (default), SyslogSD or SyslogJSON.
	Format string
	// Facility is the syslog facility (default 13, log audit).
	Facility int
	// Hostname is the HOSTNAME of alerts without a node (default "-").
	Hostname string
	// Retry bounds attempts (see Retry).
	Retry Retry
	// Dialer dials the receiver (default a net.Dialer).
	Dialer *net.Dialer
}

// ParseSyslogAddress checks a tcp://host:port or tls://host:port address
// and returns its scheme and host:port.
func ParseSyslogAddress(s string) (scheme, hostport string, err error) {
	u, err := url.Parse(s)
	if err == nil && (u.Scheme == "tcp" || u.Scheme == "tls") && u.Port() != "" && u.Hostname() != "" && (u.Path == "" || u.Path == "/") && u.RawQuery == "" && u.User == nil {
		return u.Scheme, u.Host, nil
	}
	return "", "", fmt.Errorf("alert: syslog address %q: want tcp://host:port or tls://host:port", s)
}

// SyslogSender sends alerts to one syslog receiver over one connection,
// redialled when it fails; the feed delivers through one (with its
// cursor and retries), and so can another delivery loop (the
// controller's cluster alerts). Safe for concurrent use.
//
// TCP syslog has no acknowledgement. Deliver returns nil once the
// receiver's TCP stack acknowledged every byte written (the socket's
// send queue, SIOCOUTQ, is empty) and the connection is still open (a
// reader goroutine sees the receiver's close or reset at once); otherwise
// it fails and the alert is to be sent again on a new connection. A
// receiver that dies after acknowledging but before storing can still
// lose what it held (RELP would be needed to close that gap).
type SyslogSender struct {
	cfg      SyslogConfig
	scheme   string
	hostport string

	mu   sync.Mutex
	conn net.Conn
	raw  syscall.RawConn // the TCP socket under conn (TLS included)
	dead chan struct{}   // closed when the receiver closed or reset conn
}

// NewSyslogSender checks cfg and fills its defaults; it dials on the
// first Deliver.
func NewSyslogSender(cfg SyslogConfig) (*SyslogSender, error) {
	if cfg.Name == "" {
		cfg.Name = "syslog"
	}
	if err := checkSinkName("syslog", cfg.Name); err != nil {
		return nil, err
	}
	scheme, hostport, err := ParseSyslogAddress(cfg.Address)
	if err != nil {
		return nil, err
	}
	switch cfg.Format {
	case "":
		cfg.Format = SyslogSDJSON
	case SyslogSDJSON, SyslogSD, SyslogJSON:
	default:
		return nil, fmt.Errorf("alert: syslog format %q: want %s, %s or %s", cfg.Format, SyslogSDJSON, SyslogSD, SyslogJSON)
	}
	if cfg.Facility == 0 {
		cfg.Facility = 13
	}
	if cfg.Facility < 0 || cfg.Facility > 23 {
		return nil, fmt.Errorf("alert: syslog facility %d: want 0-23", cfg.Facility)
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "-"
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	return &SyslogSender{cfg: cfg, scheme: scheme, hostport: hostport}, nil
}

func newSyslog(f *Feed, cfg SyslogConfig) (*durableSink, error) {
	s, err := NewSyslogSender(cfg)
	if err != nil {
		return nil, err
	}
	d, err := newDurableSink(f, s.cfg.Name, "syslog-"+s.cfg.Name+".cursor", cfg.Retry, s.Deliver)
	if err != nil {
		return nil, err
	}
	d.stop = s.Close
	return d, nil
}

// Deliver sends a, bounded by ctx (see SyslogSender for when it counts
// as delivered).
func (s *SyslogSender) Deliver(ctx context.Context, a Alert) error {
	frame, err := SyslogFrame(a, s.cfg.Format, s.cfg.Facility, s.cfg.Hostname)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil && s.closedByPeer() {
		s.drop()
	}
	if s.conn == nil {
		if err := s.dial(ctx); err != nil {
			return err
		}
	}
	deadline, _ := ctx.Deadline()
	_ = s.conn.SetWriteDeadline(deadline)
	if _, err := s.conn.Write(frame); err != nil {
		s.drop()
		return err
	}
	// Wait until the receiver's TCP stack has every byte, or it closed.
	for wait := 100 * time.Microsecond; ; wait = min(wait*2, 20*time.Millisecond) {
		if s.closedByPeer() {
			s.drop()
			return errors.New("receiver closed the connection")
		}
		n, err := s.unacked()
		if err != nil || n == 0 {
			break // SIOCOUTQ unsupported: the write is all we know
		}
		select {
		case <-ctx.Done():
			s.drop()
			return fmt.Errorf("receiver did not acknowledge: %w", ctx.Err())
		case <-s.dead:
		case <-time.After(wait):
		}
	}
	return nil
}

func (s *SyslogSender) dial(ctx context.Context) error {
	c, err := s.cfg.Dialer.DialContext(ctx, "tcp", s.hostport)
	if err != nil {
		return err
	}
	tcp, _ := c.(*net.TCPConn)
	var conn net.Conn = c
	if s.scheme == "tls" {
		cfg := &tls.Config{}
		if s.cfg.TLS != nil {
			cfg = s.cfg.TLS.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(s.hostport)
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			return err
		}
		conn = tc
	}
	s.conn, s.dead = conn, make(chan struct{})
	s.raw = nil
	if tcp != nil {
		s.raw, _ = tcp.SyscallConn()
	}
	// The receiver never sends syslog data; reading sees its close or
	// reset at once (and, over TLS, consumes session tickets).
	go func(conn net.Conn, dead chan struct{}) {
		buf := make([]byte, 512)
		for {
			if _, err := conn.Read(buf); err != nil {
				close(dead)
				return
			}
		}
	}(conn, s.dead)
	return nil
}

func (s *SyslogSender) closedByPeer() bool {
	select {
	case <-s.dead:
		return true
	default:
		return false
	}
}

// unacked is the number of bytes written and not yet acknowledged.
func (s *SyslogSender) unacked() (int, error) {
	if s.raw == nil {
		return 0, errors.ErrUnsupported
	}
	var n int
	var ierr error
	if err := s.raw.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil {
		return 0, err
	}
	return n, ierr
}

func (s *SyslogSender) drop() {
	if s.conn != nil {
		s.conn.Close()
		s.conn, s.raw = nil, nil
	}
}

// Close closes the connection (a later Deliver dials again).
func (s *SyslogSender) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drop()
}

// syslogSeverity maps an alert's severity to a syslog severity.
func syslogSeverity(sev string) int {
	switch strings.ToLower(sev) {
	case "critical":
		return 2
	case "high":
		return 3
	case "medium":
		return 4
	case "low":
		return 5
	}
	return 6
}

// SyslogFrame is a's RFC 5424 message, octet-counted as RFC 6587 frames
// it ("<length> <message>"):
//
//	<PRI>1 TIMESTAMP HOSTNAME kordon - KIND [kordon@32473 id="7" ...] MSG
//
// HOSTNAME is the alert's node (else hostname), MSGID its kind.
func SyslogFrame(a Alert, format string, facility int, hostname string) ([]byte, error) {
	host := a.Node
	if host == "" {
		host = hostname
	}
	var b []byte
	b = append(b, '<')
	b = strconv.AppendInt(b, int64(facility*8+syslogSeverity(a.Severity)), 10)
	b = append(b, ">1 "...)
	b = a.Time.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z07:00")
	b = append(b, ' ')
	b = appendHeaderField(b, host, 255)
	b = append(b, " kordon - "...)
	b = appendHeaderField(b, a.Kind, 32)
	b = append(b, ' ')
	if format == SyslogJSON {
		b = append(b, '-')
	} else {
		id, err := WebhookID(a)
		if err != nil {
			return nil, err
		}
		b = append(b, "["+SyslogSDID...)
		param := func(name, v string) {
			if v == "" {
				return
			}
			b = append(b, ' ')
			b = append(b, name...)
			b = append(b, `="`...)
			for _, r := range strings.ToValidUTF8(v, "\uFFFD") {
				if r == '"' || r == '\\' || r == ']' {
					b = append(b, '\\')
				}
				b = utf8.AppendRune(b, r)
			}
			b = append(b, '"')
		}
		param("id", strconv.FormatUint(a.ID, 10))
		param("eventId", id)
		param("severity", a.Severity)
		param("kind", a.Kind)
		param("node", a.Node)
		param("namespace", a.Namespace)
		param("pod", a.Pod)
		param("serviceAccount", a.ServiceAccount)
		param("spiffeId", a.SPIFFEID)
		param("clientIp", a.ClientIP)
		param("domain", a.Domain)
		if a.Score != 0 {
			param("score", strconv.FormatFloat(a.Score, 'g', -1, 64))
		}
		param("action", a.Action)
		param("policy", a.Policy)
		b = append(b, ']')
	}
	msg := a.Message
	if format != SyslogSD {
		j, err := json.Marshal(&a)
		if err != nil {
			return nil, err
		}
		msg = string(j)
	}
	if msg != "" {
		b = append(b, ' ')
		b = append(b, strings.ToValidUTF8(msg, "\uFFFD")...)
	}
	frame := strconv.AppendInt(nil, int64(len(b)), 10)
	frame = append(frame, ' ')
	return append(frame, b...), nil
}

// appendHeaderField appends a header field: printable US-ASCII, at most
// limit characters, "-" when empty.
func appendHeaderField(b []byte, v string, limit int) []byte {
	n := 0
	for i := 0; i < len(v) && n < limit; i++ {
		if c := v[i]; c > 32 && c < 127 {
			b = append(b, c)
			n++
		}
	}
	if n == 0 {
		b = append(b, '-')
	}
	return b
}

// ReadSyslogFrame reads one RFC 6587 octet-counted frame ("<length>
// <message>") from r and returns the message: what a receiver of
// SyslogFrame does. Lengths above 1 MiB are rejected.
func ReadSyslogFrame(r *bufio.Reader) (string, error) {
	n := 0
	for digits := 0; ; digits++ {
		c, err := r.ReadByte()
		if err != nil {
			return "", err
		}
		if c == ' ' && digits > 0 {
			break
		}
		if c < '0' || c > '9' || digits == 7 || (digits == 0 && c == '0') {
			return "", fmt.Errorf("alert: syslog frame: bad octet count at byte %d", digits)
		}
		n = n*10 + int(c-'0')
	}
	if n > 1<<20 {
		return "", fmt.Errorf("alert: syslog frame: %d octets is more than 1 MiB", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b), nil
}
