// Package alert is kordon's egress alert feed: a durable append-only log
// of Alert records (JSON lines in rotated segments, recovered on start),
// served over HTTP (list with filters, and a Server-Sent Events stream),
// ingested from node agents, and delivered to webhooks (HMAC-signed) and
// syslog receivers at least once with an on-disk cursor and retries with
// backoff.
package alert

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Kinds of alerts.
const (
	KindExfiltration = "exfiltration"
	KindTunneling    = "tunneling"
	KindBlocked      = "blocked"
	KindQuarantine   = "quarantine"
)

// Alert is one record of the feed. The JSON schema is stable; see README.md.
type Alert struct {
	// ID is unique and increasing in one feed, across restarts.
	ID             uint64          `json:"id"`
	Time           time.Time       `json:"time"`
	Severity       string          `json:"severity"`
	Kind           string          `json:"kind"`
	Node           string          `json:"node,omitempty"`
	Namespace      string          `json:"namespace,omitempty"`
	Pod            string          `json:"pod,omitempty"`
	ServiceAccount string          `json:"serviceAccount,omitempty"`
	SPIFFEID       string          `json:"spiffeId,omitempty"`
	ClientIP       string          `json:"clientIp,omitempty"`
	Domain         string          `json:"domain"`
	Score          float64         `json:"score,omitempty"`
	Evidence       json.RawMessage `json:"evidence,omitempty"`
	Action         string          `json:"action"`
	Policy         string          `json:"policy,omitempty"`
	Message        string          `json:"message,omitempty"`
	// Count, FirstSeen and LastSeen describe the series of a cluster
	// alert (an EgressAlert object: one per workload, kind and domain);
	// a node's own feed leaves them unset.
	Count     int64     `json:"count,omitempty"`
	FirstSeen time.Time `json:"firstSeen,omitzero"`
	LastSeen  time.Time `json:"lastSeen,omitzero"`
}

// Workload names who the alert is about: namespace/pod, or the client
// address when the registry did not know it.
func (a *Alert) Workload() string {
	if a.Pod == "" {
		return a.ClientIP
	}
	return a.Namespace + "/" + a.Pod
}

// DedupKey identifies "the same alert again" for the cooldown: one
// workload, domain (or destination address) and kind.
func (a *Alert) DedupKey() string { return a.Workload() + "|" + a.Domain + "|" + a.Kind }

// DefaultCooldown is Config.Cooldown's default.
const DefaultCooldown = 10 * time.Minute

// FsyncPolicy says when the log is synced to disk.
type FsyncPolicy string

// Fsync policies.
const (
	// FsyncAlways syncs every alert before Publish returns (default).
	FsyncAlways FsyncPolicy = "always"
	// FsyncInterval syncs at most once per FsyncEvery.
	FsyncInterval FsyncPolicy = "interval"
)

// Config configures a Feed.
type Config struct {
	// Dir holds the log segments and webhook cursors. Required.
	Dir string
	// Fsync policy (default always) and interval (default 1s).
	Fsync      FsyncPolicy
	FsyncEvery time.Duration
	// SegmentBytes rotates the log (default 16 MiB); MaxSegments keeps
	// that many (default 16).
	SegmentBytes int64
	MaxSegments  int
	// Cooldown suppresses repeats per (workload, domain, kind) (default 10m).
	Cooldown time.Duration
	// Memory is how many recent alerts are kept for queries (default 50,000).
	Memory int
	// Webhooks receive every alert.
	Webhooks []WebhookConfig
	// Syslog receivers (SIEMs) receive every alert too.
	Syslog  []SyslogConfig
	Logger  *slog.Logger
	Now     func() time.Time
	Metrics prometheus.Registerer
}

// Feed is the alert log. Safe for concurrent use.
type Feed struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex
	// dirLock is Dir/lock, flock'd around recovery and every append:
	// two processes sharing Dir (the old and the new node agent during
	// a rolling update) never interleave writes, never take the other's
	// line in progress for a torn tail, and number alerts in one series.
	dirLock  *os.File
	seg      *os.File
	segSize  int64
	segIndex int
	lastID   uint64
	recent   []Alert
	lastSeen map[string]time.Time
	subs     map[chan struct{}]struct{}
	dirty    bool
	closed   bool

	sinks   []*durableSink
	stop    context.CancelFunc
	wg      sync.WaitGroup
	metrics feedMetrics
}

type feedMetrics struct {
	published  *prometheus.CounterVec
	suppressed prometheus.Counter
	delivered  *prometheus.CounterVec
	pending    *prometheus.GaugeVec
}

// NewFeed opens (or creates) the log in cfg.Dir and recovers its content:
// a torn last line from a crash is truncated, and IDs continue after the
// highest one recorded.
func NewFeed(cfg Config) (*Feed, error) {
	if cfg.Dir == "" {
		return nil, errors.New("alert: Config.Dir is required")
	}
	if cfg.Fsync == "" {
		cfg.Fsync = FsyncAlways
	}
	if cfg.FsyncEvery <= 0 {
		cfg.FsyncEvery = time.Second
	}
	if cfg.SegmentBytes <= 0 {
		cfg.SegmentBytes = 16 << 20
	}
	if cfg.MaxSegments <= 0 {
		cfg.MaxSegments = 16
	}
	if cfg.Cooldown == 0 {
		cfg.Cooldown = DefaultCooldown
	}
	if cfg.Memory <= 0 {
		cfg.Memory = 50000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("alert: %w", err)
	}
	f := &Feed{cfg: cfg, log: cfg.Logger, lastSeen: map[string]time.Time{}, subs: map[chan struct{}]struct{}{}}
	var err error
	f.metrics = feedMetrics{
		published:  prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "alert", Name: "published_total", Help: "Alerts written to the feed, by kind and severity."}, []string{"kind", "severity"}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "alert", Name: "suppressed_total", Help: "Alerts dropped as repeats within the cooldown."}),
		delivered:  prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kordon", Subsystem: "alert", Name: "webhook_deliveries_total", Help: "Delivery attempts to each sink (webhooks, Kubernetes Events, syslog), by sink name and result."}, []string{"webhook", "result"}),
		pending:    prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "kordon", Subsystem: "alert", Name: "webhook_pending", Help: "Alerts not yet delivered to each sink (webhooks, Kubernetes Events, syslog)."}, []string{"webhook"}),
	}
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{f.metrics.published, f.metrics.suppressed, f.metrics.delivered, f.metrics.pending} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("alert: metrics: %w", err)
			}
		}
	}
	if f.dirLock, err = os.OpenFile(filepath.Join(cfg.Dir, "lock"), os.O_CREATE|os.O_RDWR, 0o640); err != nil {
		return nil, fmt.Errorf("alert: %w", err)
	}
	unlock, err := f.lockDir()
	if err != nil {
		f.dirLock.Close()
		return nil, err
	}
	err = f.recover()
	unlock()
	if err != nil {
		f.dirLock.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.stop = cancel
	for _, wc := range cfg.Webhooks {
		h, err := newWebhook(f, wc)
		if err != nil {
			cancel()
			f.seg.Close()
			f.dirLock.Close()
			return nil, err
		}
		f.sinks = append(f.sinks, h)
	}
	for _, sc := range cfg.Syslog {
		h, err := newSyslog(f, sc)
		if err != nil {
			cancel()
			f.seg.Close()
			f.dirLock.Close()
			return nil, err
		}
		f.sinks = append(f.sinks, h)
	}
	for _, h := range f.sinks {
		f.wg.Add(1)
		go func() { defer f.wg.Done(); h.run(ctx) }()
	}
	if cfg.Fsync == FsyncInterval {
		f.wg.Add(1)
		go func() { defer f.wg.Done(); f.syncLoop(ctx) }()
	}
	return f, nil
}

func (f *Feed) segments() ([]string, error) {
	names, err := filepath.Glob(filepath.Join(f.cfg.Dir, "alerts-*.jsonl"))
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	return names, nil
}

// recover reads every segment into memory and opens the last for append.
func (f *Feed) recover() error {
	segs, err := f.segments()
	if err != nil {
		return fmt.Errorf("alert: %w", err)
	}
	for i, name := range segs {
		data, err := os.ReadFile(name)
		if err != nil {
			return fmt.Errorf("alert: %w", err)
		}
		good := 0
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			line := sc.Bytes()
			var a Alert
			if err := json.Unmarshal(line, &a); err != nil {
				break // torn write: everything after is discarded
			}
			good += len(line) + 1
			f.remember(a)
			f.lastID = max(f.lastID, a.ID)
		}
		if good < len(data) {
			if i != len(segs)-1 {
				return fmt.Errorf("alert: segment %s is corrupt in the middle", name)
			}
			f.log.Warn("truncating torn alert log tail", "segment", name, "bytes", len(data)-good)
			if err := os.Truncate(name, int64(good)); err != nil {
				return fmt.Errorf("alert: %w", err)
			}
		}
	}
	idx := 1
	if len(segs) > 0 {
		fmt.Sscanf(filepath.Base(segs[len(segs)-1]), "alerts-%06d.jsonl", &idx)
	}
	return f.openSegment(idx)
}

func (f *Feed) openSegment(idx int) error {
	name := filepath.Join(f.cfg.Dir, fmt.Sprintf("alerts-%06d.jsonl", idx))
	seg, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("alert: %w", err)
	}
	st, err := seg.Stat()
	if err != nil {
		seg.Close()
		return err
	}
	f.seg, f.segSize, f.segIndex = seg, st.Size(), idx
	return nil
}

func (f *Feed) remember(a Alert) {
	f.recent = append(f.recent, a)
	if len(f.recent) > f.cfg.Memory {
		f.recent = append(f.recent[:0], f.recent[len(f.recent)-f.cfg.Memory:]...)
	}
	f.lastSeen[a.DedupKey()] = a.Time
}

// ErrClosed is returned by Publish after Close.
var ErrClosed = errors.New("alert: feed closed")

// Publish appends an alert unless the same (workload, domain, kind) was
// published within the cooldown. It returns the stored alert (with ID and
// time) and whether it was written.
func (f *Feed) Publish(_ context.Context, a Alert) (Alert, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return a, false, ErrClosed
	}
	now := f.cfg.Now()
	if a.Time.IsZero() {
		a.Time = now
	}
	a.Time = a.Time.UTC()
	if last, ok := f.lastSeen[a.DedupKey()]; ok && a.Time.Sub(last) < f.cfg.Cooldown {
		f.metrics.suppressed.Inc()
		return a, false, nil
	}
	unlock, err := f.lockDir()
	if err != nil {
		return a, false, err
	}
	defer unlock()
	if err := f.catchUp(); err != nil {
		return a, false, err
	}
	a.ID = f.lastID + 1
	line, err := json.Marshal(&a)
	if err != nil {
		return a, false, err
	}
	line = append(line, '\n')
	if f.segSize+int64(len(line)) > f.cfg.SegmentBytes && f.segSize > 0 {
		if err := f.rotate(); err != nil {
			return a, false, err
		}
	}
	if _, err := f.seg.Write(line); err != nil {
		return a, false, fmt.Errorf("alert: write: %w", err)
	}
	f.segSize += int64(len(line))
	if f.cfg.Fsync == FsyncAlways {
		if err := f.seg.Sync(); err != nil {
			return a, false, fmt.Errorf("alert: fsync: %w", err)
		}
	} else {
		f.dirty = true
	}
	f.lastID = a.ID
	f.remember(a)
	f.metrics.published.WithLabelValues(a.Kind, a.Severity).Inc()
	for ch := range f.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return a, true, nil
}

// lockDir takes the directory's lock (blocking: the other holder only
// appends a line).
func (f *Feed) lockDir() (func(), error) {
	if err := unix.Flock(int(f.dirLock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("alert: lock %s: %w", f.dirLock.Name(), err)
	}
	return func() { _ = unix.Flock(int(f.dirLock.Fd()), unix.LOCK_UN) }, nil
}

// catchUp reads what another process sharing Dir appended since this
// one last wrote (the rest of the current segment, and segments it
// rotated to), so IDs go on after the highest one written by either and
// this feed lists both. The directory lock is held: those are whole
// lines.
func (f *Feed) catchUp() error {
	segs, err := f.segments()
	if err != nil {
		return fmt.Errorf("alert: %w", err)
	}
	last := f.segIndex
	for _, name := range segs {
		var idx int
		if _, err := fmt.Sscanf(filepath.Base(name), "alerts-%06d.jsonl", &idx); err != nil || idx < f.segIndex {
			continue
		}
		st, err := os.Stat(name)
		if err != nil {
			return fmt.Errorf("alert: %w", err)
		}
		from := int64(0)
		if idx == f.segIndex {
			from = f.segSize
		}
		if st.Size() <= from {
			continue
		}
		data, err := os.ReadFile(name)
		if err != nil {
			return fmt.Errorf("alert: %w", err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data[from:]))
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			var a Alert
			if json.Unmarshal(sc.Bytes(), &a) != nil {
				break
			}
			f.remember(a)
			f.lastID = max(f.lastID, a.ID)
		}
		if idx == f.segIndex {
			f.segSize = int64(len(data))
		}
		last = max(last, idx)
	}
	if last == f.segIndex {
		return nil
	}
	// The other process rotated: append to its newest segment.
	if err := f.seg.Close(); err != nil {
		return fmt.Errorf("alert: %w", err)
	}
	return f.openSegment(last)
}

func (f *Feed) rotate() error {
	if err := f.seg.Sync(); err != nil {
		return err
	}
	if err := f.seg.Close(); err != nil {
		return err
	}
	if err := f.openSegment(f.segIndex + 1); err != nil {
		return err
	}
	segs, err := f.segments()
	if err != nil {
		return err
	}
	for len(segs) > f.cfg.MaxSegments {
		_ = os.Remove(segs[0])
		segs = segs[1:]
	}
	return nil
}

func (f *Feed) syncLoop(ctx context.Context) {
	t := time.NewTicker(f.cfg.FsyncEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f.mu.Lock()
			if f.dirty && !f.closed {
				_ = f.seg.Sync()
				f.dirty = false
			}
			f.mu.Unlock()
		}
	}
}

// Filter selects alerts.
type Filter struct {
	After     uint64 // only IDs greater than this
	Since     time.Time
	Namespace string
	Kind      string
	Severity  string
	Limit     int
}

// Matches reports whether a passes the filter (Limit aside).
func (flt Filter) Matches(a *Alert) bool { return flt.match(a) }

func (flt Filter) match(a *Alert) bool {
	return a.ID > flt.After && (flt.Since.IsZero() || !a.Time.Before(flt.Since)) &&
		(flt.Namespace == "" || a.Namespace == flt.Namespace) &&
		(flt.Kind == "" || a.Kind == flt.Kind) &&
		(flt.Severity == "" || strings.EqualFold(a.Severity, flt.Severity))
}

// List returns matching alerts in ID order (the newest Limit when set).
func (f *Feed) List(flt Filter) []Alert {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Alert
	for i := range f.recent {
		if flt.match(&f.recent[i]) {
			out = append(out, f.recent[i])
		}
	}
	if flt.Limit > 0 && len(out) > flt.Limit {
		out = out[len(out)-flt.Limit:]
	}
	return out
}

// LastID is the highest ID written.
func (f *Feed) LastID() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastID
}

// Subscribe returns a channel signalled after each publish (closed when
// the feed closes) and a function to stop.
func (f *Feed) Subscribe() (<-chan struct{}, func()) { return f.subscribe() }

// subscribe returns a channel signalled after each publish.
func (f *Feed) subscribe() (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	f.subs[ch] = struct{}{}
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		delete(f.subs, ch)
		f.mu.Unlock()
	}
}

// Close stops webhooks and closes the log after a final sync.
func (f *Feed) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	for ch := range f.subs {
		close(ch)
		delete(f.subs, ch)
	}
	f.mu.Unlock()
	f.stop()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.seg.Sync(); err != nil {
		f.seg.Close()
		f.dirLock.Close()
		return err
	}
	return errors.Join(f.seg.Close(), f.dirLock.Close())
}
