package policy

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtauthnv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
)

// JWT authentication for Envoy data planes: the RequestAuthentications of
// a workload become one envoy.filters.http.jwt_authn filter, placed
// before the RBAC filters, and (with CompileOptions.JWTAuthn) the RBAC
// reads the verified payload that filter writes into its dynamic
// metadata instead of Istio's istio_authn.
const (
	// JWTAuthnFilterName is the jwt_authn filter's name and the dynamic
	// metadata namespace it writes.
	JWTAuthnFilterName = "envoy.filters.http.jwt_authn"
	// JWTPayloadMetadataKey is where every provider stores the verified
	// payload (payload_in_metadata).
	JWTPayloadMetadataKey = "payload"
)

// JWKSRemote is a jwksUri a provider fetches from, and the cluster the
// data plane reaches it through.
type JWKSRemote struct {
	// Cluster is the Envoy cluster name (JWKSClusterName).
	Cluster string
	// Host and Port address the JWKS server; TLS is true for https.
	Host string
	Port uint32
	TLS  bool
}

// JWKSClusterName names the cluster of a jwksUri: kordon-jwks|host|port.
func JWKSClusterName(host string, port uint32) string {
	return fmt.Sprintf("kordon-jwks|%s|%d", host, port)
}

// ParseJWKSURI is the one check of a RequestAuthentication jwksUri: `policy
// check` (validateRequestAuthentication), the jwt_authn compiler and the
// control plane's JWKS fetcher all call it, so a URI one accepts the others
// accept. It is Istio's ParseJwksURI (istio/istio pkg/config/security/
// security.go, called from validateJwtRule in pkg/config/validation/
// validation.go for ValidateRequestAuthentication): url.Parse must succeed,
// the scheme must be http (port 80 by default) or https (443), an explicit
// port must be a number. kordon is stricter in two places, each where
// Istio's own output would fail later:
//   - a host is required. Istio accepts "http://:8080/x" (an empty
//     Hostname), and Go's HTTP client, istiod's and kordon's, dials an
//     empty host as the local machine: the control plane would fetch keys
//     from its own loopback port, which a policy author must not be able
//     to point it at.
//   - the port must be 1-65535. Istio's strconv.Atoi takes 99999, which
//     Envoy's SocketAddress validation then refuses (NACK).
func ParseJWKSURI(raw string) (JWKSRemote, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return JWKSRemote{}, fmt.Errorf("invalid jwksUri %q: %w", raw, errors.Unwrap(err))
	}
	r := JWKSRemote{Host: u.Hostname()}
	switch u.Scheme {
	case "http":
		r.Port = 80
	case "https":
		r.Port, r.TLS = 443, true
	default:
		return JWKSRemote{}, fmt.Errorf("invalid jwksUri %q: URI scheme %q is not supported (want http or https)", raw, u.Scheme)
	}
	if r.Host == "" {
		return JWKSRemote{}, fmt.Errorf("invalid jwksUri %q: no host", raw)
	}
	if p := u.Port(); p != "" {
		n, err := parsePort(p)
		if err != nil {
			return JWKSRemote{}, fmt.Errorf("invalid jwksUri %q: %w", raw, err)
		}
		r.Port = n
	}
	r.Cluster = JWKSClusterName(r.Host, r.Port)
	return r, nil
}

// JWTAuthn is the jwt_authn configuration of one workload.
type JWTAuthn struct {
	// Config is the filter's configuration (nil when no
	// RequestAuthentication applies).
	Config *jwtauthnv3.JwtAuthentication
	// Remotes are the JWKS servers its providers fetch from, sorted by
	// cluster name: the data plane needs a cluster for each.
	Remotes []JWKSRemote
	// Issuers are the issuers its providers accept, sorted.
	Issuers []string
}

// CompileJWTAuthn builds the jwt_authn filter configuration for target
// from the RequestAuthentications of set that apply to it, as istiod
// (pilot/pkg/security/authn: one provider per jwtRule; requests without a
// token pass to authorization, requests with an invalid token are
// rejected: requires_any of the providers and allow_missing).
func CompileJWTAuthn(set *Set, target Target, opts CompileOptions) (*JWTAuthn, error) {
	opts = opts.withDefaults()
	ras := set.RequestAuthenticationsFor(target.Namespace, target.Labels, opts.RootNamespace)
	out := &JWTAuthn{}
	if len(ras) == 0 {
		return out, nil
	}
	cfg := &jwtauthnv3.JwtAuthentication{Providers: map[string]*jwtauthnv3.JwtProvider{}}
	remotes := map[string]JWKSRemote{}
	issuers := map[string]bool{}
	var names []string
	for _, ra := range ras {
		for i, r := range ra.Spec.JWTRules {
			name := fmt.Sprintf("%s/%s[%d]", ra.Metadata.Namespace, ra.Metadata.Name, i)
			p := &jwtauthnv3.JwtProvider{
				Issuer:               r.Issuer,
				Audiences:            r.Audiences,
				Forward:              r.ForwardOriginalToken,
				FromParams:           r.FromParams,
				FromCookies:          r.FromCookies,
				ForwardPayloadHeader: r.OutputPayloadToHeader,
				PayloadInMetadata:    JWTPayloadMetadataKey,
			}
			for _, h := range r.FromHeaders {
				p.FromHeaders = append(p.FromHeaders, &jwtauthnv3.JwtHeader{Name: h.Name, ValuePrefix: h.Prefix})
			}
			for _, c := range r.OutputClaimToHeaders {
				p.ClaimToHeaders = append(p.ClaimToHeaders, &jwtauthnv3.JwtClaimToHeader{HeaderName: c.Header, ClaimName: c.Claim})
			}
			var fetched string
			if r.JWKS == "" && r.JWKSURI != "" {
				fetched = resolved(opts.JWKS, r.JWKSURI)
			}
			switch {
			case r.JWKS != "":
				p.JwksSourceSpecifier = localJWKS(r.JWKS)
			case fetched != "":
				p.JwksSourceSpecifier = localJWKS(fetched)
			case r.JWKSURI != "":
				remote, err := ParseJWKSURI(r.JWKSURI)
				if err != nil {
					return nil, fmt.Errorf("policy: %s: %w", name, err)
				}
				remotes[remote.Cluster] = remote
				timeout := 5 * time.Second
				if r.Timeout != "" {
					if d, err := time.ParseDuration(r.Timeout); err == nil {
						timeout = d
					}
				}
				p.JwksSourceSpecifier = &jwtauthnv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtauthnv3.RemoteJwks{
					HttpUri: &corev3.HttpUri{
						Uri:              r.JWKSURI,
						HttpUpstreamType: &corev3.HttpUri_Cluster{Cluster: remote.Cluster},
						Timeout:          durationpb.New(timeout),
					},
					CacheDuration: durationpb.New(5 * time.Minute),
				}}
			default:
				// Neither JWKS nor jwksUri: istiod resolves the issuer's
				// OpenID discovery document. kordon does not: a token of
				// this issuer cannot be verified and is rejected.
				p.JwksSourceSpecifier = localJWKS(`{"keys":[]}`)
			}
			if r.Issuer != "" {
				issuers[r.Issuer] = true
			}
			cfg.Providers[name] = p
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return out, nil
	}
	sort.Strings(names)
	var any []*jwtauthnv3.JwtRequirement
	for _, n := range names {
		any = append(any, &jwtauthnv3.JwtRequirement{RequiresType: &jwtauthnv3.JwtRequirement_ProviderName{ProviderName: n}})
	}
	any = append(any, &jwtauthnv3.JwtRequirement{RequiresType: &jwtauthnv3.JwtRequirement_AllowMissing{AllowMissing: &emptypb.Empty{}}})
	cfg.Rules = []*jwtauthnv3.RequirementRule{{
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		RequirementType: &jwtauthnv3.RequirementRule_Requires{Requires: &jwtauthnv3.JwtRequirement{
			RequiresType: &jwtauthnv3.JwtRequirement_RequiresAny{RequiresAny: &jwtauthnv3.JwtRequirementOrList{Requirements: any}},
		}},
	}}
	if err := cfg.ValidateAll(); err != nil {
		return nil, fmt.Errorf("policy: compiled jwt_authn is invalid: %w", err)
	}
	out.Config = cfg
	for _, r := range remotes {
		out.Remotes = append(out.Remotes, r)
	}
	sort.Slice(out.Remotes, func(i, j int) bool { return out.Remotes[i].Cluster < out.Remotes[j].Cluster })
	for i := range issuers {
		out.Issuers = append(out.Issuers, i)
	}
	sort.Strings(out.Issuers)
	return out, nil
}

// localJWKS is a provider key source holding jwks inline.
func localJWKS(jwks string) *jwtauthnv3.JwtProvider_LocalJwks {
	return &jwtauthnv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: jwks}}}
}

// resolved is the key set f resolves uri to ("" when f is nil or has
// none).
func resolved(f func(string) (string, bool), uri string) string {
	if f == nil {
		return ""
	}
	s, ok := f(uri)
	if !ok {
		return ""
	}
	return s
}

// HTTPFilter wraps the configuration as an HttpConnectionManager filter
// (nil when there is none).
func (j *JWTAuthn) HTTPFilter() (*hcmv3.HttpFilter, error) {
	if j == nil || j.Config == nil {
		return nil, nil
	}
	a, err := anypb.New(j.Config)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return &hcmv3.HttpFilter{Name: JWTAuthnFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}, nil
}

// RemoteAddr is host:port of r.
func (r JWKSRemote) RemoteAddr() string { return net.JoinHostPort(r.Host, fmt.Sprint(r.Port)) }

// jwtPayload matches path (claim names) of the payload jwt_authn verified.
func jwtPayload(value *matcherv3.ValueMatcher, path ...string) *rbacconfig.Principal {
	m := metadataMatcher(JWTAuthnFilterName, value, append([]string{JWTPayloadMetadataKey}, path...)...)
	//lint:ignore SA1019 sourced_metadata replaces it, but grpc-go NACKs sourced_metadata (notes/real-xds-data-plane.md)
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_Metadata{Metadata: m}}
}

func stringValue(m *matcherv3.StringMatcher) *matcherv3.ValueMatcher {
	return &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: m}}
}

// claimValue matches a claim that is a string, or a list with an element,
// matching v (jwt_authn stores the payload as it is; istio_authn stores
// every claim as a list).
func claimValue(v string) *matcherv3.ValueMatcher {
	s := stringValue(stringMatch(v, false))
	list := listOneOf(stringValue(stringMatch(v, false)))
	return &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_OrMatch{OrMatch: &matcherv3.OrMatcher{ValueMatchers: []*matcherv3.ValueMatcher{s, list}}}}
}

// jwtPrincipal matches Istio's request principal "iss/sub" against the
// payload jwt_authn verified. An issuer may itself contain '/', so the
// value is split against each issuer the workload's providers accept: it
// matches when iss is that issuer and iss + "/" + sub matches v. A value
// no accepted issuer can produce matches nothing.
func jwtPrincipal(issuers []string, v string) *rbacconfig.Principal {
	var ors []*rbacconfig.Principal
	for _, iss := range issuers {
		sub := subMatcher(iss+"/", v)
		if sub == nil {
			continue
		}
		ors = append(ors, andIDs([]*rbacconfig.Principal{
			jwtPayload(stringValue(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: iss}}), "iss"),
			jwtPayload(stringValue(sub), "sub"),
		}))
	}
	if len(ors) == 0 {
		return notID(&rbacconfig.Principal{Identifier: &rbacconfig.Principal_Any{Any: true}})
	}
	return orIDs(ors)
}

// subMatcher turns a match of Istio value v on prefix+sub into a match on
// sub (nil: no sub matches).
func subMatcher(prefix, v string) *matcherv3.StringMatcher {
	nonEmpty := &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".+"}}}
	switch {
	case v == "*":
		return nonEmpty
	case strings.HasSuffix(v, "*"):
		p := strings.TrimSuffix(v, "*")
		if rest, ok := strings.CutPrefix(p, prefix); ok {
			if rest == "" {
				return nonEmpty
			}
			return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: rest}}
		}
		if strings.HasPrefix(prefix, p) {
			return nonEmpty
		}
		return nil
	case strings.HasPrefix(v, "*"):
		// prefix+sub ends with s: s is a suffix of sub, or it reaches into
		// prefix and sub is the rest of s.
		s := strings.TrimPrefix(v, "*")
		res := []string{".*" + regexp.QuoteMeta(s)}
		for k := 1; k <= len(s); k++ {
			if strings.HasSuffix(prefix, s[:k]) && k < len(s) {
				res = append(res, regexp.QuoteMeta(s[k:]))
			}
		}
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "(" + strings.Join(res, "|") + ")"}}}
	}
	if rest, ok := strings.CutPrefix(v, prefix); ok && rest != "" {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: rest}}
	}
	return nil
}
