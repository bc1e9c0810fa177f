package policy

import (
	"fmt"
	"net/netip"
	"strings"
)

// Detection sensitivities and actions of EgressPolicy.spec.detection.
const (
	SensitivityLow    = "Low"
	SensitivityMedium = "Medium"
	SensitivityHigh   = "High"

	DetectionAlert      = "Alert"
	DetectionQuarantine = "Quarantine"
)

// validateEgressPolicy checks an EgressPolicy after decoding.
func validateEgressPolicy(p *EgressPolicy) ErrorList {
	errs := validateMeta(p.Metadata, p.Pos)
	pos := p.Pos
	spec := &p.Spec
	if spec.Selector != nil && len(spec.Selector.MatchLabels) == 0 {
		errs = append(errs, pos.Errorf("spec.selector.matchLabels", "must not be empty when selector is set (omit selector to select every workload in the namespace)"))
	}
	switch spec.Mode {
	case "", EgressEnforce, EgressAudit:
	default:
		errs = append(errs, pos.Errorf("spec.mode", "unknown mode %q (want Enforce or Audit)", spec.Mode))
	}
	for _, list := range []struct {
		name string
		vals []string
	}{{"allow", spec.Allow}, {"deny", spec.Deny}} {
		for i, v := range list.vals {
			if _, err := ParseDomainPattern(v); err != nil {
				errs = append(errs, pos.Errorf(fmt.Sprintf("spec.%s[%d]", list.name, i), "%v", err))
			}
		}
	}
	errs = append(errs, validateEgressFirewall(pos, spec)...)
	if d := spec.Detection; d != nil {
		switch d.Sensitivity {
		case "", SensitivityLow, SensitivityMedium, SensitivityHigh:
		default:
			errs = append(errs, pos.Errorf("spec.detection.sensitivity", "unknown sensitivity %q (want Low, Medium or High)", d.Sensitivity))
		}
		switch d.Action {
		case "", DetectionAlert, DetectionQuarantine:
		default:
			errs = append(errs, pos.Errorf("spec.detection.action", "unknown action %q (want Alert or Quarantine)", d.Action))
		}
	}
	return errs
}

// EgressOptions configure egress compilation.
type EgressOptions struct {
	// RootNamespace holds mesh-wide EgressPolicies. Default DefaultRootNamespace.
	RootNamespace string
	// ClusterDomain is the cluster DNS domain (default cluster.local); names
	// under it are in-cluster and always allowed unless denied.
	ClusterDomain string
}

// EgressVerdict is the outcome of an egress decision.
type EgressVerdict int

// Egress verdicts.
const (
	// EgressAllow: resolve normally.
	EgressAllow EgressVerdict = iota
	// EgressBlock: refuse (an Enforce policy denies, or the name is not in
	// the allow list of an Enforce policy).
	EgressBlock
	// EgressAuditBlock: resolve normally but log that an Audit policy would
	// have blocked.
	EgressAuditBlock
)

// EgressDecision says what to do with a name and why.
type EgressDecision struct {
	Verdict EgressVerdict
	// Policy is namespace/name of the deciding policy ("" when none).
	Policy string
	// Denied is true when a deny entry matched (as opposed to a name
	// missing from an allow list).
	Denied bool
	// Pattern is the matching deny pattern, or "" for allow-list misses.
	Pattern string
}

// Reason is a short human text for logs and EDE.
func (d EgressDecision) Reason() string {
	switch {
	case d.Verdict == EgressAllow:
		return ""
	case d.Denied:
		return fmt.Sprintf("denied by EgressPolicy %s (%s)", d.Policy, d.Pattern)
	default:
		return fmt.Sprintf("not allowed by EgressPolicy %s", d.Policy)
	}
}

// compiledEgress is one EgressPolicy with its patterns compiled.
type compiledEgress struct {
	src   *EgressPolicy
	name  string // namespace/name
	allow *DomainSet
	deny  *DomainSet
	audit bool
	// cidrs are spec.allowCIDRs, sorted and deduplicated.
	cidrs []netip.Prefix
	// ports are spec.ports, merged; nil means any port.
	ports []PortRange
}

// EgressIndex holds every compiled EgressPolicy of a Set. It is immutable
// and safe for concurrent use.
type EgressIndex struct {
	opts     EgressOptions
	policies []*compiledEgress
	// clusterSuffix is "." + ClusterDomain.
	clusterSuffix string
	mergedCache
}

// CompileEgress compiles the EgressPolicies of set.
func CompileEgress(set *Set, opts EgressOptions) (*EgressIndex, error) {
	if opts.RootNamespace == "" {
		opts.RootNamespace = DefaultRootNamespace
	}
	if opts.ClusterDomain == "" {
		opts.ClusterDomain = "cluster.local"
	}
	cd, err := NormalizeDomain(opts.ClusterDomain)
	if err != nil {
		return nil, fmt.Errorf("policy: cluster domain: %w", err)
	}
	opts.ClusterDomain = cd
	ix := &EgressIndex{opts: opts, clusterSuffix: "." + cd}
	if set == nil {
		return ix, nil
	}
	for _, p := range set.Egress {
		c := &compiledEgress{src: p, name: p.Metadata.Namespace + "/" + p.Metadata.Name, audit: p.Spec.Mode == EgressAudit}
		var err error
		if c.allow, err = compilePatterns(p.Spec.Allow); err != nil {
			return nil, fmt.Errorf("policy: EgressPolicy %s: %w", c.name, err)
		}
		if c.deny, err = compilePatterns(p.Spec.Deny); err != nil {
			return nil, fmt.Errorf("policy: EgressPolicy %s: %w", c.name, err)
		}
		if c.cidrs, c.ports, err = compileEgressFirewall(&p.Spec); err != nil {
			return nil, fmt.Errorf("policy: EgressPolicy %s: %w", c.name, err)
		}
		ix.policies = append(ix.policies, c)
	}
	return ix, nil
}

func compilePatterns(vals []string) (*DomainSet, error) {
	ps := make([]DomainPattern, 0, len(vals))
	for _, v := range vals {
		p, err := ParseDomainPattern(v)
		if err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return NewDomainSet(ps), nil
}

// Len is the number of compiled policies.
func (ix *EgressIndex) Len() int { return len(ix.policies) }

// WorkloadEgress is the egress policy in force for one workload.
type WorkloadEgress struct {
	ix       *EgressIndex
	policies []*compiledEgress
	// hasAllow: some selecting policy has an allow list.
	hasAllow bool
	// enforceAllow is the first Enforce policy with an allow list.
	enforceAllow *compiledEgress
	auditAllow   *compiledEgress
	detection    *compiledEgress
	// merged is set when many policies select the workload.
	merged *mergedSets

	// fw is the firewall view (see Firewall), computed by ForWorkload;
	// fwAudit is true when fw.Mode is FirewallAudit, so NamePorts consults
	// the Audit policies.
	fw      Firewall
	fwAudit bool
}

// ForWorkload returns the policies selecting a workload (its namespace's
// and the root namespace's, by selector). Callers cache the result per
// workload; it is immutable.
func (ix *EgressIndex) ForWorkload(namespace string, labels map[string]string) *WorkloadEgress {
	w := &WorkloadEgress{ix: ix}
	var ids []int
	for id, c := range ix.policies {
		ns := c.src.Metadata.Namespace
		if ns != namespace && ns != ix.opts.RootNamespace {
			continue
		}
		if !c.src.Spec.Selector.Matches(labels) {
			continue
		}
		w.policies = append(w.policies, c)
		ids = append(ids, id)
		if c.allow.Len() > 0 {
			w.hasAllow = true
			if c.audit && w.auditAllow == nil {
				w.auditAllow = c
			}
			if !c.audit && w.enforceAllow == nil {
				w.enforceAllow = c
			}
		}
		if c.src.Spec.Detection != nil && w.detection == nil {
			w.detection = c
		}
	}
	if len(w.policies) >= mergedThreshold {
		w.merged = ix.merged(w.policies, ids)
	}
	w.computeFirewall()
	return w
}

// Policies lists namespace/name of the selecting policies.
func (w *WorkloadEgress) Policies() []string {
	out := make([]string, len(w.policies))
	for i, c := range w.policies {
		out[i] = c.name
	}
	return out
}

// Detection returns the detection settings of the first selecting policy
// that has any, with its name; nil when none sets them.
func (w *WorkloadEgress) Detection() (*DetectionSpec, string) {
	if w.detection == nil {
		return nil, ""
	}
	return w.detection.src.Spec.Detection, w.detection.name
}

// IsInCluster reports whether a normalized name is in the cluster domain.
func (ix *EgressIndex) IsInCluster(name string) bool {
	return name == ix.opts.ClusterDomain || strings.HasSuffix(name, ix.clusterSuffix)
}

// Decide applies the workload's policies to a normalized name (see
// CanonicalName): deny always wins (Enforce before Audit); then, if any
// selecting policy has an allow list, the name must be in one of them or
// in the cluster domain.
func (w *WorkloadEgress) Decide(name string) EgressDecision {
	if w.merged != nil {
		return w.decideMerged(name)
	}
	var auditDeny *compiledEgress
	var auditPattern DomainPattern
	for _, c := range w.policies {
		if p, ok := c.deny.Match(name); ok {
			if !c.audit {
				return EgressDecision{Verdict: EgressBlock, Policy: c.name, Denied: true, Pattern: p.String()}
			}
			if auditDeny == nil {
				auditDeny, auditPattern = c, p
			}
		}
	}
	if auditDeny != nil {
		return EgressDecision{Verdict: EgressAuditBlock, Policy: auditDeny.name, Denied: true, Pattern: auditPattern.String()}
	}
	if !w.hasAllow || w.ix.IsInCluster(name) {
		return EgressDecision{Verdict: EgressAllow}
	}
	for _, c := range w.policies {
		if _, ok := c.allow.Match(name); ok {
			return EgressDecision{Verdict: EgressAllow, Policy: c.name}
		}
	}
	if w.enforceAllow != nil {
		return EgressDecision{Verdict: EgressBlock, Policy: w.enforceAllow.name}
	}
	return EgressDecision{Verdict: EgressAuditBlock, Policy: w.auditAllow.name}
}

// decideMerged is Decide with one lookup per set instead of one per
// policy; the matching policy's own set then names the pattern, so the
// result is the same as the loop's.
func (w *WorkloadEgress) decideMerged(name string) EgressDecision {
	if i := w.merged.enforceDeny.first(name); i >= 0 {
		c := w.policies[i]
		p, _ := c.deny.Match(name)
		return EgressDecision{Verdict: EgressBlock, Policy: c.name, Denied: true, Pattern: p.String()}
	}
	if i := w.merged.auditDeny.first(name); i >= 0 {
		c := w.policies[i]
		p, _ := c.deny.Match(name)
		return EgressDecision{Verdict: EgressAuditBlock, Policy: c.name, Denied: true, Pattern: p.String()}
	}
	if !w.hasAllow || w.ix.IsInCluster(name) {
		return EgressDecision{Verdict: EgressAllow}
	}
	if i := w.merged.allow.first(name); i >= 0 {
		return EgressDecision{Verdict: EgressAllow, Policy: w.policies[i].name}
	}
	if w.enforceAllow != nil {
		return EgressDecision{Verdict: EgressBlock, Policy: w.enforceAllow.name}
	}
	return EgressDecision{Verdict: EgressAuditBlock, Policy: w.auditAllow.name}
}

// CanonicalName lower-cases an ASCII DNS name from the wire and drops the
// trailing dot, without allocating when it is already canonical.
func CanonicalName(qname string) string {
	qname = strings.TrimSuffix(qname, ".")
	for i := 0; i < len(qname); i++ {
		if c := qname[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(qname)
		}
	}
	return qname
}
