package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/egress"
	"github.com/kordon-dev/kordon/egress/flowlog"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
)

// egressFlags are the egress firewall and flow log flags shared by
// `kordon node` and `kordon dev`.
type egressFlags struct {
	firewall     bool
	internal     []string
	ttlGrace     time.Duration
	flowLog      string
	flowInterval time.Duration
}

func (f *egressFlags) register(fl *pflag.FlagSet, defaultOn bool) {
	fl.BoolVar(&f.firewall, "egress-firewall", defaultOn, "enforce EgressPolicies in the kernel (nftables) from DNS answers, intercept every workload's DNS, and log every egress flow (needs CAP_NET_ADMIN)")
	fl.StringArrayVar(&f.internal, "internal-cidr", nil, "pod or service CIDR never filtered by the egress firewall (repeatable)")
	fl.DurationVar(&f.ttlGrace, "egress-ttl-grace", 60*time.Second, "how long past an answer's TTL its addresses stay reachable for new connections")
	fl.StringVar(&f.flowLog, "flow-log", "-", `egress flow log: a file, "-" for stdout, empty for none (with --egress-firewall)`)
	fl.DurationVar(&f.flowInterval, "flow-interval", 30*time.Second, "interval records for long-lived flows")
}

// internalPrefixes parses --internal-cidr.
func (f *egressFlags) internalPrefixes() ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(f.internal))
	for _, s := range f.internal {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("--internal-cidr %q: %w", s, err)
		}
		if p.Masked() != p {
			return nil, fmt.Errorf("--internal-cidr %q: host bits set (did you mean %s?)", s, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}

// egressStateFile is the firewall's state file in the state directory:
// written by a running firewall, deleted by kordon node --cleanup.
const egressStateFile = "egress-state.json"

// egressDeps are what the egress stack is wired to.
type egressDeps struct {
	Registry    *workload.Registry
	Feed        *alert.Feed
	Node        string
	TrustDomain string
	// DNS is where the local dnsguard listens: every workload's port-53
	// traffic is redirected there.
	DNS      netip.AddrPort
	StateDir string
	FlowOut  io.Writer // used when --flow-log is "-"
	// FlowSummary (optional) also reads the flow log (the web console's).
	FlowSummary io.Writer
	Metrics     prometheus.Registerer
	Logger      *slog.Logger
}

// egressStack is the running firewall and flow log.
type egressStack struct {
	fw      *egress.Firewall
	flows   *flowlog.Logger
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closeFn func() error
	// errc has the error of the firewall's or the flow log's loop, if one
	// fails (Run reports it).
	errc chan error
	// programmed is closed once the first policies are in the kernel
	// (kordon node is ready only after).
	programmed     chan struct{}
	programmedOnce sync.Once
}

// errNoNetAdmin explains a missing capability instead of a netlink EPERM.
var errNoNetAdmin = errors.New("--egress-firewall needs CAP_NET_ADMIN (run as root, or grant the capability: setcap cap_net_admin+ep, or securityContext.capabilities.add: [NET_ADMIN])")

// hasNetAdmin reports whether the process holds CAP_NET_ADMIN (bit 12 of
// the effective set).
func hasNetAdmin() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%x", &caps); err != nil {
				return false
			}
			return caps&(1<<12) != 0
		}
	}
	return false
}

// startEgress programs the firewall and starts the flow log.
func startEgress(ctx context.Context, f *egressFlags, d egressDeps) (*egressStack, error) {
	if !hasNetAdmin() {
		return nil, errNoNetAdmin
	}
	internal, err := f.internalPrefixes()
	if err != nil {
		return nil, err
	}
	cfg := egress.Config{
		Registry: d.Registry, Internal: internal, TTLGrace: f.ttlGrace,
		StateFile: filepath.Join(d.StateDir, egressStateFile),
		Metrics:   d.Metrics, Logger: d.Logger,
	}
	if d.DNS.Addr().Is4() {
		cfg.DNS4 = d.DNS
	} else if d.DNS.IsValid() {
		cfg.DNS6 = d.DNS
	}
	fw, err := egress.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("egress firewall: %w", err)
	}
	s := &egressStack{fw: fw, errc: make(chan error, 2), programmed: make(chan struct{})}
	out, closeOut, err := openLog(f.flowLog)
	if err != nil {
		_ = fw.Close()
		return nil, fmt.Errorf("--flow-log: %w", err)
	}
	if f.flowLog == "-" {
		out = d.FlowOut
	}
	if d.FlowSummary != nil {
		out = tee(out, d.FlowSummary)
	}
	flows, err := flowlog.New(flowlog.Config{
		Registry: d.Registry, TrustDomain: d.TrustDomain, Node: d.Node,
		Names: fw, Policies: firewallPolicies{fw}, Quarantiner: fw, Alerts: feedSink{d.Feed},
		Log: out, Interval: f.flowInterval, Internal: internal,
		// The firewall's rules already make the kernel track connections.
		NoConntrackTable: true,
		Metrics:          d.Metrics, Logger: d.Logger,
	})
	if err != nil {
		_ = fw.Close()
		_ = closeOut()
		return nil, fmt.Errorf("egress flow log: %w", err)
	}
	s.flows = flows
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := fw.Run(runCtx); err != nil && runCtx.Err() == nil {
			s.errc <- fmt.Errorf("egress firewall: %w", err)
		}
	}()
	go func() {
		defer s.wg.Done()
		if err := flows.Run(runCtx); err != nil && runCtx.Err() == nil {
			s.errc <- fmt.Errorf("egress flow log: %w", err)
		}
	}()
	s.closeFn = closeOut
	return s, nil
}

// Run returns the error of the firewall's or the flow log's loop if one
// fails while ctx lives, and nil when ctx ends. The loops themselves run
// on until Stop: the resolver, which stops first, admits answers through
// the firewall until its last query is answered.
func (s *egressStack) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.errc:
		return err
	}
}

// SetPolicies hands the EgressPolicies in force to the firewall.
func (s *egressStack) SetPolicies(set *policy.Set, rootNS, clusterDomain string) error {
	if err := s.fw.SetPolicies(set, policy.EgressOptions{RootNamespace: rootNS, ClusterDomain: clusterDomain}); err != nil {
		return err
	}
	s.programmedOnce.Do(func() { close(s.programmed) })
	return nil
}

// handle serves the firewall's address quarantines on mux, beside
// dnsguard's /v1/quarantines.
func (s *egressStack) handle(mux *http.ServeMux) {
	h := s.fw.Handler()
	mux.Handle("/v1/egress/quarantines", h)
	mux.Handle("/v1/egress/quarantines/", h)
}

// dnsFirewall is the hook dnsguard calls before an answer goes out.
func (s *egressStack) dnsFirewall() dnsguard.Firewall { return dnsAdmitter{s.fw} }

// Stop ends the flow log and the firewall; remove also deletes the
// nftables table (kordon dev, kordon node --cleanup); otherwise it stays
// and enforcement continues while the agent restarts.
func (s *egressStack) Stop(remove bool) error {
	s.cancel()
	s.wg.Wait()
	closeFw := s.fw.Close
	if remove {
		closeFw = s.fw.Remove
	}
	return errors.Join(s.flows.Close(), closeFw(), s.closeFn())
}

// dnsAdmitter adapts the firewall to dnsguard's Firewall interface.
type dnsAdmitter struct{ fw *egress.Firewall }

// Admit copies the grants, and must: dnsguard clears and reuses its
// grants slices once Admit returns (batch_linux.go, fast.go,
// fastmiss.go), while the firewall's commit loop may still hold a request
// that timed out. The conversion fails to compile the day the two Grant
// types differ.
func (a dnsAdmitter) Admit(grants []dnsguard.Grant) error {
	gs := make([]egress.Grant, len(grants))
	for i, g := range grants {
		gs[i] = egress.Grant(g)
	}
	return a.fw.Admit(gs)
}

// firewallPolicies tells the flow log what policy governs a client.
type firewallPolicies struct{ fw *egress.Firewall }

func (p firewallPolicies) Policy(client netip.Addr) flowlog.PolicyInfo {
	_, fw, ok := p.fw.Workload(client)
	if !ok {
		return flowlog.PolicyInfo{}
	}
	return flowlog.PolicyInfo{Name: fw.Policy, Enforced: fw.Mode == policy.FirewallEnforce, Audit: fw.Mode == policy.FirewallAudit, Quarantine: fw.Quarantine}
}

// feedSink publishes flow-log alerts to the alert feed (and so to its
// webhooks, Events and the controller).
type feedSink struct{ feed *alert.Feed }

func (s feedSink) Publish(ctx context.Context, a flowlog.Alert) error {
	ev, err := json.Marshal(a.Evidence)
	if err != nil {
		return err
	}
	dst := a.Dst.Addr().String()
	_, _, err = s.feed.Publish(ctx, alert.Alert{
		Time: a.Time, Severity: a.Severity, Kind: a.Kind,
		Node: a.Client.Node, Namespace: a.Client.Namespace, Pod: a.Client.Pod,
		ServiceAccount: a.Client.ServiceAccount, SPIFFEID: a.Client.SPIFFEID, ClientIP: a.Client.IP.String(),
		// The destination address stands where a DNS alert has its
		// domain: alerts are deduplicated per workload, kind and it.
		Domain:   dst,
		Evidence: ev, Action: a.Action, Policy: a.Policy, Message: a.Message,
	})
	return err
}

// warnUnroutedCNI says at start when the node's CNI forwards pod traffic
// past netfilter (Cilium with eBPF host routing), where the firewall would
// silently enforce nothing.
func warnUnroutedCNI(log *slog.Logger) {
	ifs, err := net.Interfaces()
	if err != nil {
		return
	}
	for _, i := range ifs {
		if i.Name == "cilium_host" {
			log.Warn("cilium detected: with eBPF host routing pod traffic skips netfilter's forward hook and kordon's egress firewall cannot see it; set bpf.hostLegacyRouting=true in Cilium, or rely on kordon's DNS filtering and Cilium's own toFQDNs policies",
				"interface", i.Name)
			return
		}
	}
}
