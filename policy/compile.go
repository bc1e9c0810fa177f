package policy

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Target is the workload a policy set is compiled for.
type Target struct {
	Namespace string
	Labels    map[string]string
}

// CompileOptions configure compilation.
type CompileOptions struct {
	// RootNamespace holds mesh-wide policies. Default DefaultRootNamespace.
	RootNamespace string
	// TrustDomain turns Istio principals ("td/ns/x/sa/y") into SPIFFE IDs
	// and builds service-account principals. Default DefaultTrustDomain.
	TrustDomain string
	// DynamicMetadata says the data plane runs the filters that write the
	// dynamic metadata some attributes are read from: Istio's authn filter
	// (istio_authn: requestPrincipals, notRequestPrincipals,
	// request.auth.*) and the Envoy filters named by
	// experimental.envoy.filters.NAME[KEY]. Then those attributes compile
	// to metadata matchers, as istiod emits them.
	//
	// By default (false) they are unknowable, and treated the way Istio
	// treats HTTP fields on TCP: an ALLOW (or AUDIT) rule that needs one
	// matches nothing, a DENY rule drops them and so denies more, and
	// Compiled.Notes says so. No kordon data plane writes that metadata:
	// proxyless gRPC validates no JWT and accepts a metadata matcher only
	// to never match it, so a DENY on a JWT attribute would otherwise
	// silently stop firing.
	DynamicMetadata bool
	// JWTAuthn says the data plane runs the jwt_authn filter that
	// CompileJWTAuthn builds for the same target and set (Envoy): JWT
	// attributes (requestPrincipals, request.auth.*) then match the payload
	// it verified, and are knowable.
	JWTAuthn bool
	// JWKS, when set, resolves a jwksUri to the key set the control plane
	// fetched: that provider gets the keys inline and needs no cluster.
	// Otherwise (or when it reports false) the data plane fetches the
	// jwksUri itself.
	JWKS func(uri string) (jwks string, ok bool)
}

func (o CompileOptions) withDefaults() CompileOptions {
	if o.RootNamespace == "" {
		o.RootNamespace = DefaultRootNamespace
	}
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	return o
}

// ForWorkload returns the AuthorizationPolicies that apply to a workload:
// those of its namespace and of the root namespace whose selector matches
// its labels, in the set's order.
func (s *Set) ForWorkload(namespace string, labels map[string]string, rootNamespace string) []*AuthorizationPolicy {
	var out []*AuthorizationPolicy
	for _, p := range s.Authorization {
		if appliesTo(p.Metadata, p.Spec.Selector, namespace, labels, rootNamespace) {
			out = append(out, p)
		}
	}
	return out
}

// appliesTo reports whether an object of namespace meta.Namespace with
// selector sel applies to a workload: same namespace or the root
// namespace, and the selector matches its labels.
func appliesTo(meta ObjectMeta, sel *WorkloadSelector, namespace string, labels map[string]string, rootNamespace string) bool {
	if rootNamespace == "" {
		rootNamespace = DefaultRootNamespace
	}
	if meta.Namespace != namespace && meta.Namespace != rootNamespace {
		return false
	}
	return sel.Matches(labels)
}

// RBACConfig is one compiled RBAC filter configuration: the Envoy
// config.rbac.v3.RBAC of one action's enforced policies and of its dry-run
// policies.
type RBACConfig struct {
	// Action is the kordon action of this config.
	Action Action
	// Rules is the enforced Envoy RBAC (action DENY, ALLOW, or LOG for
	// AUDIT, as istiod emits AUDIT). It is nil when every policy of this
	// action is a dry-run one: Istio drops the enforced rules entirely
	// then (pilot/pkg/security/authz/builder/builder.go, Builder.build:
	// "if !hasEnforcePolicy { enforceRules = nil }"), so a dry-run ALLOW
	// never makes a workload deny what no ALLOW policy selects.
	Rules *rbacconfig.RBAC
	// Shadow holds the rules of the action's dry-run policies
	// (annotation istio.io/dry-run: "true"): evaluated and reported under
	// the shadow stat prefix, never enforced. Nil when there are none.
	Shadow *rbacconfig.RBAC
}

// DryRunAnnotation marks an AuthorizationPolicy whose rules are
// evaluated and reported but never enforced (Istio's istio.io/dry-run).
const DryRunAnnotation = "istio.io/dry-run"

// IsDryRun reports whether p carries istio.io/dry-run: "true" (any value
// strconv.ParseBool reads as true; validation refuses other values, as
// Istio's pkg/config/validation checkDryRunAnnotation does).
func (p *AuthorizationPolicy) IsDryRun() bool {
	v, ok := p.Metadata.Annotations[DryRunAnnotation]
	if !ok {
		return false
	}
	b, err := strconv.ParseBool(v)
	return err == nil && b
}

// Compiled is the RBAC for one workload, in the order a proxy must apply
// the filters: AUDIT (which never denies), then DENY, then ALLOW, as
// istiod orders them. A missing action has no entry.
type Compiled struct {
	// HTTP configs for the HTTP RBAC filter (envoy.filters.http.rbac).
	HTTP []RBACConfig
	// Network configs for the network RBAC filter (envoy.filters.network.rbac)
	// in TCP-only contexts: HTTP-only fields make ALLOW rules match
	// nothing and are dropped from DENY rules (both fail closed).
	Network []RBACConfig
	// JWTAuthn is the workload's jwt_authn filter (CompileOptions.JWTAuthn
	// only; nil otherwise). HTTPFilters puts it before the RBAC filters.
	JWTAuthn *JWTAuthn
	// Notes, sorted, name each rule that attributes the data plane cannot
	// know changed (see CompileOptions.DynamicMetadata): an ALLOW or AUDIT
	// rule left out, a DENY rule that denies more.
	Notes []string
}

// Compile builds the RBAC configs for target from every applicable policy
// of set. The output is deterministic and validated with ValidateAll.
func Compile(set *Set, target Target, opts CompileOptions) (*Compiled, error) {
	opts = opts.withDefaults()
	applicable := set.ForWorkload(target.Namespace, target.Labels, opts.RootNamespace)
	byAction := map[Action][]*AuthorizationPolicy{}
	for _, p := range applicable {
		a := p.Spec.Action
		if a == "" {
			a = ActionAllow
		}
		byAction[a] = append(byAction[a], p)
	}
	out := &Compiled{}
	notes := map[string]bool{}
	var issuers []string
	if opts.JWTAuthn {
		j, err := CompileJWTAuthn(set, target, opts)
		if err != nil {
			return nil, err
		}
		issuers = j.Issuers
		out.JWTAuthn = j
	}
	// istiod's order (pilot/pkg/security/authz/builder/builder.go, build):
	// AUDIT first, so that it sees the requests a DENY then refuses.
	for _, action := range []Action{ActionAudit, ActionDeny, ActionAllow} {
		ps := byAction[action]
		if len(ps) == 0 {
			continue
		}
		for _, tcp := range []bool{false, true} {
			enforced, shadow := map[string]*rbacconfig.Policy{}, map[string]*rbacconfig.Policy{}
			hasEnforced, hasShadow := false, false
			for _, p := range ps {
				policies := enforced
				if p.IsDryRun() {
					policies, hasShadow = shadow, true
				} else {
					hasEnforced = true
				}
				c := &ruleCompiler{opts: opts, policyNS: p.Metadata.Namespace, tcp: tcp, action: action, issuers: issuers}
				for i := range p.Spec.Rules {
					if !opts.DynamicMetadata {
						if used := c.unknowable(&p.Spec.Rules[i]); len(used) > 0 {
							notes[metadataNote(RuleName(p.Metadata.Namespace, p.Metadata.Name, i), action, used)] = true
						}
					}
					pol, ok := c.rule(&p.Spec.Rules[i])
					if !ok {
						continue
					}
					policies[RuleName(p.Metadata.Namespace, p.Metadata.Name, i)] = pol
				}
			}
			cfg := RBACConfig{Action: action}
			if hasEnforced {
				cfg.Rules = &rbacconfig.RBAC{Action: envoyAction(action), Policies: enforced}
			}
			if hasShadow {
				cfg.Shadow = &rbacconfig.RBAC{Action: envoyAction(action), Policies: shadow}
			}
			for _, r := range []*rbacconfig.RBAC{cfg.Rules, cfg.Shadow} {
				if err := r.ValidateAll(); r != nil && err != nil {
					return nil, fmt.Errorf("policy: compiled RBAC is invalid: %w", err)
				}
			}
			if tcp {
				out.Network = append(out.Network, cfg)
			} else {
				out.HTTP = append(out.HTTP, cfg)
			}
		}
	}
	if !opts.DynamicMetadata && !opts.JWTAuthn {
		for _, ra := range set.RequestAuthenticationsFor(target.Namespace, target.Labels, opts.RootNamespace) {
			notes[requestAuthnNote(ra)] = true
		}
	}
	for n := range notes {
		out.Notes = append(out.Notes, n)
	}
	sort.Strings(out.Notes)
	return out, nil
}

// unknowable lists the attributes of r this data plane cannot know (see
// CompileOptions.DynamicMetadata and JWTAuthn), in rule order, once each.
func (c *ruleCompiler) unknowable(r *Rule) []string {
	if c.opts.DynamicMetadata {
		return nil
	}
	var used []string
	seen := map[string]bool{}
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			used = append(used, a)
		}
	}
	for _, f := range r.From {
		if f.Source == nil {
			continue
		}
		if len(f.Source.RequestPrincipals) > 0 && !c.opts.JWTAuthn {
			add("requestPrincipals")
		}
		if len(f.Source.NotRequestPrincipals) > 0 && !c.opts.JWTAuthn {
			add("notRequestPrincipals")
		}
	}
	for _, w := range r.When {
		if wk, _, ok := lookupWhenKey(w.Key); ok && wk.metadata && !(wk.jwt && c.opts.JWTAuthn) {
			add(w.Key)
		}
	}
	return used
}

func metadataNote(rule string, action Action, used []string) string {
	effect := "it matches nothing (fail closed)"
	if action == ActionDeny {
		effect = "they are left out of the rule, which denies more (fail closed)"
	}
	return fmt.Sprintf("%s: %s rule needs %s, which this data plane cannot know (no filter validates JWTs or writes that metadata): %s",
		rule, action, strings.Join(used, ", "), effect)
}

// envoyAction is the Envoy RBAC action of a kordon action: AUDIT is LOG,
// which records a match and allows every request, as in istiod
// (pilot/pkg/security/authz/builder/builder.go, build: auditPolicies with
// rbacpb.RBAC_LOG).
func envoyAction(a Action) rbacconfig.RBAC_Action {
	switch a {
	case ActionDeny:
		return rbacconfig.RBAC_DENY
	case ActionAudit:
		return rbacconfig.RBAC_LOG
	}
	return rbacconfig.RBAC_ALLOW
}

// RuleName is the Envoy policy name of rule i of namespace/name, in
// Istio's format.
func RuleName(namespace, name string, i int) string {
	return fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]", namespace, name, i)
}

// ruleCompiler turns one rule into an Envoy Policy.
type ruleCompiler struct {
	opts     CompileOptions
	policyNS string
	tcp      bool
	action   Action
	// issuers are those the workload's jwt_authn providers accept
	// (CompileOptions.JWTAuthn).
	issuers []string
}

func (c *ruleCompiler) jwtRequestPrincipal(v string) *rbacconfig.Principal {
	return jwtPrincipal(c.issuers, v)
}

// rule compiles r. ok is false when the rule must be left out: in a TCP
// context an ALLOW (or AUDIT) rule that uses HTTP-only fields can never
// match, so it is omitted (fail closed).
//
// Without CompileOptions.DynamicMetadata the same holds for attributes
// read from dynamic metadata, in every context: an ALLOW or AUDIT rule
// that needs one is left out, a DENY rule drops them.
func (c *ruleCompiler) rule(r *Rule) (*rbacconfig.Policy, bool) {
	if c.tcp && c.action != ActionDeny && ruleUsesHTTP(r) {
		return nil, false
	}
	if c.action != ActionDeny && len(c.unknowable(r)) > 0 {
		return nil, false
	}
	var principals []*rbacconfig.Principal
	var permissions []*rbacconfig.Permission

	if len(r.From) > 0 {
		var ors []*rbacconfig.Principal
		for _, f := range r.From {
			ors = append(ors, c.source(f.Source))
		}
		principals = append(principals, orIDs(ors))
	}
	if len(r.To) > 0 {
		var ors []*rbacconfig.Permission
		for _, t := range r.To {
			ors = append(ors, c.operation(t.Operation))
		}
		permissions = append(permissions, orRules(ors))
	}
	for _, cond := range r.When {
		wk, arg, _ := lookupWhenKey(cond.Key)
		if c.tcp && wk.httpOnly {
			continue // DENY in TCP: drop HTTP-only parts (deny more)
		}
		if !c.opts.DynamicMetadata && wk.metadata && !(wk.jwt && c.opts.JWTAuthn) {
			continue // DENY: drop unknowable parts (deny more)
		}
		if wk.kind == condPrincipal {
			principals = append(principals, c.conditionPrincipal(cond, arg))
		} else {
			permissions = append(permissions, c.conditionPermission(cond, arg))
		}
	}
	return &rbacconfig.Policy{Permissions: []*rbacconfig.Permission{andRules(permissions)}, Principals: []*rbacconfig.Principal{andIDs(principals)}}, true
}

// ruleUsesHTTP reports whether a rule has any HTTP-only field.
func ruleUsesHTTP(r *Rule) bool {
	for _, f := range r.From {
		if s := f.Source; s != nil && (len(s.RequestPrincipals) > 0 || len(s.NotRequestPrincipals) > 0) {
			return true
		}
	}
	for _, t := range r.To {
		if o := t.Operation; o != nil && (len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths)) > 0 {
			return true
		}
	}
	for _, w := range r.When {
		if wk, _, ok := lookupWhenKey(w.Key); ok && wk.httpOnly {
			return true
		}
	}
	return false
}

// source compiles one `from.source`: fields ANDed, values ORed.
func (c *ruleCompiler) source(s *Source) *rbacconfig.Principal {
	var ands []*rbacconfig.Principal
	add := func(vals []string, neg bool, f func(string) *rbacconfig.Principal) {
		if len(vals) == 0 {
			return
		}
		var ors []*rbacconfig.Principal
		for _, v := range vals {
			ors = append(ors, f(v))
		}
		p := orIDs(ors)
		if neg {
			p = notID(p)
		}
		ands = append(ands, p)
	}
	add(s.Principals, false, c.principal)
	add(s.NotPrincipals, true, c.principal)
	switch {
	case c.tcp:
	case c.opts.JWTAuthn:
		add(s.RequestPrincipals, false, c.jwtRequestPrincipal)
		add(s.NotRequestPrincipals, true, c.jwtRequestPrincipal)
	case c.opts.DynamicMetadata:
		add(s.RequestPrincipals, false, requestPrincipal)
		add(s.NotRequestPrincipals, true, requestPrincipal)
	}
	add(s.Namespaces, false, c.namespace)
	add(s.NotNamespaces, true, c.namespace)
	add(s.ServiceAccounts, false, c.serviceAccount)
	add(s.NotServiceAccounts, true, c.serviceAccount)
	add(s.IPBlocks, false, directRemoteIP)
	add(s.NotIPBlocks, true, directRemoteIP)
	add(s.RemoteIPBlocks, false, remoteIP)
	add(s.NotRemoteIPBlocks, true, remoteIP)
	add(s.TrustDomains, false, c.trustDomain)
	add(s.NotTrustDomains, true, c.trustDomain)
	return andIDs(ands)
}

// operation compiles one `to.operation`.
func (c *ruleCompiler) operation(o *Operation) *rbacconfig.Permission {
	var ands []*rbacconfig.Permission
	add := func(vals []string, neg bool, f func(string) *rbacconfig.Permission) {
		if len(vals) == 0 {
			return
		}
		var ors []*rbacconfig.Permission
		for _, v := range vals {
			ors = append(ors, f(v))
		}
		p := orRules(ors)
		if neg {
			p = notRule(p)
		}
		ands = append(ands, p)
	}
	if !c.tcp {
		add(o.Hosts, false, hostPermission)
		add(o.NotHosts, true, hostPermission)
		add(o.Methods, false, methodPermission)
		add(o.NotMethods, true, methodPermission)
		add(o.Paths, false, pathPermission)
		add(o.NotPaths, true, pathPermission)
	}
	add(o.Ports, false, portPermission)
	add(o.NotPorts, true, portPermission)
	return andRules(ands)
}

func (c *ruleCompiler) conditionPrincipal(cond Condition, arg string) *rbacconfig.Principal {
	var f func(string) *rbacconfig.Principal
	switch {
	case c.opts.JWTAuthn && strings.HasPrefix(cond.Key, "request.auth."):
		f = c.jwtCondition(cond.Key, arg)
	case strings.HasPrefix(cond.Key, "request.auth.claims["):
		f = func(v string) *rbacconfig.Principal { return authnMetadata("request.auth.claims", arg, v) }
	case cond.Key == "source.ip":
		f = directRemoteIP
	case cond.Key == "remote.ip":
		f = remoteIP
	case cond.Key == "source.namespace":
		f = c.namespace
	case cond.Key == "source.principal":
		f = c.principal
	case cond.Key == "source.serviceAccount":
		f = c.serviceAccount
	case cond.Key == "source.trustDomain":
		f = c.trustDomain
	default: // request.auth.principal / audiences / presenter
		f = func(v string) *rbacconfig.Principal { return authnMetadata(cond.Key, "", v) }
	}
	return valuesPrincipal(cond, f)
}

// jwtCondition matches a request.auth.* key against the payload jwt_authn
// verified: claims by path (string or list), audiences as the aud claim,
// presenter as azp, principal as iss/sub.
func (c *ruleCompiler) jwtCondition(key, claim string) func(string) *rbacconfig.Principal {
	switch key {
	case "request.auth.principal":
		return c.jwtRequestPrincipal
	case "request.auth.audiences":
		return func(v string) *rbacconfig.Principal { return jwtPayload(claimValue(v), "aud") }
	case "request.auth.presenter":
		return func(v string) *rbacconfig.Principal { return jwtPayload(stringValue(stringMatch(v, false)), "azp") }
	}
	path := strings.Split(claim, "][")
	return func(v string) *rbacconfig.Principal { return jwtPayload(claimValue(v), path...) }
}

func valuesPrincipal(cond Condition, f func(string) *rbacconfig.Principal) *rbacconfig.Principal {
	var ands []*rbacconfig.Principal
	if len(cond.Values) > 0 {
		var ors []*rbacconfig.Principal
		for _, v := range cond.Values {
			ors = append(ors, f(v))
		}
		ands = append(ands, orIDs(ors))
	}
	if len(cond.NotValues) > 0 {
		var ors []*rbacconfig.Principal
		for _, v := range cond.NotValues {
			ors = append(ors, f(v))
		}
		ands = append(ands, notID(orIDs(ors)))
	}
	return andIDs(ands)
}

func (c *ruleCompiler) conditionPermission(cond Condition, arg string) *rbacconfig.Permission {
	var f func(string) *rbacconfig.Permission
	switch cond.Key {
	case "destination.ip":
		f = func(v string) *rbacconfig.Permission {
			return &rbacconfig.Permission{Rule: &rbacconfig.Permission_DestinationIp{DestinationIp: cidr(v)}}
		}
	case "destination.port":
		f = portPermission
	case "connection.sni":
		f = func(v string) *rbacconfig.Permission {
			return &rbacconfig.Permission{Rule: &rbacconfig.Permission_RequestedServerName{RequestedServerName: stringMatch(v, false)}}
		}
	default:
		if filter, key, ok := envoyFilterKey(cond.Key); ok {
			f = func(v string) *rbacconfig.Permission { return envoyFilterMetadata(filter, key, v) }
			break
		}
		// request.headers[NAME]
		name := strings.ToLower(arg)
		f = func(v string) *rbacconfig.Permission {
			return &rbacconfig.Permission{Rule: &rbacconfig.Permission_Header{Header: headerMatch(name, v, false)}}
		}
	}
	var ands []*rbacconfig.Permission
	if len(cond.Values) > 0 {
		var ors []*rbacconfig.Permission
		for _, v := range cond.Values {
			ors = append(ors, f(v))
		}
		ands = append(ands, orRules(ors))
	}
	if len(cond.NotValues) > 0 {
		var ors []*rbacconfig.Permission
		for _, v := range cond.NotValues {
			ors = append(ors, f(v))
		}
		ands = append(ands, notRule(orRules(ors)))
	}
	return andRules(ands)
}

// principal matches an Istio principal ("td/ns/x/sa/y", wildcards allowed)
// against the peer certificate's URI SAN.
func (c *ruleCompiler) principal(v string) *rbacconfig.Principal {
	if v == "*" {
		return authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".+"}}})
	}
	switch {
	case strings.HasSuffix(v, "*"):
		return authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: c.spiffeID(strings.TrimSuffix(v, "*"))}})
	case strings.HasPrefix(v, "*"):
		// As istiod: the SAN must still be a SPIFFE ID, so a DNS SAN or a
		// non-SPIFFE URI SAN ending in the suffix does not match.
		re := "spiffe://.*" + regexp.QuoteMeta(strings.TrimPrefix(v, "*"))
		return authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}})
	}
	return authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: c.spiffeID(v)}})
}

// spiffeID turns an Istio principal into a SPIFFE ID. Like istiod, the
// trust domain "cluster.local" in a policy stands for the local trust
// domain, so policies written for Istio's default keep matching (and DENY
// policies keep denying) under a configured trust domain.
func (c *ruleCompiler) spiffeID(v string) string {
	if strings.HasPrefix(v, "spiffe://") {
		return v
	}
	if rest, ok := strings.CutPrefix(v, DefaultTrustDomain+"/"); ok {
		return "spiffe://" + c.opts.TrustDomain + "/" + rest
	}
	return "spiffe://" + v
}

// trustDomain matches the trust domain of the peer's SPIFFE ID, as
// istiod's srcTrustDomainGenerator (pilot/pkg/security/authz/model/
// generator.go): exact "td" is the prefix "spiffe://td/", "*" any SPIFFE
// ID, a prefix or suffix wildcard a regex within the trust domain. As for
// principals, "cluster.local" stands for the local trust domain.
func (c *ruleCompiler) trustDomain(v string) *rbacconfig.Principal {
	if v == DefaultTrustDomain {
		v = c.opts.TrustDomain
	}
	switch {
	case v == "*":
		return authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://"}})
	case !strings.Contains(v, "*"):
		return authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + v + "/"}})
	}
	before, after, _ := strings.Cut(v, "*")
	re := "spiffe://" + regexp.QuoteMeta(before) + "[^/]*" + regexp.QuoteMeta(after) + "/.*"
	return authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}})
}

// envoyFilterMetadata matches key of filter's dynamic metadata, as
// istiod's envoyFilterGenerator.permission: "[v]" matches any element of
// a list, anything else the string. Only the filter named writes it; grpc-go
// accepts the matcher and never matches it.
func envoyFilterMetadata(filter, key, v string) *rbacconfig.Permission {
	value := stringValue(stringMatch(v, false))
	if strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]") {
		value = listOneOf(stringValue(stringMatch(strings.Trim(v, "[]"), false)))
	}
	m := metadataMatcher(filter, value, key)
	//lint:ignore SA1019 sourced_metadata replaces it, but grpc-go NACKs sourced_metadata (notes/real-xds-data-plane.md)
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_Metadata{Metadata: m}}
}

// namespace matches every principal of a namespace by regex on the SAN, as
// istiod does.
func (c *ruleCompiler) namespace(v string) *rbacconfig.Principal {
	var re string
	switch {
	case v == "*":
		re = `.*/ns/[^/]+/.*`
	case strings.HasSuffix(v, "*"):
		re = `.*/ns/` + regexp.QuoteMeta(strings.TrimSuffix(v, "*")) + `[^/]*/.*`
	case strings.HasPrefix(v, "*"):
		re = `.*/ns/[^/]*` + regexp.QuoteMeta(strings.TrimPrefix(v, "*")) + `/.*`
	default:
		re = `.*/ns/` + regexp.QuoteMeta(v) + `/.*`
	}
	return authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}})
}

// serviceAccount matches "ns/name" (or "name" in the policy's namespace).
func (c *ruleCompiler) serviceAccount(v string) *rbacconfig.Principal {
	ns, name, ok := strings.Cut(v, "/")
	if !ok {
		ns, name = c.policyNS, v
	}
	id := fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", c.opts.TrustDomain, ns, name)
	return authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}})
}

func authenticated(m *matcherv3.StringMatcher) *rbacconfig.Principal {
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_Authenticated_{Authenticated: &rbacconfig.Principal_Authenticated{PrincipalName: m}}}
}

// requestPrincipal matches the JWT principal from Istio's authn metadata.
// grpc-go never matches metadata principals, so such ALLOW rules fail
// closed there.
func requestPrincipal(v string) *rbacconfig.Principal {
	return authnMetadata("request.auth.principal", "", v)
}

// authnMetadata matches a value that a JWT authentication filter stored in
// the "istio_authn" dynamic metadata, as istiod emits it.
func authnMetadata(key, claim, v string) *rbacconfig.Principal {
	keys := []string{key}
	value := stringValue(stringMatch(v, false))
	if claim != "" {
		keys = append(keys, strings.Split(claim, "][")...)
		// Istio's authn filter stores every claim as a list: match any
		// element, as istiod does.
		value = listOneOf(value)
	}
	m := metadataMatcher("istio_authn", value, keys...)
	//lint:ignore SA1019 sourced_metadata replaces it, but grpc-go NACKs sourced_metadata (notes/real-xds-data-plane.md)
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_Metadata{Metadata: m}}
}

// metadataMatcher matches value at the path keys of filter's dynamic
// metadata.
func metadataMatcher(filter string, value *matcherv3.ValueMatcher, keys ...string) *matcherv3.MetadataMatcher {
	path := make([]*matcherv3.MetadataMatcher_PathSegment, 0, len(keys))
	for _, k := range keys {
		path = append(path, &matcherv3.MetadataMatcher_PathSegment{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: k}})
	}
	return &matcherv3.MetadataMatcher{Filter: filter, Path: path, Value: value}
}

// listOneOf matches a list with an element that v matches.
func listOneOf(v *matcherv3.ValueMatcher) *matcherv3.ValueMatcher {
	return &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: v}}}}
}

func directRemoteIP(v string) *rbacconfig.Principal {
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_DirectRemoteIp{DirectRemoteIp: cidr(v)}}
}

func remoteIP(v string) *rbacconfig.Principal {
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_RemoteIp{RemoteIp: cidr(v)}}
}

func cidr(v string) *corev3.CidrRange {
	p, err := parseCIDR(v)
	if err != nil {
		// Validation rejects bad CIDRs before compilation; reaching this is
		// a programming error, and an unmatchable range fails closed only
		// for ALLOW, so refuse loudly instead.
		panic(fmt.Sprintf("policy: unvalidated CIDR %q reached the compiler", v))
	}
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
}

// hostPermission matches the :authority header exactly and
// case-insensitively, with no implicit port, as istiod since Istio 1.11
// (pilot/pkg/security/authz/model/generator.go hostGenerator,
// pilot/pkg/security/authz/matcher/header.go HostMatcher): "google.com"
// does not match "google.com:80"; users write "google.com:*" (a prefix
// match) for any port. An ALLOW on hosts so allows no more than Istio's,
// a DENY denies no more.
func hostPermission(v string) *rbacconfig.Permission {
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_Header{Header: headerMatch(":authority", v, true)}}
}

func methodPermission(v string) *rbacconfig.Permission {
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_Header{Header: headerMatch(":method", v, false)}}
}

func pathPermission(v string) *rbacconfig.Permission {
	m := stringMatch(v, false)
	if strings.Contains(v, matchOneTemplate) || strings.Contains(v, matchAnyTemplate) {
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: pathTemplateRegex(v)}}}
	}
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: m}}}}
}

// Path template segments as RE2: {*} is one or more pchars (one segment),
// {**} any pchars and slashes (zero or more segments), as Envoy's
// uri_template matcher defines them. istiod emits that matcher
// (pilot/pkg/security/authz/model/generator.go pathGenerator,
// matcher.PathTemplateMatcher); grpc-go refuses it (NACK), and both
// Envoy and grpc-go load a safe_regex path, which matches the same paths.
const (
	pathSegmentRegex  = `[a-zA-Z0-9\-._~%!$&'()+,;:@=]+`
	pathSegmentsRegex = `[a-zA-Z0-9\-._~%!$&'()+,;:@=/]*`
)

// pathTemplateRegex compiles a validated path template to RE2: literal
// segments quoted, {*} and {**} replaced.
func pathTemplateRegex(v string) string {
	segs := strings.Split(v, "/")
	for i, s := range segs {
		switch s {
		case matchOneTemplate:
			segs[i] = pathSegmentRegex
		case matchAnyTemplate:
			segs[i] = pathSegmentsRegex
		default:
			segs[i] = regexp.QuoteMeta(s)
		}
	}
	return strings.Join(segs, "/")
}

func portPermission(v string) *rbacconfig.Permission {
	p, err := parsePort(v)
	if err != nil {
		panic(fmt.Sprintf("policy: unvalidated port %q reached the compiler", v))
	}
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_DestinationPort{DestinationPort: p}}
}

// stringMatch turns an Istio value (exact, prefix*, *suffix, *) into a
// StringMatcher. "*" means present and non-empty.
func stringMatch(v string, ignoreCase bool) *matcherv3.StringMatcher {
	m := &matcherv3.StringMatcher{IgnoreCase: ignoreCase}
	switch {
	case v == "*":
		m.IgnoreCase = false
		m.MatchPattern = &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".+"}}
	case strings.HasSuffix(v, "*"):
		m.MatchPattern = &matcherv3.StringMatcher_Prefix{Prefix: strings.TrimSuffix(v, "*")}
	case strings.HasPrefix(v, "*"):
		m.MatchPattern = &matcherv3.StringMatcher_Suffix{Suffix: strings.TrimPrefix(v, "*")}
	default:
		m.MatchPattern = &matcherv3.StringMatcher_Exact{Exact: v}
	}
	return m
}

func headerMatch(name, v string, ignoreCase bool) *routev3.HeaderMatcher {
	if v == "*" {
		return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}
	}
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: stringMatch(v, ignoreCase)}}
}

func orIDs(ids []*rbacconfig.Principal) *rbacconfig.Principal {
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_OrIds{OrIds: &rbacconfig.Principal_Set{Ids: ids}}}
}

func andIDs(ids []*rbacconfig.Principal) *rbacconfig.Principal {
	switch len(ids) {
	case 0:
		return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_Any{Any: true}}
	case 1:
		return ids[0]
	}
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_AndIds{AndIds: &rbacconfig.Principal_Set{Ids: ids}}}
}

func notID(p *rbacconfig.Principal) *rbacconfig.Principal {
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_NotId{NotId: p}}
}

func orRules(rs []*rbacconfig.Permission) *rbacconfig.Permission {
	if len(rs) == 1 {
		return rs[0]
	}
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_OrRules{OrRules: &rbacconfig.Permission_Set{Rules: rs}}}
}

func andRules(rs []*rbacconfig.Permission) *rbacconfig.Permission {
	switch len(rs) {
	case 0:
		return &rbacconfig.Permission{Rule: &rbacconfig.Permission_Any{Any: true}}
	case 1:
		return rs[0]
	}
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_AndRules{AndRules: &rbacconfig.Permission_Set{Rules: rs}}}
}

func notRule(p *rbacconfig.Permission) *rbacconfig.Permission {
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_NotRule{NotRule: p}}
}

// PolicyNames returns the sorted names of the enforced Envoy policies in c.
func (c RBACConfig) PolicyNames() []string {
	return sortedPolicyNames(c.Rules)
}

// ShadowPolicyNames returns the sorted names of the dry-run policies in c.
func (c RBACConfig) ShadowPolicyNames() []string {
	return sortedPolicyNames(c.Shadow)
}

func sortedPolicyNames(r *rbacconfig.RBAC) []string {
	names := make([]string, 0, len(r.GetPolicies()))
	for n := range r.GetPolicies() {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
