// Package replay runs recorded DNS traffic through kordon's exfiltration
// detector with the records' own timestamps: kordon query logs (JSON
// lines) and dnstap files (Frame Streams, as unbound, BIND, Knot or
// CoreDNS write them), either of them gzip-compressed. Files are read in order through one Replayer, so
// the detector's state carries across them. Each query goes through
// dnsguard.DetectionAlert, the function the live resolver's inspector
// calls, and alerts are deduplicated with the feed's cooldown: replay
// prints the alerts the resolver would have raised.
//
// The package reads only the readers it is given; opening files is the
// caller's job.
package replay

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/dnsguard/detect"
	"github.com/miekg/dns"
)

// Config configures a Replayer.
type Config struct {
	// Sensitivity applies to every record (default Medium): query logs
	// do not record the EgressPolicy's setting.
	Sensitivity detect.Sensitivity
	// Detector settings (benign list, bounds), as for the live inspector.
	Detector detect.Config
	// Cooldown suppresses repeats per (workload, domain, kind), as the
	// alert feed does (default 10m, the feed's default; negative: none).
	Cooldown time.Duration
	// MaxErrors is how many record errors Stats keeps per file (default 20);
	// every skipped record is counted regardless.
	MaxErrors int
}

// Replayer feeds recorded queries to one detector. Not safe for
// concurrent use.
type Replayer struct {
	cfg    Config
	det    *detect.Detector
	last   map[string]time.Time
	nextID uint64
}

// New returns a Replayer with fresh detector state.
func New(cfg Config) *Replayer {
	if cfg.Sensitivity == "" {
		cfg.Sensitivity = detect.Medium
	}
	if cfg.Cooldown == 0 {
		cfg.Cooldown = alert.DefaultCooldown
	}
	if cfg.MaxErrors <= 0 {
		cfg.MaxErrors = 20
	}
	return &Replayer{cfg: cfg, det: detect.New(cfg.Detector), last: map[string]time.Time{}}
}

// Format of a recording.
type Format string

// Formats.
const (
	FormatQueryLog Format = "querylog"
	FormatDnstap   Format = "dnstap"
)

// RecordError is a record that could not be read; it was skipped.
type RecordError struct {
	File string
	// Line is the line of a query log, or the frame number of a dnstap
	// file (counting data frames from 1).
	Line   int
	Format Format
	Err    error
}

func (e *RecordError) Error() string {
	if e.Format == FormatDnstap {
		return fmt.Sprintf("%s: frame %d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
}

func (e *RecordError) Unwrap() error { return e.Err }

// Stats describes one file's replay.
type Stats struct {
	Format Format
	// Records are the queries fed to the detector.
	Records int
	// Skipped are records that could not be read (their errors, up to
	// Config.MaxErrors, are in Errors).
	Skipped int
	Errors  []*RecordError
	// Ignored are well-formed records that are not client queries (dnstap
	// resolver-side messages).
	Ignored int
	Alerts  int
}

func (st *Stats) skip(max int, e *RecordError) {
	st.Skipped++
	if len(st.Errors) < max {
		st.Errors = append(st.Errors, e)
	}
}

// Emit receives each alert in order; an error stops the replay.
type Emit func(alert.Alert) error

// Read replays one recording, named name in errors, detecting its format
// from its first bytes. Bad records are skipped and counted, and the rest
// is read; the error is only for what stops reading (an unreadable
// stream, a truncated dnstap file, or emit's error).
func (r *Replayer) Read(name string, rd io.Reader, emit Emit) (Stats, error) {
	br := bufio.NewReaderSize(rd, 64<<10)
	head, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return Stats{}, fmt.Errorf("replay: %s: %w", name, err)
	}
	// Rotated logs are often compressed: gzip is read through.
	if len(head) >= 2 && head[0] == 0x1f && head[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return Stats{}, fmt.Errorf("replay: %s: %w", name, err)
		}
		defer zr.Close()
		br = bufio.NewReaderSize(zr, 64<<10)
		if head, err = br.Peek(4); err != nil && !errors.Is(err, io.EOF) {
			return Stats{}, fmt.Errorf("replay: %s: %w", name, err)
		}
	}
	// A Frame Streams file starts with the escape of a control frame: a
	// zero length. A query log starts with '{' (or is empty).
	if len(head) == 4 && bytes.Equal(head, []byte{0, 0, 0, 0}) {
		return r.readDnstap(name, br, emit)
	}
	return r.readQueryLog(name, br, emit)
}

// observe scores one event and emits its alert after the cooldown.
func (r *Replayer) observe(ev *dnsguard.QueryEvent, st *Stats, emit Emit) error {
	st.Records++
	ev.Detection.Sensitivity = string(r.cfg.Sensitivity)
	det, a := dnsguard.DetectionAlert(r.det, ev)
	if det == nil {
		return nil
	}
	a.Time = a.Time.UTC()
	key := a.DedupKey()
	if last, ok := r.last[key]; ok && r.cfg.Cooldown > 0 && a.Time.Sub(last) < r.cfg.Cooldown {
		return nil
	}
	r.last[key] = a.Time
	r.nextID++
	a.ID = r.nextID
	st.Alerts++
	return emit(a)
}

// logRecord is the part of a query log record the detector needs.
type logRecord struct {
	Time   *string `json:"time"`
	Client struct {
		IP             string `json:"ip"`
		Namespace      string `json:"namespace"`
		Pod            string `json:"pod"`
		ServiceAccount string `json:"serviceAccount"`
		SPIFFEID       string `json:"spiffeId"`
		Node           string `json:"node"`
	} `json:"client"`
	QName   *string `json:"qname"`
	QType   string  `json:"qtype"`
	RCode   string  `json:"rcode"`
	Verdict string  `json:"verdict"`
	Policy  string  `json:"policy"`
}

const maxLine = 1 << 20

func (r *Replayer) readQueryLog(name string, br *bufio.Reader, emit Emit) (Stats, error) {
	st := Stats{Format: FormatQueryLog}
	sc := bufio.NewScanner(br)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	line := 0
	for {
		if !sc.Scan() {
			if errors.Is(sc.Err(), bufio.ErrTooLong) {
				// Skip the rest of the overlong line and go on.
				line++
				st.skip(r.cfg.MaxErrors, &RecordError{File: name, Line: line, Format: FormatQueryLog, Err: fmt.Errorf("line longer than %d bytes", maxLine)})
				if err := discardLine(br); err != nil {
					return st, nil
				}
				sc = bufio.NewScanner(br)
				sc.Buffer(make([]byte, 64<<10), maxLine)
				continue
			}
			if err := sc.Err(); err != nil {
				return st, fmt.Errorf("replay: %s:%d: %w", name, line+1, err)
			}
			return st, nil
		}
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		ev, err := parseLogRecord(b)
		if err != nil {
			st.skip(r.cfg.MaxErrors, &RecordError{File: name, Line: line, Format: FormatQueryLog, Err: err})
			continue
		}
		if err := r.observe(ev, &st, emit); err != nil {
			return st, err
		}
	}
}

func discardLine(br *bufio.Reader) error {
	for {
		_, isPrefix, err := br.ReadLine()
		if err != nil {
			return err
		}
		if !isPrefix {
			return nil
		}
	}
}

func parseLogRecord(b []byte) (*dnsguard.QueryEvent, error) {
	var rec logRecord
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&rec); err != nil {
		return nil, fmt.Errorf("not a query log record: %v", jsonMessage(err))
	}
	if dec.More() {
		return nil, errors.New("not a query log record: more than one JSON value on the line")
	}
	switch {
	case rec.Time == nil:
		return nil, errors.New(`missing "time"`)
	case rec.QName == nil || *rec.QName == "":
		return nil, errors.New(`missing "qname"`)
	}
	at, err := time.Parse(time.RFC3339Nano, *rec.Time)
	if err != nil {
		return nil, fmt.Errorf(`"time": %q is not an RFC 3339 time`, *rec.Time)
	}
	qt, err := parseType(rec.QType)
	if err != nil {
		return nil, err
	}
	ev := &dnsguard.QueryEvent{Time: at, QName: *rec.QName, QType: rec.QType, QTypeCode: qt, RCode: rec.RCode,
		Verdict: dnsguard.Verdict(rec.Verdict), Policy: rec.Policy}
	ev.Client = dnsguard.Client{Namespace: rec.Client.Namespace, Pod: rec.Client.Pod, ServiceAccount: rec.Client.ServiceAccount,
		SPIFFEID: rec.Client.SPIFFEID, Node: rec.Client.Node}
	if rec.Client.IP != "" {
		ip, err := netip.ParseAddr(rec.Client.IP)
		if err != nil {
			return nil, fmt.Errorf("client.ip: %v", err)
		}
		ev.Client.IP = ip
	}
	if !ev.Client.IP.IsValid() && ev.Client.Pod == "" {
		return nil, errors.New(`missing "client" (an ip or a pod)`)
	}
	return ev, nil
}

// jsonMessage drops encoding/json's Go type names from an error.
func jsonMessage(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q: %s where a %s belongs", te.Field, te.Value, te.Type.Kind())
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// parseType reads "A", "TXT", "TYPE65399"; an empty type is A's absence
// of knowledge (0), which no rule of the detector weighs.
func parseType(s string) (uint16, error) {
	if s == "" {
		return 0, nil
	}
	if t, ok := dns.StringToType[strings.ToUpper(s)]; ok {
		return t, nil
	}
	if n, ok := strings.CutPrefix(strings.ToUpper(s), "TYPE"); ok {
		if v, err := strconv.ParseUint(n, 10, 16); err == nil {
			return uint16(v), nil
		}
	}
	return 0, fmt.Errorf("qtype %q: unknown record type", s)
}
