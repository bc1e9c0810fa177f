package devconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultInterval is how often a Watcher polls when Config.Interval is 0.
const DefaultInterval = 500 * time.Millisecond

// racyWindow: a file modified this recently is hashed on every poll even if
// its size and mtime look unchanged, because two writes within the
// filesystem's timestamp granularity can leave both equal.
const racyWindow = 2 * time.Second

// Config configures a Watcher.
type Config struct {
	// Dir is the dev folder.
	Dir string
	// Interval between polls (DefaultInterval if 0).
	Interval time.Duration
	// Apply is called with every new good snapshot, the first one
	// included, from the goroutine that loads it (New or Run), never
	// concurrently. If it returns an error the snapshot is rejected like
	// a bad file and the previous one stays current.
	Apply func(*Snapshot) error
	// Logger receives a line per reload and per rejected change. Nil
	// discards.
	Logger *slog.Logger
	// Now is the clock (time.Now if nil).
	Now func() time.Time
	// Registerer, when set, receives the watcher's metrics.
	Registerer prometheus.Registerer
}

// Watcher polls a dev folder and applies each change that loads cleanly.
// Polling (stat every file, hash when anything moved) is used rather than
// inotify so that editors that replace files, bind mounts and network
// filesystems all behave the same.
type Watcher struct {
	cfg Config
	log *slog.Logger

	reloads *prometheus.CounterVec
	valid   prometheus.Gauge

	mu      sync.Mutex
	current *Snapshot
	lastErr error
	// stats and seen describe the folder as last polled: its file stats
	// and the digest of the content last loaded or rejected.
	stats []fileStat
	seen  string
}

// New loads cfg.Dir once and applies it. It fails if the folder does not
// load: there is no last good state to keep yet.
func New(cfg Config) (*Watcher, error) {
	if cfg.Dir == "" {
		return nil, errors.New("devconfig: no folder")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Apply == nil {
		cfg.Apply = func(*Snapshot) error { return nil }
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{
		cfg: cfg,
		log: log,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kordon", Subsystem: "devconfig", Name: "reloads_total",
			Help: "Attempts to load a changed dev folder, by result (applied or rejected).",
		}, []string{"result"}),
		valid: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kordon", Subsystem: "devconfig", Name: "config_valid",
			Help: "1 if the dev folder as it is on disk is in force, 0 if its last change was rejected.",
		}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{w.reloads, w.valid} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("devconfig: register metrics: %w", err)
			}
		}
	}
	files, stats, err := fingerprint(cfg.Dir)
	if err != nil {
		return nil, err
	}
	digest, err := digestFiles(cfg.Dir, files)
	if err != nil {
		return nil, err
	}
	snap, err := load(cfg.Dir, files, digest, cfg.Now())
	if err != nil {
		return nil, err
	}
	if err := cfg.Apply(snap); err != nil {
		return nil, fmt.Errorf("devconfig: apply: %w", err)
	}
	w.current, w.stats, w.seen = snap, stats, digest
	w.valid.Set(1)
	return w, nil
}

// Current returns the snapshot in force.
func (w *Watcher) Current() *Snapshot {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.current
}

// LastError returns why the folder's latest content was rejected, or nil
// when the content on disk is the one in force.
func (w *Watcher) LastError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}

// Run polls until ctx is done; it returns nil then.
func (w *Watcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.Poll()
		}
	}
}

// Poll checks the folder once and applies a change if there is one. It
// reports whether a new snapshot was applied and, if a change was
// rejected, why. Run calls it; tests may call it directly instead.
func (w *Watcher) Poll() (applied bool, err error) {
	w.mu.Lock()
	prevStats, seen := w.stats, w.seen
	w.mu.Unlock()

	files, stats, err := fingerprint(w.cfg.Dir)
	if err != nil {
		return false, w.reject(nil, "", err)
	}
	now := w.cfg.Now()
	if sameStats(stats, prevStats) && !recentlyModified(stats, now) {
		return false, nil
	}
	digest, err := digestFiles(w.cfg.Dir, files)
	if err != nil {
		return false, w.reject(stats, "", err)
	}
	if digest == seen {
		w.mu.Lock()
		w.stats = stats
		err := w.lastErr
		w.mu.Unlock()
		return false, err
	}
	snap, err := load(w.cfg.Dir, files, digest, now)
	if err != nil {
		return false, w.reject(stats, digest, err)
	}
	if err := w.cfg.Apply(snap); err != nil {
		return false, w.reject(stats, digest, fmt.Errorf("devconfig: apply: %w", err))
	}
	w.mu.Lock()
	prev := w.current
	w.current, w.stats, w.seen, w.lastErr = snap, stats, digest, nil
	w.mu.Unlock()
	w.reloads.WithLabelValues("applied").Inc()
	w.valid.Set(1)
	w.log.Info("config reloaded",
		"dir", w.cfg.Dir,
		"digest", snap.ShortDigest(),
		"previous_digest", prev.ShortDigest(),
		"workloads", len(snap.Workloads),
		"authorization_policies", len(snap.Policies.Authorization),
		"egress_policies", len(snap.Policies.Egress))
	return true, nil
}

// reject records a change that did not load. It logs once per distinct
// content: a bad file left on disk is not reported on every poll.
func (w *Watcher) reject(stats []fileStat, digest string, err error) error {
	w.mu.Lock()
	again := (digest != "" && digest == w.seen) ||
		(digest == "" && w.lastErr != nil && w.lastErr.Error() == err.Error())
	if stats != nil {
		w.stats = stats
	}
	if digest != "" {
		w.seen = digest
	}
	w.lastErr = err
	current := w.current
	w.mu.Unlock()
	if !again {
		w.reloads.WithLabelValues("rejected").Inc()
		w.valid.Set(0)
		w.log.Error("config rejected, last good config stays in force",
			"dir", w.cfg.Dir, "digest_in_force", current.ShortDigest(), "err", err.Error())
	}
	return err
}

func recentlyModified(stats []fileStat, now time.Time) bool {
	for _, s := range stats {
		if now.Sub(s.mtime) < racyWindow {
			return true
		}
	}
	return false
}
