package policy

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// validateAuthorizationPolicy checks an AuthorizationPolicy after decoding.
// Every error carries the position of the offending field. Validation is
// strict because the compiler must never widen access on input it does not
// understand (fail closed).
func validateAuthorizationPolicy(p *AuthorizationPolicy) ErrorList {
	errs := validateMeta(p.Metadata, p.Pos)
	pos := p.Pos
	spec := &p.Spec
	switch spec.Action {
	case "", ActionAllow, ActionDeny, ActionAudit:
	case ActionCustom:
		errs = append(errs, pos.Errorf("spec.action", "CUSTOM is not supported: kordon has no external authorizer; use ALLOW, DENY or AUDIT"))
	default:
		errs = append(errs, pos.Errorf("spec.action", "unknown action %q (want ALLOW, DENY or AUDIT)", spec.Action))
	}
	if v, ok := p.Metadata.Annotations[DryRunAnnotation]; ok {
		// As Istio's pkg/config/validation checkDryRunAnnotation: only
		// ALLOW and DENY can be dry-run, and the value must be a boolean.
		field := "metadata.annotations[" + DryRunAnnotation + "]"
		switch spec.Action {
		case "", ActionAllow, ActionDeny:
			if _, err := strconv.ParseBool(v); err != nil {
				errs = append(errs, pos.Errorf(field, "invalid value %q: want \"true\" or \"false\"", v))
			}
		default:
			errs = append(errs, pos.Errorf(field, "%s supports only actions ALLOW and DENY, not %s", DryRunAnnotation, spec.Action))
		}
	}
	if spec.Provider != nil && spec.Action != ActionCustom {
		errs = append(errs, pos.Errorf("spec.provider", "provider is only valid with action CUSTOM, which is not supported"))
	}
	if spec.Selector != nil {
		if len(spec.Selector.MatchLabels) == 0 {
			errs = append(errs, pos.Errorf("spec.selector.matchLabels", "must not be empty when selector is set (omit selector to select every workload in the namespace)"))
		}
		for k, v := range spec.Selector.MatchLabels {
			if k == "" {
				errs = append(errs, pos.Errorf("spec.selector.matchLabels", "label key must not be empty"))
			}
			if strings.Contains(v, "*") {
				errs = append(errs, pos.Errorf("spec.selector.matchLabels["+k+"]", "wildcards are not supported in label values"))
			}
		}
	}
	if spec.TargetRef != nil || len(spec.TargetRefs) > 0 {
		field := "spec.targetRef"
		if spec.TargetRef == nil {
			field = "spec.targetRefs"
		}
		if spec.Selector != nil {
			errs = append(errs, pos.Errorf(field, "selector and targetRef are mutually exclusive"))
		} else {
			errs = append(errs, pos.Errorf(field, "targetRef (Gateway API attachment) is not supported; use selector"))
		}
	}
	for i, r := range spec.Rules {
		errs = append(errs, validateRule(pos, fmt.Sprintf("spec.rules[%d]", i), &r)...)
	}
	return errs
}

func validateRule(pos *Positions, path string, r *Rule) ErrorList {
	var errs ErrorList
	for i, f := range r.From {
		fp := fmt.Sprintf("%s.from[%d]", path, i)
		if f.Source == nil {
			errs = append(errs, pos.Errorf(fp, "source is required"))
			continue
		}
		errs = append(errs, validateSource(pos, fp+".source", f.Source)...)
	}
	for i, t := range r.To {
		tp := fmt.Sprintf("%s.to[%d]", path, i)
		if t.Operation == nil {
			errs = append(errs, pos.Errorf(tp, "operation is required"))
			continue
		}
		errs = append(errs, validateOperation(pos, tp+".operation", t.Operation)...)
	}
	for i, c := range r.When {
		errs = append(errs, validateCondition(pos, fmt.Sprintf("%s.when[%d]", path, i), &c)...)
	}
	return errs
}

// listField is one list-valued field of a source or operation.
type listField struct {
	name  string
	vals  []string
	check func(string) string
}

// checkFields validates each field's values and requires at least one
// field to be set (an empty source or operation is an error in Istio).
func checkFields(pos *Positions, path string, fields []listField) ErrorList {
	var errs ErrorList
	set := 0
	for _, f := range fields {
		if len(f.vals) > 0 {
			set++
		}
		errs = append(errs, checkValues(pos, path+"."+f.name, f.vals, f.check)...)
	}
	if set == 0 {
		errs = append(errs, pos.Errorf(path, "at least one field must be set"))
	}
	return errs
}

func validateSource(pos *Positions, path string, s *Source) ErrorList {
	errs := checkFields(pos, path, []listField{
		{"principals", s.Principals, checkWildcard},
		{"notPrincipals", s.NotPrincipals, checkWildcard},
		{"requestPrincipals", s.RequestPrincipals, checkWildcard},
		{"notRequestPrincipals", s.NotRequestPrincipals, checkWildcard},
		{"namespaces", s.Namespaces, checkWildcard},
		{"notNamespaces", s.NotNamespaces, checkWildcard},
		{"serviceAccounts", s.ServiceAccounts, checkServiceAccount},
		{"notServiceAccounts", s.NotServiceAccounts, checkServiceAccount},
		{"ipBlocks", s.IPBlocks, checkCIDR},
		{"notIpBlocks", s.NotIPBlocks, checkCIDR},
		{"remoteIpBlocks", s.RemoteIPBlocks, checkCIDR},
		{"notRemoteIpBlocks", s.NotRemoteIPBlocks, checkCIDR},
		{"trustDomains", s.TrustDomains, checkTrustDomain},
		{"notTrustDomains", s.NotTrustDomains, checkTrustDomain},
	})
	if (len(s.ServiceAccounts) > 0 || len(s.NotServiceAccounts) > 0) && (len(s.Principals) > 0 || len(s.NotPrincipals) > 0 || len(s.Namespaces) > 0 || len(s.NotNamespaces) > 0) {
		errs = append(errs, pos.Errorf(path+".serviceAccounts", "serviceAccounts cannot be combined with principals or namespaces"))
	}
	return errs
}

func validateOperation(pos *Positions, path string, o *Operation) ErrorList {
	return checkFields(pos, path, []listField{
		{"hosts", o.Hosts, checkWildcard},
		{"notHosts", o.NotHosts, checkWildcard},
		{"ports", o.Ports, checkPort},
		{"notPorts", o.NotPorts, checkPort},
		{"methods", o.Methods, checkMethod},
		{"notMethods", o.NotMethods, checkMethod},
		{"paths", o.Paths, checkPath},
		{"notPaths", o.NotPaths, checkPath},
	})
}

func checkValues(pos *Positions, path string, vals []string, check func(string) string) ErrorList {
	var errs ErrorList
	for i, v := range vals {
		if msg := check(v); msg != "" {
			errs = append(errs, pos.Errorf(fmt.Sprintf("%s[%d]", path, i), "%s", msg))
		}
	}
	return errs
}

// checkWildcard accepts Istio's string match forms: exact, prefix "abc*",
// suffix "*abc" and presence "*". A "*" anywhere else would silently become
// a literal in Envoy, so it is rejected.
func checkWildcard(v string) string {
	if v == "" {
		return "empty value"
	}
	if v == "*" {
		return ""
	}
	inner := v
	if strings.HasPrefix(inner, "*") {
		inner = inner[1:]
	} else if strings.HasSuffix(inner, "*") {
		inner = inner[:len(inner)-1]
	}
	if strings.Contains(inner, "*") {
		return fmt.Sprintf("invalid wildcard %q: '*' is allowed only alone, as a prefix or as a suffix", v)
	}
	return ""
}

func checkServiceAccount(v string) string {
	if msg := checkWildcard(v); msg != "" {
		return msg
	}
	if strings.Contains(v, "*") {
		return fmt.Sprintf("invalid service account %q: wildcards are not supported", v)
	}
	ns, name, ok := strings.Cut(v, "/")
	if !ok {
		name = ns
	} else if dns1123Label(ns) != "" {
		return fmt.Sprintf("invalid service account %q: namespace must be a DNS-1123 label", v)
	}
	if dns1123Subdomain(name) != "" {
		return fmt.Sprintf("invalid service account %q: name must be a DNS-1123 subdomain", v)
	}
	return ""
}

func checkCIDR(v string) string {
	if _, err := parseCIDR(v); err != nil {
		return err.Error()
	}
	return ""
}

// parseCIDR accepts "10.0.0.0/8" or a bare address ("10.1.2.3" = /32).
func parseCIDR(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", v)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("invalid IP address or CIDR %q", v)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func checkPort(v string) string {
	if _, err := parsePort(v); err != nil {
		return err.Error()
	}
	return ""
}

func parsePort(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("invalid port %q: must be a number from 1 to 65535", v)
	}
	return uint32(n), nil
}

func checkMethod(v string) string {
	if v == "" {
		return "empty value"
	}
	if msg := checkWildcard(v); msg != "" {
		return msg
	}
	return ""
}

// checkPath accepts Istio's path values: exact, prefix, suffix, presence,
// and path templates ({*} one segment, {**} any number, last). A path that
// does not start with '/' is accepted as Istio accepts it (it matches no
// request); PathWarnings reports it.
func checkPath(v string) string {
	if strings.ContainsAny(v, "{}") {
		return checkPathTemplate(v)
	}
	return checkWildcard(v)
}

// Path template operators, Istio's (pkg/config/security/security.go
// MatchOneTemplate, MatchAnyTemplate).
const (
	matchOneTemplate = "{*}"
	matchAnyTemplate = "{**}"
)

// pathLiteral is a valid path segment literal: RFC 3986 pchar, as Istio's
// validLiteral (pkg/config/security/security.go) and Envoy's uri_template.
var pathLiteral = regexp.MustCompile(`^[a-zA-Z0-9\-._~%!$&'()+,;:@=]+$`)

// checkPathTemplate is Istio's CheckValidPathTemplate
// (pkg/config/security/security.go): segments are {*}, {**} (no operator
// after it) or pchar literals; '{' or '}' anywhere else is an error.
func checkPathTemplate(v string) string {
	foundAny := false
	for _, glob := range strings.Split(strings.Trim(v, "/"), "/") {
		switch {
		case glob == matchOneTemplate && !foundAny:
			continue
		case glob == matchAnyTemplate && !foundAny:
			foundAny = true
			continue
		case glob == matchOneTemplate || glob == matchAnyTemplate:
			return fmt.Sprintf("invalid path template %q: {**} must be the last operator", v)
		case strings.ContainsAny(glob, "{}"):
			return fmt.Sprintf("invalid path template %q: '{' or '}' outside {*} or {**}", v)
		case !pathLiteral.MatchString(glob):
			return fmt.Sprintf("invalid path template %q: segment %q is not a valid path literal", v, glob)
		}
	}
	return ""
}

// checkTrustDomain is Istio's CheckTrustDomainValues: a wildcard value
// without '/'.
func checkTrustDomain(v string) string {
	if msg := checkWildcard(v); msg != "" {
		return msg
	}
	if strings.Contains(v, "/") {
		return fmt.Sprintf("invalid trust domain %q: must not contain '/'", v)
	}
	return ""
}

// PathWarnings returns a warning for each path of p that does not start
// with '/': Istio accepts such a path and it matches no request (a request
// path always starts with '/'), so in paths it never matches and in
// notPaths it always does. It is almost always a typo.
func PathWarnings(p *AuthorizationPolicy) ErrorList {
	var ws ErrorList
	for i, r := range p.Spec.Rules {
		for j, t := range r.To {
			if t.Operation == nil {
				continue
			}
			for _, f := range []struct {
				name string
				vals []string
			}{{"paths", t.Operation.Paths}, {"notPaths", t.Operation.NotPaths}} {
				for k, v := range f.vals {
					if v == "*" || strings.HasPrefix(v, "/") || strings.HasPrefix(v, "*") {
						continue
					}
					field := fmt.Sprintf("spec.rules[%d].to[%d].operation.%s[%d]", i, j, f.name, k)
					effect := "this value matches no request"
					if f.name == "notPaths" {
						effect = "this value matches every request"
					}
					ws = append(ws, p.Pos.Errorf(field, "path %q does not start with '/': %s (as in Istio)", v, effect))
				}
			}
		}
	}
	return ws
}

// conditionKind tells where a `when` key is evaluated.
type conditionKind int

const (
	condPrincipal  conditionKind = iota // source side: compiled into principals
	condPermission                      // request side: compiled into permissions
)

// whenKey describes a supported `when` key.
type whenKey struct {
	kind conditionKind
	// httpOnly keys need an HTTP request; TCP contexts cannot evaluate them.
	httpOnly bool
	// metadata keys are read from another filter's dynamic metadata (see
	// CompileOptions.DynamicMetadata); jwt ones from a verified JWT (see
	// CompileOptions.JWTAuthn).
	metadata, jwt bool
	// check validates one value.
	check func(string) string
}

// lookupWhenKey returns the description of key, Istio's list of keys.
func lookupWhenKey(key string) (whenKey, string, bool) {
	if h, ok := bracketArg(key, "request.headers"); ok {
		if h == "" {
			return whenKey{}, "", false
		}
		return whenKey{kind: condPermission, httpOnly: true, check: checkWildcard}, h, true
	}
	if c, ok := bracketArg(key, "request.auth.claims"); ok {
		if c == "" {
			return whenKey{}, "", false
		}
		return whenKey{kind: condPrincipal, httpOnly: true, metadata: true, jwt: true, check: checkWildcard}, c, true
	}
	if filter, mk, ok := envoyFilterKey(key); ok {
		if filter == "" || mk == "" {
			return whenKey{}, "", false
		}
		return whenKey{kind: condPermission, metadata: true, check: checkMetadataValue}, mk, true
	}
	switch key {
	case "source.trustDomain":
		return whenKey{kind: condPrincipal, check: checkTrustDomain}, "", true
	case "source.ip", "remote.ip":
		return whenKey{kind: condPrincipal, check: checkCIDR}, "", true
	case "source.namespace", "source.principal":
		return whenKey{kind: condPrincipal, check: checkWildcard}, "", true
	case "source.serviceAccount":
		return whenKey{kind: condPrincipal, check: checkServiceAccount}, "", true
	case "request.auth.principal", "request.auth.audiences", "request.auth.presenter":
		return whenKey{kind: condPrincipal, httpOnly: true, metadata: true, jwt: true, check: checkWildcard}, "", true
	case "destination.ip":
		return whenKey{kind: condPermission, check: checkCIDR}, "", true
	case "destination.port":
		return whenKey{kind: condPermission, check: checkPort}, "", true
	case "connection.sni":
		return whenKey{kind: condPermission, check: checkWildcard}, "", true
	}
	return whenKey{}, "", false
}

// envoyFilterPrefix starts Istio's experimental when keys that match an
// Envoy filter's dynamic metadata: experimental.envoy.filters.NAME[KEY]
// (pilot/pkg/security/authz/model/generator.go envoyFilterGenerator).
const envoyFilterPrefix = "experimental.envoy.filters."

// envoyFilterKey splits experimental.envoy.filters.a.b[c] into the filter
// name envoy.filters.a.b and the metadata key c.
func envoyFilterKey(key string) (filter, metadataKey string, ok bool) {
	rest, ok := strings.CutPrefix(key, envoyFilterPrefix)
	if !ok {
		return "", "", false
	}
	name, mk, found := strings.Cut(rest, "[")
	if !found || !strings.HasSuffix(mk, "]") {
		return "", "", true
	}
	return "envoy.filters." + name, strings.TrimSuffix(mk, "]"), true
}

// checkMetadataValue accepts a string match value or "[v]", a match of
// any element of a list, as istiod.
func checkMetadataValue(v string) string {
	if strings.HasPrefix(v, "[") && strings.HasSuffix(v, "]") {
		v = strings.Trim(v, "[]")
	}
	return checkWildcard(v)
}

// bracketArg parses "prefix[arg]".
func bracketArg(key, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(key, prefix+"[")
	if !ok || !strings.HasSuffix(rest, "]") {
		return "", false
	}
	return rest[:len(rest)-1], true
}

func validateCondition(pos *Positions, path string, c *Condition) ErrorList {
	var errs ErrorList
	if c.Key == "" {
		return ErrorList{pos.Errorf(path+".key", "required")}
	}
	wk, _, ok := lookupWhenKey(c.Key)
	if !ok {
		errs = append(errs, pos.Errorf(path+".key", "unknown key %q (supported: request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, source.serviceAccount, source.trustDomain, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, connection.sni, experimental.envoy.filters.NAME[KEY])", c.Key))
		return errs
	}
	if msg := checkWhenArg(c.Key); msg != "" {
		errs = append(errs, pos.Errorf(path+".key", "%s", msg))
	}
	if len(c.Values) == 0 && len(c.NotValues) == 0 {
		errs = append(errs, pos.Errorf(path, "values or notValues must be set"))
	}
	errs = append(errs, checkValues(pos, path+".values", c.Values, wk.check)...)
	errs = append(errs, checkValues(pos, path+".notValues", c.NotValues, wk.check)...)
	return errs
}

// checkWhenArg validates the bracketed argument of request.headers[NAME]
// and request.auth.claims[A][B]. Header names that the proxyless gRPC data
// plane refuses (grpc-*, :scheme) are rejected: a refused update would
// leave the previous policy in force. Names with NUL, CR or LF and empty
// claim path segments would make the compiled RBAC invalid.
func checkWhenArg(key string) string {
	if h, ok := bracketArg(key, "request.headers"); ok {
		lower := strings.ToLower(h)
		switch {
		case strings.ContainsAny(h, "\x00\r\n"):
			return fmt.Sprintf("invalid header name %q", h)
		case strings.HasPrefix(lower, "grpc-") || lower == ":scheme":
			return fmt.Sprintf("header %q cannot be matched: gRPC data planes reject RBAC header matchers on grpc-* and :scheme", h)
		}
		return ""
	}
	if c, ok := bracketArg(key, "request.auth.claims"); ok {
		for _, part := range strings.Split(c, "][") {
			if part == "" {
				return fmt.Sprintf("invalid claim path %q: empty claim name", c)
			}
		}
	}
	return ""
}
