package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// Request is what Explain evaluates: the attributes an RBAC filter sees.
type Request struct {
	// Principal is the peer certificate's URI SAN (spiffe://...); empty
	// for a plaintext peer.
	Principal string
	// SourceIP is the direct peer address; RemoteIP the original client
	// address (defaults to SourceIP).
	SourceIP, RemoteIP netip.Addr
	// DestinationIP and Port are the local address the request arrived on.
	DestinationIP netip.Addr
	Port          uint32
	// HTTP attributes. Headers keys are case-insensitive.
	Method, Path, Host string
	Headers            map[string]string
	// SNI is the TLS server name requested by the client.
	SNI string
	// RequestPrincipal is the JWT principal (iss/sub) set by request
	// authentication, if any.
	RequestPrincipal string
	// TCP evaluates the network RBAC filter instead of the HTTP one.
	TCP bool
}

// Decision is the outcome of Explain.
type Decision struct {
	// Allowed is the final decision.
	Allowed bool `json:"allowed"`
	// Decision is "ALLOW" or "DENY".
	Decision string `json:"decision"`
	// Policy is namespace/name of the deciding policy, if one decided.
	Policy string `json:"policy,omitempty"`
	// Rule is the Envoy policy name (ns[..]-policy[..]-rule[i]).
	Rule string `json:"rule,omitempty"`
	// Reason explains the decision in words.
	Reason string `json:"reason"`
	// Audited lists AUDIT rules that matched (they never change Allowed).
	Audited []string `json:"audited,omitempty"`
	// Notes are the compiler's notes on rules that need attributes the
	// data plane cannot know (Compiled.Notes).
	Notes []string `json:"notes,omitempty"`
	// DryRun is what the dry-run policies (istio.io/dry-run: "true") of
	// each action would have decided, as the RBAC filter's shadow rules
	// report it; it never changes Allowed.
	DryRun []DryRunResult `json:"dryRun,omitempty"`
}

// DryRunResult is the shadow decision of one action's dry-run policies,
// as Envoy counts it (<prefix>shadow_allowed / <prefix>shadow_denied).
type DryRunResult struct {
	// Action is ALLOW or DENY.
	Action Action `json:"action"`
	// Decision is "ALLOW" or "DENY": what the dry-run policies alone would
	// have done to the request.
	Decision string `json:"decision"`
	// Rule is the matching dry-run rule, if one matched.
	Rule string `json:"rule,omitempty"`
}

// Explain evaluates req for target against set with Istio's semantics. It
// evaluates the compiled Envoy RBAC configs themselves, so explain and the
// configuration pushed to proxies cannot disagree.
func Explain(set *Set, target Target, req Request, opts CompileOptions) (*Decision, error) {
	c, err := Compile(set, target, opts)
	if err != nil {
		return nil, err
	}
	if !req.RemoteIP.IsValid() {
		req.RemoteIP = req.SourceIP
	}
	ev := &evaluator{req: req, regexps: map[string]*regexp.Regexp{}}
	if c.JWTAuthn != nil {
		for _, iss := range c.JWTAuthn.Issuers {
			if sub, ok := strings.CutPrefix(req.RequestPrincipal, iss+"/"); ok && sub != "" && len(iss) > len(ev.jwtIss) {
				ev.jwtIss, ev.jwtSub = iss, sub
			}
		}
	}
	configs := c.HTTP
	if req.TCP {
		configs = c.Network
	}
	d := &Decision{Allowed: true, Notes: c.Notes}
	var allowCfg *RBACConfig
	for i := range configs {
		cfg := &configs[i]
		if cfg.Shadow != nil {
			name, ok, err := ev.firstMatch(cfg.Shadow)
			if err != nil {
				return nil, err
			}
			r := DryRunResult{Action: cfg.Action, Rule: name, Decision: "ALLOW"}
			if ok == (cfg.Action == ActionDeny) {
				r.Decision = "DENY"
			}
			if cfg.Action != ActionAudit {
				d.DryRun = append(d.DryRun, r)
			}
		}
		if cfg.Rules == nil {
			continue // only dry-run policies: nothing enforced
		}
		switch cfg.Action {
		case ActionDeny:
			if name, ok, err := ev.firstMatch(cfg.Rules); err != nil {
				return nil, err
			} else if ok && d.Rule == "" {
				d.Allowed, d.Rule = false, name
				d.Reason = "matched a DENY policy"
			}
		case ActionAllow:
			allowCfg = cfg
		case ActionAudit:
			for _, name := range cfg.PolicyNames() {
				ok, err := ev.policy(cfg.Rules.Policies[name])
				if err != nil {
					return nil, err
				}
				if ok {
					d.Audited = append(d.Audited, name)
				}
			}
		}
	}
	switch {
	case d.Rule != "":
		// denied above
	case allowCfg == nil:
		d.Reason = "no enforced ALLOW policy applies to the workload: allowed by default"
	default:
		name, ok, err := ev.firstMatch(allowCfg.Rules)
		if err != nil {
			return nil, err
		}
		if ok {
			d.Rule, d.Reason = name, "matched an ALLOW policy"
		} else {
			d.Allowed = false
			d.Reason = "ALLOW policies apply to the workload and none matched"
			if len(allowCfg.Rules.Policies) == 0 {
				d.Reason = "ALLOW policies apply to the workload but have no rules that can match: deny all"
			}
		}
	}
	d.Decision = "ALLOW"
	if !d.Allowed {
		d.Decision = "DENY"
	}
	if d.Rule != "" {
		d.Policy = policyOfRule(d.Rule)
	}
	return d, nil
}

// policyOfRule turns ns[a]-policy[b]-rule[0] into a/b.
func policyOfRule(rule string) string {
	var ns, name string
	rest, ok := strings.CutPrefix(rule, "ns[")
	if !ok {
		return ""
	}
	ns, rest, _ = strings.Cut(rest, "]-policy[")
	name, _, _ = strings.Cut(rest, "]-rule[")
	return ns + "/" + name
}

type evaluator struct {
	req     Request
	regexps map[string]*regexp.Regexp
	// jwtIss and jwtSub are RequestPrincipal split against the issuers
	// the workload's jwt_authn providers accept (CompileOptions.JWTAuthn):
	// what jwt_authn's verified payload would hold.
	jwtIss, jwtSub string
}

// firstMatch returns the first matching policy name of r in sorted order.
func (e *evaluator) firstMatch(r *rbacconfig.RBAC) (string, bool, error) {
	for _, name := range sortedPolicyNames(r) {
		ok, err := e.policy(r.Policies[name])
		if err != nil {
			return "", false, err
		}
		if ok {
			return name, true, nil
		}
	}
	return "", false, nil
}

// policy matches when any permission and any principal match.
func (e *evaluator) policy(p *rbacconfig.Policy) (bool, error) {
	permOK := false
	for _, perm := range p.GetPermissions() {
		ok, err := e.permission(perm)
		if err != nil {
			return false, err
		}
		if ok {
			permOK = true
			break
		}
	}
	if !permOK {
		return false, nil
	}
	for _, pr := range p.GetPrincipals() {
		ok, err := e.principal(pr)
		if err != nil {
			return false, err
		}
		if ok {
			return true, nil
		}
	}
	return false, nil
}

func (e *evaluator) permission(p *rbacconfig.Permission) (bool, error) {
	switch r := p.GetRule().(type) {
	case *rbacconfig.Permission_Any:
		return r.Any, nil
	case *rbacconfig.Permission_AndRules:
		for _, sub := range r.AndRules.GetRules() {
			ok, err := e.permission(sub)
			if err != nil || !ok {
				return false, err
			}
		}
		return true, nil
	case *rbacconfig.Permission_OrRules:
		for _, sub := range r.OrRules.GetRules() {
			ok, err := e.permission(sub)
			if err != nil {
				return false, err
			}
			if ok {
				return true, nil
			}
		}
		return false, nil
	case *rbacconfig.Permission_NotRule:
		ok, err := e.permission(r.NotRule)
		return !ok, err
	case *rbacconfig.Permission_Header:
		return e.header(r.Header)
	case *rbacconfig.Permission_Metadata:
		// Dynamic metadata of other filters is not modelled: it never
		// matches, as in grpc-go.
		//lint:ignore SA1019 what Compile emits (grpc-go refuses sourced_metadata)
		return r.Metadata.GetInvert(), nil
	case *rbacconfig.Permission_UrlPath:
		path, _, _ := strings.Cut(e.req.Path, "?")
		return e.str(r.UrlPath.GetPath(), path, true)
	case *rbacconfig.Permission_DestinationPort:
		return e.req.Port == r.DestinationPort, nil
	case *rbacconfig.Permission_DestinationIp:
		return inCIDR(r.DestinationIp, e.req.DestinationIP), nil
	case *rbacconfig.Permission_RequestedServerName:
		return e.str(r.RequestedServerName, e.req.SNI, e.req.SNI != "")
	}
	return false, fmt.Errorf("policy: explain cannot evaluate permission %T", p.GetRule())
}

func (e *evaluator) principal(p *rbacconfig.Principal) (bool, error) {
	switch id := p.GetIdentifier().(type) {
	case *rbacconfig.Principal_Any:
		return id.Any, nil
	case *rbacconfig.Principal_AndIds:
		for _, sub := range id.AndIds.GetIds() {
			ok, err := e.principal(sub)
			if err != nil || !ok {
				return false, err
			}
		}
		return true, nil
	case *rbacconfig.Principal_OrIds:
		for _, sub := range id.OrIds.GetIds() {
			ok, err := e.principal(sub)
			if err != nil {
				return false, err
			}
			if ok {
				return true, nil
			}
		}
		return false, nil
	case *rbacconfig.Principal_NotId:
		ok, err := e.principal(id.NotId)
		return !ok, err
	case *rbacconfig.Principal_Authenticated_:
		// Envoy: no principal_name matches any authenticated peer; a
		// plaintext peer never matches.
		if e.req.Principal == "" {
			return false, nil
		}
		if id.Authenticated.GetPrincipalName() == nil {
			return true, nil
		}
		return e.str(id.Authenticated.PrincipalName, e.req.Principal, true)
	case *rbacconfig.Principal_DirectRemoteIp:
		return inCIDR(id.DirectRemoteIp, e.req.SourceIP), nil
	case *rbacconfig.Principal_RemoteIp:
		return inCIDR(id.RemoteIp, e.req.RemoteIP), nil
	case *rbacconfig.Principal_Metadata:
		m := id.Metadata //lint:ignore SA1019 what Compile emits (grpc-go refuses sourced_metadata)
		if m.GetFilter() == "istio_authn" && len(m.GetPath()) == 1 && m.GetPath()[0].GetKey() == "request.auth.principal" {
			sm := m.GetValue().GetStringMatch()
			ok, err := e.str(sm, e.req.RequestPrincipal, e.req.RequestPrincipal != "")
			return ok != m.GetInvert(), err
		}
		if path := m.GetPath(); m.GetFilter() == JWTAuthnFilterName && len(path) == 2 && path[0].GetKey() == JWTPayloadMetadataKey {
			v := map[string]string{"iss": e.jwtIss, "sub": e.jwtSub}[path[1].GetKey()]
			if sm := m.GetValue().GetStringMatch(); sm != nil && (path[1].GetKey() == "iss" || path[1].GetKey() == "sub") {
				ok, err := e.str(sm, v, v != "")
				return ok != m.GetInvert(), err
			}
		}
		// Other metadata (claims, audiences) is not modelled: it never
		// matches, as in grpc-go.
		return m.GetInvert(), nil
	}
	return false, fmt.Errorf("policy: explain cannot evaluate principal %T", p.GetIdentifier())
}

func (e *evaluator) header(h *routev3.HeaderMatcher) (bool, error) {
	v, present := e.headerValue(h.GetName())
	var ok bool
	var err error
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routev3.HeaderMatcher_PresentMatch:
		ok = present == s.PresentMatch
	case *routev3.HeaderMatcher_StringMatch:
		ok, err = e.str(s.StringMatch, v, present)
	default:
		return false, fmt.Errorf("policy: explain cannot evaluate header matcher %T", s)
	}
	if h.GetInvertMatch() {
		ok = !ok
	}
	return ok, err
}

func (e *evaluator) headerValue(name string) (string, bool) {
	switch name {
	case ":method":
		return e.req.Method, e.req.Method != ""
	case ":path":
		return e.req.Path, e.req.Path != ""
	case ":authority":
		return e.req.Host, e.req.Host != ""
	}
	for k, v := range e.req.Headers {
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

// str applies a StringMatcher; an absent value never matches.
func (e *evaluator) str(m *matcherv3.StringMatcher, v string, present bool) (bool, error) {
	if !present || m == nil {
		return false, nil
	}
	cmp, vv := func(s string) string { return s }, v
	if m.GetIgnoreCase() {
		cmp = strings.ToLower
		vv = strings.ToLower(v)
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return vv == cmp(p.Exact), nil
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(vv, cmp(p.Prefix)), nil
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(vv, cmp(p.Suffix)), nil
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(vv, cmp(p.Contains)), nil
	case *matcherv3.StringMatcher_SafeRegex:
		re, ok := e.regexps[p.SafeRegex.GetRegex()]
		if !ok {
			var err error
			// Envoy's safe_regex is RE2 with full-string match.
			re, err = regexp.Compile(`^(?:` + p.SafeRegex.GetRegex() + `)$`)
			if err != nil {
				return false, fmt.Errorf("policy: %w", err)
			}
			e.regexps[p.SafeRegex.GetRegex()] = re
		}
		return re.MatchString(v), nil
	}
	return false, fmt.Errorf("policy: explain cannot evaluate string matcher %T", m.GetMatchPattern())
}

func inCIDR(r *corev3.CidrRange, ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	a, err := netip.ParseAddr(r.GetAddressPrefix())
	if err != nil {
		return false
	}
	p := netip.PrefixFrom(a, int(r.GetPrefixLen().GetValue()))
	return p.Contains(ip.Unmap())
}
