package dnsguard

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	framestream "github.com/farsightsec/golang-framestream"
	"google.golang.org/protobuf/encoding/protowire"
)

// tapWire is what dnstap records of a query beyond its QueryEvent: the
// query and the reply as they were on the wire, the client's address and
// port, and the transport. Paths fill it as they write the reply; the
// slices are only valid until the event has been observed.
type tapWire struct {
	query, reply []byte
	peer         netip.AddrPort
	tcp          bool
}

// ParseDnstapAddress splits a dnstap destination, "unix:/run/dnstap.sock"
// or "tcp:127.0.0.1:6000", into a network and an address for net.Dial.
func ParseDnstapAddress(s string) (network, address string, err error) {
	network, address, ok := strings.Cut(s, ":")
	switch {
	case !ok || address == "":
	case network == "unix":
		return network, address, nil
	case network == "tcp":
		if _, _, err := net.SplitHostPort(address); err == nil {
			return network, address, nil
		}
	}
	return "", "", fmt.Errorf("dnsguard: dnstap address %q: want unix:/path/to.sock or tcp:host:port", s)
}

// dnstap field numbers (dnstap.proto).
const (
	tapFieldIdentity = 1
	tapFieldVersion  = 2
	tapFieldMessage  = 14
	tapFieldType     = 15

	msgFieldType          = 1
	msgFieldFamily        = 2
	msgFieldProtocol      = 3
	msgFieldQueryAddress  = 4
	msgFieldQueryPort     = 6
	msgFieldQueryTimeSec  = 8
	msgFieldQueryTimeNsec = 9
	msgFieldQueryMessage  = 10
	msgFieldRespTimeSec   = 12
	msgFieldRespTimeNsec  = 13
	msgFieldRespMessage   = 14
)

// tapEncoder appends a query's two dnstap frames, CLIENT_QUERY and
// CLIENT_RESPONSE, each a Frame Streams data frame (a 4-byte big-endian
// length and a Dnstap protobuf), encoded by hand: the generated types
// would allocate several objects per message on the query path.
type tapEncoder struct {
	identity, version []byte
}

func (e *tapEncoder) appendEvent(b []byte, ev *QueryEvent) []byte {
	if ev.tap.reply == nil {
		return b
	}
	resp := ev.Time.Add(time.Duration(ev.Latency * float64(time.Second)))
	b = e.appendFrame(b, ev, dnstap.Message_CLIENT_QUERY, time.Time{})
	return e.appendFrame(b, ev, dnstap.Message_CLIENT_RESPONSE, resp)
}

// appendFrame appends one frame; resp is the response time (zero for the
// query message, which carries the query instead of the reply).
func (e *tapEncoder) appendFrame(b []byte, ev *QueryEvent, typ dnstap.Message_Type, resp time.Time) []byte {
	addr := ev.tap.peer.Addr().Unmap()
	family, proto := dnstap.SocketFamily_INET, dnstap.SocketProtocol_UDP
	if addr.Is6() {
		family = dnstap.SocketFamily_INET6
	}
	if ev.tap.tcp {
		proto = dnstap.SocketProtocol_TCP
	}
	var ip []byte
	if addr.Is4() {
		a := addr.As4()
		ip = a[:]
	} else {
		a := addr.As16()
		ip = a[:]
	}
	qsec, qnsec := uint64(ev.Time.Unix()), uint32(ev.Time.Nanosecond())
	wire := ev.tap.query
	if typ == dnstap.Message_CLIENT_RESPONSE {
		wire = ev.tap.reply
	}

	// The Message's size first: it is a length-delimited field.
	msgLen := 1 + protowire.SizeVarint(uint64(typ)) + 1 + protowire.SizeVarint(uint64(family)) +
		1 + protowire.SizeVarint(uint64(proto)) + 1 + protowire.SizeBytes(len(ip)) +
		1 + protowire.SizeVarint(uint64(ev.tap.peer.Port())) + 1 + protowire.SizeVarint(qsec) + 1 + 4
	if wire != nil {
		msgLen += 1 + protowire.SizeBytes(len(wire))
	}
	if !resp.IsZero() {
		msgLen += 1 + protowire.SizeVarint(uint64(resp.Unix())) + 1 + 4
	}
	total := 1 + protowire.SizeBytes(len(e.identity)) + 1 + protowire.SizeBytes(len(e.version)) +
		1 + protowire.SizeBytes(msgLen) + 1 + protowire.SizeVarint(uint64(dnstap.Dnstap_MESSAGE))

	b = binary.BigEndian.AppendUint32(b, uint32(total))
	b = protowire.AppendTag(b, tapFieldIdentity, protowire.BytesType)
	b = protowire.AppendBytes(b, e.identity)
	b = protowire.AppendTag(b, tapFieldVersion, protowire.BytesType)
	b = protowire.AppendBytes(b, e.version)
	b = protowire.AppendTag(b, tapFieldMessage, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(msgLen))
	b = protowire.AppendTag(b, msgFieldType, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(typ))
	b = protowire.AppendTag(b, msgFieldFamily, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(family))
	b = protowire.AppendTag(b, msgFieldProtocol, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(proto))
	b = protowire.AppendTag(b, msgFieldQueryAddress, protowire.BytesType)
	b = protowire.AppendBytes(b, ip)
	b = protowire.AppendTag(b, msgFieldQueryPort, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(ev.tap.peer.Port()))
	b = protowire.AppendTag(b, msgFieldQueryTimeSec, protowire.VarintType)
	b = protowire.AppendVarint(b, qsec)
	b = protowire.AppendTag(b, msgFieldQueryTimeNsec, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, qnsec)
	if resp.IsZero() {
		if wire != nil {
			b = protowire.AppendTag(b, msgFieldQueryMessage, protowire.BytesType)
			b = protowire.AppendBytes(b, wire)
		}
	} else {
		b = protowire.AppendTag(b, msgFieldRespTimeSec, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(resp.Unix()))
		b = protowire.AppendTag(b, msgFieldRespTimeNsec, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, uint32(resp.Nanosecond()))
		b = protowire.AppendTag(b, msgFieldRespMessage, protowire.BytesType)
		b = protowire.AppendBytes(b, wire)
	}
	b = protowire.AppendTag(b, tapFieldType, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(dnstap.Dnstap_MESSAGE))
}

// tapSink is the dnstap connection: a bidirectional Frame Streams session
// (READY/ACCEPT/START, then data frames, STOP/FINISH on close) to a Unix
// or TCP socket, redialled at most every retry after it fails. While it
// is down, records are dropped and counted: dnstap never waits for its
// collector.
type tapSink struct {
	network, address string
	timeout, retry   time.Duration
	log              *slog.Logger
	m                *metrics

	conn     net.Conn
	fs       *framestream.Writer // the session, for its handshake and STOP
	bw       *bufio.Writer       // data frames, already framed, go here
	buffered int                 // queries whose frames are in bw
	nextDial time.Time
}

func (t *tapSink) connect() bool {
	now := time.Now()
	if now.Before(t.nextDial) {
		return false
	}
	t.nextDial = now.Add(t.retry)
	conn, err := net.DialTimeout(t.network, t.address, t.timeout)
	if err != nil {
		t.log.Debug("dnstap dial failed", "address", t.address, "error", err)
		return false
	}
	fs, err := framestream.NewWriter(conn, &framestream.WriterOptions{
		ContentTypes: [][]byte{dnstap.FSContentType}, Bidirectional: true, Timeout: t.timeout})
	if err != nil {
		conn.Close()
		t.log.Warn("dnstap handshake failed", "address", t.address, "error", err)
		return false
	}
	if t.bw == nil {
		t.bw = bufio.NewWriterSize(conn, 64<<10)
	} else {
		t.bw.Reset(conn)
	}
	t.conn, t.fs = conn, fs
	t.m.tapConnected.Set(1)
	t.log.Info("dnstap connected", "address", t.address)
	return true
}

func (t *tapSink) disconnect(err error) {
	t.log.Warn("dnstap connection lost", "address", t.address, "error", err)
	t.conn.Close()
	t.conn, t.fs = nil, nil
	t.m.tapConnected.Set(0)
}

func (t *tapSink) write(b []byte, n int) {
	if t.conn == nil && !t.connect() {
		t.m.tapDropped.Add(float64(n))
		return
	}
	_ = t.conn.SetWriteDeadline(time.Now().Add(t.timeout))
	if t.bw.Available() < len(b) {
		// The buffer is written out within this Write: count it first.
		t.flush()
		if t.conn == nil {
			t.m.tapDropped.Add(float64(n))
			return
		}
	}
	if _, err := t.bw.Write(b); err != nil {
		t.m.tapDropped.Add(float64(n + t.buffered))
		t.buffered = 0
		t.disconnect(err)
		return
	}
	if t.bw.Buffered() == 0 {
		t.m.tapMessages.Add(float64(2 * n)) // larger than the buffer: written through
		return
	}
	t.buffered += n
}

// flush writes out the buffer; its records count as sent once the kernel
// took them, as dropped if the connection failed.
func (t *tapSink) flush() {
	if t.conn == nil || t.bw.Buffered() == 0 {
		return
	}
	_ = t.conn.SetWriteDeadline(time.Now().Add(t.timeout))
	err := t.bw.Flush()
	if err != nil {
		t.m.tapDropped.Add(float64(t.buffered))
		t.disconnect(err)
	} else {
		t.m.tapMessages.Add(float64(2 * t.buffered))
	}
	t.buffered = 0
}

func (t *tapSink) close() {
	if t.conn == nil {
		return
	}
	t.flush()
	if t.fs != nil {
		_ = t.fs.Close() // STOP, then the collector's FINISH
	}
	if t.conn != nil {
		t.conn.Close()
		t.m.tapConnected.Set(0)
	}
}
