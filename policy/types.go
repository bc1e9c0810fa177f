package policy

// API groups and versions kordon reads.
const (
	// GroupVersion is kordon's own API version for both kinds.
	GroupVersion = "security.kordon.dev/v1"
	// IstioV1 and IstioV1beta1 are Istio's AuthorizationPolicy versions,
	// accepted unchanged.
	IstioV1      = "security.istio.io/v1"
	IstioV1beta1 = "security.istio.io/v1beta1"

	// KindAuthorizationPolicy and KindEgressPolicy are the kinds kordon reads.
	KindAuthorizationPolicy = "AuthorizationPolicy"
	KindEgressPolicy        = "EgressPolicy"

	// DefaultRootNamespace is the namespace whose policies apply mesh-wide.
	DefaultRootNamespace = "kordon-system"
	// DefaultTrustDomain is the SPIFFE trust domain used when none is set.
	DefaultTrustDomain = "cluster.local"
)

// TypeMeta is the apiVersion/kind header of every document.
type TypeMeta struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
}

// ObjectMeta is the subset of Kubernetes object metadata kordon uses. Other
// standard metadata fields are accepted and ignored so that objects exported
// with kubectl decode unchanged.
type ObjectMeta struct {
	Name              string            `json:"name,omitempty"`
	Namespace         string            `json:"namespace,omitempty"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	Generation        int64             `json:"generation,omitempty"`
	CreationTimestamp string            `json:"creationTimestamp,omitempty"`
	ManagedFields     any               `json:"managedFields,omitempty"`
}

// WorkloadSelector selects workloads by labels, as Istio's
// type.v1beta1.WorkloadSelector. A nil selector selects every workload in
// the policy's namespace.
type WorkloadSelector struct {
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// Matches reports whether labels satisfy the selector. A nil selector
// matches everything.
func (s *WorkloadSelector) Matches(labels map[string]string) bool {
	if s == nil {
		return true
	}
	for k, v := range s.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// AuthorizationPolicy is Istio's AuthorizationPolicy, field for field, under
// security.kordon.dev/v1 (security.istio.io/v1 and v1beta1 decode into the
// same type).
type AuthorizationPolicy struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta              `json:"metadata"`
	Spec     AuthorizationPolicySpec `json:"spec"`
	// Status is written by the controller; it is accepted and ignored on input.
	Status any `json:"status,omitempty"`

	// Pos records where each field came from.
	Pos *Positions `json:"-"`
}

// Action is what an AuthorizationPolicy does when a rule matches.
type Action string

// Actions. CUSTOM is recognised so that it can be refused clearly.
const (
	ActionAllow  Action = "ALLOW"
	ActionDeny   Action = "DENY"
	ActionAudit  Action = "AUDIT"
	ActionCustom Action = "CUSTOM"
)

// AuthorizationPolicySpec mirrors istio.security.v1beta1.AuthorizationPolicy.
type AuthorizationPolicySpec struct {
	Selector  *WorkloadSelector `json:"selector,omitempty"`
	TargetRef *PolicyTargetRef  `json:"targetRef,omitempty"`
	// TargetRefs is accepted for schema compatibility; see validation.
	TargetRefs []PolicyTargetRef  `json:"targetRefs,omitempty"`
	Rules      []Rule             `json:"rules,omitempty"`
	Action     Action             `json:"action,omitempty"`
	Provider   *ExtensionProvider `json:"provider,omitempty"`
}

// PolicyTargetRef is Istio's targetRef (Gateway API attachment).
type PolicyTargetRef struct {
	Group     string `json:"group,omitempty"`
	Kind      string `json:"kind,omitempty"`
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// ExtensionProvider names the external authorizer of a CUSTOM policy.
type ExtensionProvider struct {
	Name string `json:"name,omitempty"`
}

// Rule matches requests from a list of sources that perform a list of
// operations subject to a list of conditions.
type Rule struct {
	From []RuleFrom  `json:"from,omitempty"`
	To   []RuleTo    `json:"to,omitempty"`
	When []Condition `json:"when,omitempty"`
}

// RuleFrom wraps a Source.
type RuleFrom struct {
	Source *Source `json:"source,omitempty"`
}

// RuleTo wraps an Operation.
type RuleTo struct {
	Operation *Operation `json:"operation,omitempty"`
}

// Source specifies the source identities of a request.
type Source struct {
	Principals           []string `json:"principals,omitempty"`
	NotPrincipals        []string `json:"notPrincipals,omitempty"`
	RequestPrincipals    []string `json:"requestPrincipals,omitempty"`
	NotRequestPrincipals []string `json:"notRequestPrincipals,omitempty"`
	Namespaces           []string `json:"namespaces,omitempty"`
	NotNamespaces        []string `json:"notNamespaces,omitempty"`
	ServiceAccounts      []string `json:"serviceAccounts,omitempty"`
	NotServiceAccounts   []string `json:"notServiceAccounts,omitempty"`
	IPBlocks             []string `json:"ipBlocks,omitempty"`
	NotIPBlocks          []string `json:"notIpBlocks,omitempty"`
	RemoteIPBlocks       []string `json:"remoteIpBlocks,omitempty"`
	NotRemoteIPBlocks    []string `json:"notRemoteIpBlocks,omitempty"`
	// TrustDomains and NotTrustDomains match the trust domain of the
	// peer's SPIFFE ID (exact, prefix, suffix or presence), as Istio 1.30's
	// Source.trust_domains (istio/api security/v1beta1/authorization_policy.proto).
	TrustDomains    []string `json:"trustDomains,omitempty"`
	NotTrustDomains []string `json:"notTrustDomains,omitempty"`
}

// Operation specifies the operations of a request.
type Operation struct {
	Hosts      []string `json:"hosts,omitempty"`
	NotHosts   []string `json:"notHosts,omitempty"`
	Ports      []string `json:"ports,omitempty"`
	NotPorts   []string `json:"notPorts,omitempty"`
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
	Paths      []string `json:"paths,omitempty"`
	NotPaths   []string `json:"notPaths,omitempty"`
}

// Condition is a `when` entry: key with values or notValues.
type Condition struct {
	Key       string   `json:"key"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}

// EgressPolicy restricts which domains the selected workloads may resolve
// and configures exfiltration detection for them.
type EgressPolicy struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta       `json:"metadata"`
	Spec     EgressPolicySpec `json:"spec"`
	// Status is written by the controller; it is accepted and ignored on input.
	Status any `json:"status,omitempty"`

	// Pos records where each field came from.
	Pos *Positions `json:"-"`
}

// EgressMode says whether an EgressPolicy blocks or only logs.
type EgressMode string

// Egress modes.
const (
	EgressEnforce EgressMode = "Enforce"
	EgressAudit   EgressMode = "Audit"
)

// EgressPolicySpec lists allowed and denied domain patterns, and the
// destination ranges and ports the node firewall allows besides them.
//
// Patterns are exact names (api.example.com) or wildcards (*.example.com,
// any depth of subdomain, never the apex; **.example.com is a synonym).
type EgressPolicySpec struct {
	Selector *WorkloadSelector `json:"selector,omitempty"`
	// Allow, when non-empty, makes the selected workloads resolve only
	// these names plus in-cluster names.
	Allow []string `json:"allow,omitempty"`
	// Deny always wins over Allow.
	Deny []string `json:"deny,omitempty"`
	// AllowCIDRs are destination ranges the selected workloads may reach
	// without DNS (e.g. a partner's fixed range), IPv4 or IPv6 CIDR
	// notation. The range must be written masked (10.0.0.0/8, not
	// 10.1.2.3/8) and a single address as /32 or /128.
	AllowCIDRs []string `json:"allowCIDRs,omitempty"`
	// Ports restricts destination ports for both allowed names and
	// AllowCIDRs (empty: any port, any protocol).
	Ports []EgressPort `json:"ports,omitempty"`
	// Mode is Enforce (default) or Audit (answer normally, log the verdict).
	Mode EgressMode `json:"mode,omitempty"`
	// Detection tunes exfiltration and tunneling detection.
	Detection *DetectionSpec `json:"detection,omitempty"`
}

// EgressPort is one destination port or range, as Kubernetes
// NetworkPolicy's NetworkPolicyPort.
type EgressPort struct {
	// Protocol is TCP (default), UDP or SCTP.
	Protocol string `json:"protocol,omitempty"`
	// Port is the destination port, 1-65535.
	Port int `json:"port"`
	// EndPort, when set, makes Port..EndPort an inclusive range; it must be
	// >= Port.
	EndPort int `json:"endPort,omitempty"`
}

// DetectionSpec configures the exfiltration detector for the selected
// workloads.
type DetectionSpec struct {
	// Sensitivity is Low, Medium (default) or High.
	Sensitivity string `json:"sensitivity,omitempty"`
	// Action is Alert (default) or Quarantine: alert and block the
	// offending registrable domain for that workload until lifted.
	Action string `json:"action,omitempty"`
}
