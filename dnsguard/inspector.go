package dnsguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/dnsguard/detect"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/publicsuffix"
)

// InspectorConfig configures the detector adapter.
type InspectorConfig struct {
	// Feed receives alerts. Required.
	Feed *alert.Feed
	// Detector settings (bounded state, benign list).
	Detector detect.Config
	// StateDir persists quarantines (empty: in memory only).
	StateDir string
	// QueueSize bounds queued events (default 65536); beyond it events
	// are dropped and counted, never blocking DNS.
	QueueSize int
	// BlockedAlerts also raises "blocked" alerts for policy refusals
	// (deduplicated by the feed's cooldown).
	BlockedAlerts bool
	Logger        *slog.Logger
	// Metrics registers kordon_detect_* collectors; nil skips them.
	Metrics prometheus.Registerer
}

// Quarantine blocks one registrable domain for one workload until lifted.
type Quarantine struct {
	ID        string    `json:"id"`
	Workload  string    `json:"workload"`
	Domain    string    `json:"domain"`
	Since     time.Time `json:"since"`
	Reason    string    `json:"reason"`
	AlertID   uint64    `json:"alertId,omitempty"`
	Namespace string    `json:"namespace,omitempty"`
	Pod       string    `json:"pod,omitempty"`
}

// DetectionInspector implements Inspector with the exfiltration detector and the
// alert feed. Observe only enqueues; one goroutine runs the detector.
type DetectionInspector struct {
	cfg     InspectorConfig
	log     *slog.Logger
	det     *detect.Detector
	ch      chan QueryEvent
	dropped atomic.Int64
	quit    chan struct{}
	done    chan struct{}

	mu          sync.RWMutex
	quarantines map[string]*Quarantine // workload|domain
	nq          atomic.Int32
	cluster     map[string]string // workload|domain -> Quarantine object (ns/name)
	ncluster    atomic.Int32
	// lifted are the (workload, domain) pairs whose quarantine was lifted
	// and that the detector goroutine has yet to forget.
	lifted  [][2]string
	nLifted atomic.Int32

	detections *prometheus.CounterVec
	dropCount  prometheus.CounterFunc
	tracked    prometheus.GaugeFunc
	quarGauge  prometheus.GaugeFunc
}

var _ Inspector = (*DetectionInspector)(nil)

// NewInspector starts the detector goroutine; Close stops it.
func NewInspector(cfg InspectorConfig) (*DetectionInspector, error) {
	if cfg.Feed == nil {
		return nil, errors.New("dnsguard: InspectorConfig.Feed is required")
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 65536
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	in := &DetectionInspector{cfg: cfg, log: cfg.Logger, det: detect.New(cfg.Detector), ch: make(chan QueryEvent, cfg.QueueSize),
		quit: make(chan struct{}), done: make(chan struct{}), quarantines: map[string]*Quarantine{}}
	if err := in.load(); err != nil {
		return nil, err
	}
	const ns, sub = "kordon", "detect"
	in.detections = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "detections_total",
		Help: "Detector findings, by kind and severity (before the feed's cooldown)."}, []string{"kind", "severity"})
	in.dropCount = prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "events_dropped_total",
		Help: "Queries not inspected because the detector queue was full."}, func() float64 { return float64(in.dropped.Load()) })
	in.tracked = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "queue_length",
		Help: "Queries waiting for the detector."}, func() float64 { return float64(len(in.ch)) })
	in.quarGauge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "quarantines",
		Help: "Active (workload, domain) quarantines."}, func() float64 { return float64(in.nq.Load()) })
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{in.detections, in.dropCount, in.tracked, in.quarGauge} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("dnsguard: metrics: %w", err)
			}
		}
	}
	go in.run()
	return in, nil
}

func workloadKey(c *Client) string {
	if c.Pod != "" {
		return c.Namespace + "/" + c.Pod
	}
	return c.IP.String()
}

func registrable(qname string) string {
	name := strings.ToLower(strings.TrimSuffix(qname, "."))
	d, err := publicsuffix.EffectiveTLDPlusOne(name)
	if err != nil {
		return name
	}
	return d
}

// Quarantined implements Inspector.
func (in *DetectionInspector) Quarantined(c *Client, qname string) (string, bool) {
	if in.nq.Load() == 0 && in.ncluster.Load() == 0 {
		return "", false
	}
	key := workloadKey(c) + "|" + registrable(qname)
	in.mu.RLock()
	q, ok := in.quarantines[key]
	in.mu.RUnlock()
	// Once the cluster holds it too, only deleting the object lifts it:
	// say so rather than name the local one.
	if reason, held := in.clusterQuarantined(key); held || !ok {
		return reason, held
	}
	return "quarantined by kordon: " + q.Reason + " (lift with DELETE /v1/quarantines/" + q.ID + ")", true
}

// Observe implements Inspector: it never blocks.
func (in *DetectionInspector) Observe(ev *QueryEvent) {
	select {
	case in.ch <- *ev:
	default:
		in.dropped.Add(1)
	}
}

// Dropped counts events the detector could not keep up with.
func (in *DetectionInspector) Dropped() int64 { return in.dropped.Load() }

// Sync waits until every event queued so far has been processed (tests,
// demos).
func (in *DetectionInspector) Sync(ctx context.Context) error {
	for len(in.ch) > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond): // polling the queue, bounded by ctx
		}
	}
	return nil
}

// Close stops the detector goroutine after draining the queue. Events
// observed afterwards are dropped (the channel is never closed, so a
// resolver still running cannot panic).
func (in *DetectionInspector) Close() {
	select {
	case <-in.quit:
	default:
		close(in.quit)
	}
	<-in.done
}

func (in *DetectionInspector) run() {
	defer close(in.done)
	for {
		select {
		case ev := <-in.ch:
			in.forgetLifted()
			in.handle(&ev)
		case <-in.quit:
			for {
				select {
				case ev := <-in.ch:
					in.forgetLifted()
					in.handle(&ev)
				default:
					return
				}
			}
		}
	}
}

// forgetLocked queues (workload, domain) for the detector to forget:
// their quarantine was lifted. in.mu is held.
func (in *DetectionInspector) forgetLocked(workload, domain string) {
	in.lifted = append(in.lifted, [2]string{workload, domain})
	in.nLifted.Store(int32(len(in.lifted)))
}

// forgetLifted makes the detector forget the pairs lifted since the last
// event; it runs on the detector goroutine, which owns the detector.
func (in *DetectionInspector) forgetLifted() {
	if in.nLifted.Load() == 0 {
		return
	}
	in.mu.Lock()
	lifted := in.lifted
	in.lifted = nil
	in.nLifted.Store(0)
	in.mu.Unlock()
	for _, p := range lifted {
		in.det.Forget(p[0], p[1])
	}
}

func baseAlert(ev *QueryEvent, domain string) alert.Alert {
	return alert.Alert{
		Time: ev.Time, Node: ev.Client.Node, Namespace: ev.Client.Namespace, Pod: ev.Client.Pod,
		ServiceAccount: ev.Client.ServiceAccount, SPIFFEID: ev.Client.SPIFFEID, ClientIP: ev.Client.IP.String(), Domain: domain,
	}
}

func (in *DetectionInspector) handle(ev *QueryEvent) {
	ctx := context.Background()
	if ev.Verdict == VerdictBlocked && in.cfg.BlockedAlerts && ev.Policy != "rate-limit" {
		a := baseAlert(ev, registrable(ev.QName))
		a.Kind, a.Severity, a.Action, a.Policy = alert.KindBlocked, "low", "blocked", ev.Policy
		a.Message = "query for " + ev.QName + " refused by policy"
		if _, _, err := in.cfg.Feed.Publish(ctx, a); err != nil {
			in.log.Warn("alert publish failed", "error", err)
		}
	}
	det, a := DetectionAlert(in.det, ev)
	if det == nil {
		return
	}
	in.detections.WithLabelValues(det.Kind, det.Severity).Inc()
	if ev.Detection.Quarantine {
		a.Action = "quarantined"
	}
	// Quarantine takes effect in memory before anything touches the disk:
	// publishing fsyncs, and a tunnel keeps sending meanwhile.
	var q *Quarantine
	if ev.Detection.Quarantine {
		q = in.enforce(ev, det)
	}
	stored, written, err := in.cfg.Feed.Publish(ctx, a)
	if err != nil {
		in.log.Warn("alert publish failed", "error", err)
	}
	if written {
		in.log.Info("egress alert", "kind", a.Kind, "severity", a.Severity, "namespace", a.Namespace, "pod", a.Pod, "domain", a.Domain, "alert_id", stored.ID)
	}
	if q != nil {
		in.persist(ev, det, q, stored.ID)
	}
}

// DetectionAlert runs one completed query through det exactly as the
// resolver's inspector does (quarantined queries are not scored again;
// the sensitivity is ev.Detection's, Medium when unset) and returns the
// finding and the alert to publish (before the feed's cooldown), or nil.
// `kordon detect replay` calls it too, so what replay finds, the
// resolver finds.
func DetectionAlert(d *detect.Detector, ev *QueryEvent) (*detect.Detection, alert.Alert) {
	if ev.Verdict == VerdictQuarantined {
		return nil, alert.Alert{} // already handled; do not re-score the blocked channel
	}
	det := d.Observe(detect.Query{Time: ev.Time, Client: workloadKey(&ev.Client), QName: ev.QName, QType: ev.QTypeCode, NXDomain: ev.RCode == dns.RcodeToString[dns.RcodeNameError]},
		detect.Sensitivity(orDefault(ev.Detection.Sensitivity, string(detect.Medium))))
	if det == nil {
		return nil, alert.Alert{}
	}
	a := baseAlert(ev, det.Domain)
	a.Kind, a.Severity, a.Score, a.Policy = det.Kind, det.Severity, det.Score, ev.Detection.Policy
	a.Evidence, _ = json.Marshal(det.Evidence)
	a.Action = "alerted"
	a.Message = fmt.Sprintf("%s over DNS to %s: %d unique subdomains, %.0f bytes/min of encoded (%s) data, %.0f encoded bytes in the last hour",
		det.Kind, det.Domain, det.Evidence.UniqueSubdomains, det.Evidence.BytesPerMinute, det.Evidence.Encoding, det.Evidence.EncodedBytesLastHour)
	return det, a
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// enforce adds a quarantine in memory; nil if one already exists.
func (in *DetectionInspector) enforce(ev *QueryEvent, det *detect.Detection) *Quarantine {
	key := workloadKey(&ev.Client) + "|" + det.Domain
	in.mu.Lock()
	defer in.mu.Unlock()
	if _, exists := in.quarantines[key]; exists {
		return nil
	}
	q := &Quarantine{ID: strconv.FormatInt(ev.Time.UnixNano(), 36), Workload: workloadKey(&ev.Client), Domain: det.Domain, Since: ev.Time.UTC(),
		Reason: det.Kind + " detected (policy " + ev.Detection.Policy + ")", Namespace: ev.Client.Namespace, Pod: ev.Client.Pod}
	in.quarantines[key] = q
	in.nq.Store(int32(len(in.quarantines)))
	return q
}

// persist records the quarantine on disk and publishes its alert.
func (in *DetectionInspector) persist(ev *QueryEvent, det *detect.Detection, q *Quarantine, alertID uint64) {
	in.mu.Lock()
	q.AlertID = alertID
	err := in.saveLocked()
	in.mu.Unlock()
	if err != nil {
		in.log.Warn("quarantine not persisted", "error", err)
	}
	a := baseAlert(ev, det.Domain)
	a.Kind, a.Severity, a.Action, a.Policy = alert.KindQuarantine, det.Severity, "quarantined", ev.Detection.Policy
	a.Message = "DNS for " + det.Domain + " is now blocked for this workload until an operator lifts quarantine " + q.ID
	if _, _, err := in.cfg.Feed.Publish(context.Background(), a); err != nil {
		in.log.Warn("alert publish failed", "error", err)
	}
}

func (in *DetectionInspector) path() string {
	return filepath.Join(in.cfg.StateDir, "quarantines.json")
}

func (in *DetectionInspector) load() error {
	if in.cfg.StateDir == "" {
		return nil
	}
	b, err := os.ReadFile(in.path())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dnsguard: %w", err)
	}
	var list []*Quarantine
	if err := json.Unmarshal(b, &list); err != nil {
		return fmt.Errorf("dnsguard: %s: %w", in.path(), err)
	}
	for _, q := range list {
		in.quarantines[q.Workload+"|"+q.Domain] = q
	}
	in.nq.Store(int32(len(in.quarantines)))
	return nil
}

func (in *DetectionInspector) saveLocked() error {
	if in.cfg.StateDir == "" {
		return nil
	}
	if err := os.MkdirAll(in.cfg.StateDir, 0o750); err != nil {
		return err
	}
	b, err := json.MarshalIndent(in.listLocked(), "", "  ")
	if err != nil {
		return err
	}
	tmp := in.path() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, in.path())
}

func (in *DetectionInspector) listLocked() []*Quarantine {
	out := make([]*Quarantine, 0, len(in.quarantines))
	for _, q := range in.quarantines {
		out = append(out, q)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Quarantines lists copies of the active quarantines.
func (in *DetectionInspector) Quarantines() []Quarantine {
	in.mu.RLock()
	defer in.mu.RUnlock()
	var out []Quarantine
	for _, q := range in.listLocked() {
		out = append(out, *q)
	}
	return out
}

// Lift removes a quarantine by ID and has the detector forget what it
// scored for the pair (before it scores their next query); it reports
// whether the quarantine existed.
func (in *DetectionInspector) Lift(id string) (bool, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for k, q := range in.quarantines {
		if q.ID == id {
			delete(in.quarantines, k)
			in.nq.Store(int32(len(in.quarantines)))
			in.forgetLocked(q.Workload, q.Domain)
			return true, in.saveLocked()
		}
	}
	return false, nil
}

// Handler serves GET /v1/quarantines and DELETE /v1/quarantines/{id}.
func (in *DetectionInspector) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/quarantines", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"quarantines": in.Quarantines()})
	})
	mux.HandleFunc("DELETE /v1/quarantines/{id}", func(w http.ResponseWriter, r *http.Request) {
		ok, err := in.Lift(r.PathValue("id"))
		switch {
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		case !ok:
			http.Error(w, "no such quarantine", http.StatusNotFound)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	return mux
}
