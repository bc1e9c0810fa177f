package replay

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/proto"
)

// maxPending bounds client queries waiting for their response; past it the
// oldest is replayed without an rcode.
const maxPending = 65536

type pendingKey struct {
	addr netip.Addr
	port uint32
	id   uint16
	name string
}

// readDnstap replays the client side of a dnstap file: each CLIENT_QUERY
// paired with its CLIENT_RESPONSE (same client address, port, DNS ID and
// name) becomes one query at the query's time with the response's rcode,
// as the query log records it; a response whose query was not logged
// stands alone, and a query never answered is replayed without an rcode.
// Resolver-side messages (RESOLVER_QUERY, FORWARDER_*, AUTH_*) are the
// server's own traffic and are counted as ignored.
func (r *Replayer) readDnstap(name string, rd io.Reader, emit Emit) (Stats, error) {
	st := Stats{Format: FormatDnstap}
	fr, err := dnstap.NewReader(rd, nil)
	if err != nil {
		return st, fmt.Errorf("replay: %s: not a dnstap file: %w", name, err)
	}
	pending := map[pendingKey]*dnsguard.QueryEvent{}
	var order []pendingKey // insertion order, for eviction
	flush := func(all bool) error {
		// Replay the queries still waiting, oldest first.
		var evs []*dnsguard.QueryEvent
		for len(order) > 0 && (all || len(pending) > maxPending) {
			k := order[0]
			order = order[1:]
			if ev, ok := pending[k]; ok {
				delete(pending, k)
				evs = append(evs, ev)
			}
		}
		sort.SliceStable(evs, func(i, j int) bool { return evs[i].Time.Before(evs[j].Time) })
		for _, ev := range evs {
			if err := r.observe(ev, &st, emit); err != nil {
				return err
			}
		}
		return nil
	}
	buf := make([]byte, 1<<20)
	for frame := 1; ; frame++ {
		n, err := fr.ReadFrame(buf)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// Frame Streams has no resynchronisation: what follows a
			// damaged frame cannot be found.
			st.skip(r.cfg.MaxErrors, &RecordError{File: name, Line: frame, Format: FormatDnstap, Err: fmt.Errorf("damaged or truncated stream, rest of file not read: %v", err)})
			break
		}
		var dt dnstap.Dnstap
		if err := proto.Unmarshal(buf[:n], &dt); err != nil {
			st.skip(r.cfg.MaxErrors, &RecordError{File: name, Line: frame, Format: FormatDnstap, Err: fmt.Errorf("not a dnstap message: %v", err)})
			continue
		}
		m := dt.GetMessage()
		if dt.GetType() != dnstap.Dnstap_MESSAGE || m == nil {
			st.Ignored++
			continue
		}
		switch m.GetType() {
		case dnstap.Message_CLIENT_QUERY:
			ev, key, err := clientEvent(m, m.GetQueryMessage(), m.GetQueryTimeSec(), m.GetQueryTimeNsec())
			if err != nil {
				st.skip(r.cfg.MaxErrors, &RecordError{File: name, Line: frame, Format: FormatDnstap, Err: err})
				continue
			}
			if _, dup := pending[key]; !dup {
				order = append(order, key)
			}
			if len(order) > 2*maxPending {
				// Answered queries leave their keys behind: keep the waiting ones.
				kept := order[:0]
				for _, k := range order {
					if _, ok := pending[k]; ok {
						kept = append(kept, k)
					}
				}
				order = kept
			}
			pending[key] = ev
			if err := flush(false); err != nil {
				return st, err
			}
		case dnstap.Message_CLIENT_RESPONSE:
			ev, key, err := clientEvent(m, m.GetResponseMessage(), m.GetQueryTimeSec(), m.GetQueryTimeNsec())
			if err != nil {
				st.skip(r.cfg.MaxErrors, &RecordError{File: name, Line: frame, Format: FormatDnstap, Err: err})
				continue
			}
			if q, ok := pending[key]; ok {
				delete(pending, key)
				q.RCode = ev.RCode
				ev = q
			} else if m.QueryTimeSec == nil {
				ev.Time = unixTime(m.GetResponseTimeSec(), m.GetResponseTimeNsec())
			}
			if err := r.observe(ev, &st, emit); err != nil {
				return st, err
			}
		default:
			st.Ignored++
		}
	}
	return st, flush(true)
}

func unixTime(sec uint64, nsec uint32) time.Time {
	return time.Unix(int64(sec), int64(nsec)).UTC()
}

// clientEvent turns a client-side message into a query event.
func clientEvent(m *dnstap.Message, wire []byte, sec uint64, nsec uint32) (*dnsguard.QueryEvent, pendingKey, error) {
	if len(wire) == 0 {
		return nil, pendingKey{}, fmt.Errorf("%s without a DNS message", m.GetType())
	}
	var msg dns.Msg
	if err := msg.Unpack(wire); err != nil {
		return nil, pendingKey{}, fmt.Errorf("%s: bad DNS message: %v", m.GetType(), err)
	}
	if len(msg.Question) != 1 {
		return nil, pendingKey{}, fmt.Errorf("%s: %d questions", m.GetType(), len(msg.Question))
	}
	addr, ok := netip.AddrFromSlice(m.GetQueryAddress())
	if !ok {
		return nil, pendingKey{}, fmt.Errorf("%s: no client address", m.GetType())
	}
	addr = addr.Unmap()
	q := msg.Question[0]
	ev := &dnsguard.QueryEvent{Time: unixTime(sec, nsec), Client: dnsguard.Client{IP: addr}, QName: q.Name,
		QType: dns.TypeToString[q.Qtype], QTypeCode: q.Qtype, Verdict: dnsguard.VerdictAllowed}
	if ev.QType == "" {
		ev.QType = fmt.Sprintf("TYPE%d", q.Qtype)
	}
	if msg.Response {
		ev.RCode = dns.RcodeToString[msg.Rcode]
	}
	return ev, pendingKey{addr: addr, port: m.GetQueryPort(), id: msg.Id, name: dns.CanonicalName(q.Name)}, nil
}
