// Package flowlog is kordon's egress flow log and egress detection: it
// follows conntrack (events on one socket, a periodic Dump on another) and
// the NFLOG group of kordon's block rules, attributes every flow to its
// workload through the registry, writes one JSON record per ended flow
// (and one per Interval for long ones, and one per blocked attempt), and
// raises direct-egress, resolver-bypass and egress-volume alerts.
//
// The verdict of a flow is read from the conntrack mark the forward chain
// set (see package egress); flowlog never decides again what the rules
// decided. See README.md for the record schema, defaults and metrics.
package flowlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kordon-dev/kordon/internal/workload"
)

// Defaults.
const (
	DefaultTrustDomain = "cluster.local"
	DefaultLogBuffer   = 65536
	DefaultInterval    = 30 * time.Second
	// DefaultVolumeThreshold and DefaultVolumeWindow: 50 MiB to one
	// address within 10 minutes. 100 MB in 10 minutes (the exfiltration
	// case) is almost twice that; a chatty API client (1 MB a minute)
	// stays at a fifth of it.
	DefaultVolumeThreshold = 50 << 20
	DefaultVolumeWindow    = 10 * time.Minute
	// DefaultCooldown suppresses repeats of one (client, kind,
	// destination) alert, as the feed does.
	DefaultCooldown = 10 * time.Minute
)

// Config configures a Logger. The zero value of each optional field means
// its default.
type Config struct {
	// NetNSFd is an open network namespace to watch; 0 is the current one.
	NetNSFd int
	// Registry maps source addresses to workloads. Required.
	Registry *workload.Registry
	// TrustDomain of the SPIFFE IDs in records (default cluster.local).
	TrustDomain string
	// Node names this node; it fills client.node when the workload has none.
	Node string
	// Names (optional) tells the DNS name behind (client, dst) and whether a
	// DNS answer to that client gave dst. Names and Policies are called on
	// the event loop, once per new flow or blocked attempt: they must
	// answer from memory, or the kernel drops events.
	Names Names
	// Policies (optional) gives per-client policy information.
	Policies Policies
	// Quarantiner (optional) is called when a policy's detection action is
	// Quarantine.
	Quarantiner Quarantiner
	// Alerts (optional) receives alerts.
	Alerts AlertSink
	// Log receives flow records, one JSON object per line; nil: no log.
	Log io.Writer
	// LogBuffer bounds the queued records (default 65,536); beyond it
	// records are dropped and counted, never blocking.
	LogBuffer int
	// Interval between conntrack Dumps, which write the periodic records
	// of long flows (default 30s).
	Interval time.Duration
	// VolumeThreshold outbound bytes from one workload to one address
	// within VolumeWindow raise egress-volume (defaults 50 MiB, 10m).
	VolumeThreshold int64
	VolumeWindow    time.Duration
	// Cooldown between two alerts of one (client, kind, destination)
	// (default 10m).
	Cooldown time.Duration
	// Internal are in-cluster destinations: flows to them are not egress
	// and are not logged, except resolver bypasses (MarkBypass).
	Internal []netip.Prefix
	// KeepSysctls leaves net.netfilter.nf_conntrack_acct and
	// nf_conntrack_timestamp alone. By default New sets both to 1 in the
	// watched namespace: without accounting every counter is 0.
	KeepSysctls bool
	// NoConntrackTable: do not add table inet kordon-flowlog. By default
	// New adds it (a hookless chain with one ct expression, no per-packet
	// cost) because the kernel tracks no connection in a namespace where
	// no rule uses conntrack; Close removes it. Set this where another
	// table (kordon's firewall) always uses conntrack.
	NoConntrackTable bool
	Metrics          prometheus.Registerer
	Logger           *slog.Logger
	Now              func() time.Time
}

// Names is the DNS side's knowledge of which names and addresses it gave
// each client.
type Names interface {
	// Lookup returns the DNS name whose answer to client contained dst.
	Lookup(client, dst netip.Addr) (name string, ok bool)
	// Learned reports whether a DNS answer to client gave dst.
	Learned(client, dst netip.Addr) bool
}

// Policies gives the egress policy that applies to a client.
type Policies interface {
	Policy(client netip.Addr) PolicyInfo
}

// PolicyInfo is what the flow log needs of a client's EgressPolicy.
type PolicyInfo struct {
	// Name is namespace/name of the policy ("" when none applies).
	Name string
	// Enforced: the firewall restricts the client; Audit: it only reports.
	Enforced, Audit bool
	// Quarantine: the detection action is to quarantine the destination.
	Quarantine bool
}

// Quarantiner blocks one destination for one client.
type Quarantiner interface {
	QuarantineAddr(client, dst netip.Addr) error
}

// AlertSink receives alerts (the node's forwarder to the feed).
type AlertSink interface {
	Publish(ctx context.Context, a Alert) error
}

// Alert kinds.
const (
	KindDirectEgress   = "direct-egress"
	KindResolverBypass = "resolver-bypass"
	KindEgressVolume   = "egress-volume"
)

// Alert actions.
const (
	ActionAlerted     = "alerted"
	ActionBlocked     = "blocked"
	ActionQuarantined = "quarantined"
	ActionAudit       = "audit"
)

// Verdicts of flow records.
const (
	VerdictAllowed = "allowed"
	VerdictBlocked = "blocked"
	VerdictAudit   = "audit"
)

// Client is the workload a flow came from. Unknown clients have only IP.
type Client struct {
	IP             netip.Addr `json:"ip"`
	Namespace      string     `json:"namespace,omitempty"`
	Pod            string     `json:"pod,omitempty"`
	ServiceAccount string     `json:"serviceAccount,omitempty"`
	SPIFFEID       string     `json:"spiffeId,omitempty"`
	Node           string     `json:"node,omitempty"`
}

// Alert is one detection.
type Alert struct {
	Time     time.Time      `json:"time"`
	Kind     string         `json:"kind"`
	Severity string         `json:"severity"`
	Client   Client         `json:"client"`
	Proto    string         `json:"proto"`
	Dst      netip.AddrPort `json:"dst"`
	Evidence map[string]any `json:"evidence,omitempty"`
	Action   string         `json:"action"`
	Policy   string         `json:"policy,omitempty"`
	Message  string         `json:"message,omitempty"`
}

// Record is one line of the flow log.
type Record struct {
	Time       time.Time  `json:"time"`
	Client     Client     `json:"client"`
	Proto      string     `json:"proto"`
	Src        netip.Addr `json:"src"`
	SPort      uint16     `json:"sport"`
	Dst        netip.Addr `json:"dst"`
	DPort      uint16     `json:"dport"`
	BytesOut   uint64     `json:"bytesOut"`
	BytesIn    uint64     `json:"bytesIn"`
	PacketsOut uint64     `json:"packetsOut"`
	PacketsIn  uint64     `json:"packetsIn"`
	Duration   float64    `json:"durationSeconds"`
	DNSName    string     `json:"dnsName,omitempty"`
	Verdict    string     `json:"verdict"`
	// Reason is why a blocked attempt was blocked (policy, port, dot,
	// quarantine), from the NFLOG prefix.
	Reason string `json:"reason,omitempty"`
	Policy string `json:"policy,omitempty"`
	Final  bool   `json:"final"`
}

// ErrClosed is returned by Run after Close, or when Run is called twice.
var ErrClosed = errors.New("flowlog: closed")

// Logger follows the kernel and writes the flow log. Create it with New,
// start it with Run, release it with Close.
type Logger struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	writer  *recordWriter

	events *eventConn // conntrack events
	dump   *dumpConn  // Dump and Get
	// nflog is the NFLOG group's socket; nil while another process (the
	// agent this one succeeds) holds the group: readNFLOG binds it once
	// that one lets go.
	nflog atomic.Pointer[nflogConn]

	ownTable bool // New added table inet kordon-flowlog

	mu      sync.Mutex
	running bool
	closed  bool
	stop    chan struct{}
	runDone chan struct{}
}

// New validates cfg, fills defaults, turns on conntrack accounting and
// timestamps in the namespace (unless KeepSysctls), opens the conntrack
// event socket, the dump socket and the NFLOG group, and makes sure the
// kernel tracks connections (unless NoConntrackTable).
func New(cfg Config) (*Logger, error) {
	if cfg.Registry == nil {
		return nil, errors.New("flowlog: Config.Registry is required")
	}
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	l := &Logger{cfg: cfg, log: cfg.Logger, metrics: m, stop: make(chan struct{}), runDone: make(chan struct{})}
	if !cfg.KeepSysctls {
		// Why: with nf_conntrack_acct 0 (the default in every new
		// namespace) all counters are 0 and the log's byte counts lie.
		if err := EnableAccounting(cfg.NetNSFd); err != nil {
			l.log.Warn("cannot enable conntrack accounting", "error", err)
		}
	}
	if l.events, err = dialEvents(cfg.NetNSFd); err != nil {
		return nil, err
	}
	if l.dump, err = dialDump(cfg.NetNSFd); err != nil {
		l.events.Close()
		return nil, err
	}
	nfl, err := dialNFLOG(cfg.NetNSFd, nflogGroup)
	switch {
	case errors.Is(err, errGroupBusy):
		// Why not fail: during a rolling update the previous agent runs
		// beside this one and logs the blocked attempts until it exits
		// (one group has one listener); readNFLOG takes over then.
		l.log.Info("nflog group held by another process; blocked attempts are logged by it until it exits", "group", nflogGroup)
	case err != nil:
		l.events.Close()
		l.dump.Close()
		return nil, err
	default:
		l.nflog.Store(nfl)
	}
	if !cfg.NoConntrackTable {
		// After the event socket exists: the first connections tracked
		// already have a listener.
		if err := ensureConntrack(cfg.NetNSFd); err != nil {
			l.log.Warn("cannot make sure conntrack runs; flows are logged only if another rule uses conntrack", "error", err)
		} else {
			l.ownTable = true
		}
	}
	if cfg.Log != nil {
		l.writer = newRecordWriter(cfg.Log, cfg.LogBuffer, m, cfg.Logger)
	}
	return l, nil
}

func (c *Config) fill() error {
	if c.TrustDomain == "" {
		c.TrustDomain = DefaultTrustDomain
	}
	if c.LogBuffer <= 0 {
		c.LogBuffer = DefaultLogBuffer
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.VolumeThreshold <= 0 {
		c.VolumeThreshold = DefaultVolumeThreshold
	}
	if c.VolumeWindow <= 0 {
		c.VolumeWindow = DefaultVolumeWindow
	}
	if c.Cooldown <= 0 {
		c.Cooldown = DefaultCooldown
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	// A copy: the caller's slice is often shared (kordon node hands the
	// same one to the firewall), and masking must not write into it.
	c.Internal = slices.Clone(c.Internal)
	for i, p := range c.Internal {
		if !p.IsValid() {
			return fmt.Errorf("flowlog: Config.Internal[%d] is not a valid prefix", i)
		}
		c.Internal[i] = p.Masked()
	}
	return nil
}

// Close stops Run (if it is running) and releases the sockets; records
// queued are written first. It is safe to call more than once.
func (l *Logger) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	running := l.running
	close(l.stop)
	l.mu.Unlock()
	if running {
		<-l.runDone
		return nil
	}
	l.closeSockets()
	if l.writer != nil {
		l.writer.close()
	}
	return nil
}

// closeSockets releases the kernel resources: the sockets and the table.
func (l *Logger) closeSockets() {
	l.events.Close()
	l.dump.Close()
	if n := l.nflog.Load(); n != nil {
		n.Close()
	}
	if l.ownTable {
		if err := removeConntrackTable(l.cfg.NetNSFd); err != nil {
			l.log.Warn("cannot remove conntrack table", "table", "inet "+conntrackTable, "error", err)
		}
	}
}
