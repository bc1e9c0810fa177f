package policy

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// KindRequestAuthentication is Istio's JWT validation policy, accepted
// under security.istio.io/v1, v1beta1 and security.kordon.dev/v1.
const KindRequestAuthentication = "RequestAuthentication"

// RequestAuthentication mirrors istio.security.v1beta1.RequestAuthentication.
type RequestAuthentication struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta                `json:"metadata"`
	Spec     RequestAuthenticationSpec `json:"spec"`
	// Status is written by the controller; it is accepted and ignored on input.
	Status any `json:"status,omitempty"`

	// Pos records where each field came from.
	Pos *Positions `json:"-"`
}

// RequestAuthenticationSpec selects workloads and lists the JWT issuers
// they accept.
type RequestAuthenticationSpec struct {
	Selector   *WorkloadSelector `json:"selector,omitempty"`
	TargetRef  *PolicyTargetRef  `json:"targetRef,omitempty"`
	TargetRefs []PolicyTargetRef `json:"targetRefs,omitempty"`
	JWTRules   []JWTRule         `json:"jwtRules,omitempty"`
}

// JWTRule is Istio's JWTRule (security/v1beta1/request_authentication.proto):
// one issuer whose tokens the selected workloads accept.
type JWTRule struct {
	// Issuer is the token's iss claim this rule accepts.
	Issuer string `json:"issuer,omitempty"`
	// Audiences are the aud values accepted (any of them); empty accepts
	// any audience.
	Audiences []string `json:"audiences,omitempty"`
	// JWKSURI is where the issuer's keys are fetched (http or https, a
	// host required), by the control plane or by Envoy.
	JWKSURI string `json:"jwksUri,omitempty"`
	// JWKS is the issuer's key set inline (JSON); it wins over jwksUri.
	JWKS string `json:"jwks,omitempty"`
	// FromHeaders are the headers a token is read from (default
	// Authorization with prefix "Bearer ").
	FromHeaders []JWTHeader `json:"fromHeaders,omitempty"`
	// FromParams are query parameters a token is read from.
	FromParams []string `json:"fromParams,omitempty"`
	// FromCookies are cookies a token is read from.
	FromCookies []string `json:"fromCookies,omitempty"`
	// OutputPayloadToHeader names a header that receives the verified
	// payload (base64url JSON).
	OutputPayloadToHeader string `json:"outputPayloadToHeader,omitempty"`
	// ForwardOriginalToken keeps the token in the request forwarded
	// upstream.
	ForwardOriginalToken bool `json:"forwardOriginalToken,omitempty"`
	// OutputClaimToHeaders copy claims of a verified token into headers.
	OutputClaimToHeaders []ClaimToHeader `json:"outputClaimToHeaders,omitempty"`
	// Timeout bounds a jwksUri fetch by Envoy (default 5s).
	Timeout string `json:"timeout,omitempty"`
	// SpaceDelimitedClaims are claims whose string value is a
	// space-separated list. Accepted as Istio's field; kordon's compiler
	// does not split them yet (a claim matches as written).
	SpaceDelimitedClaims []string `json:"spaceDelimitedClaims,omitempty"`
}

// JWTHeader is a header a token is read from, with an optional prefix
// ("Bearer ").
type JWTHeader struct {
	Name   string `json:"name"`
	Prefix string `json:"prefix,omitempty"`
}

// ClaimToHeader copies a claim into a request header.
type ClaimToHeader struct {
	Header string `json:"header"`
	Claim  string `json:"claim"`
}

// validateRequestAuthentication is Istio's ValidateRequestAuthentication
// and validateJwtRule (pkg/config/validation/validation.go), with
// positions.
func validateRequestAuthentication(p *RequestAuthentication) ErrorList {
	errs := validateMeta(p.Metadata, p.Pos)
	pos, spec := p.Pos, &p.Spec
	if spec.Selector != nil && len(spec.Selector.MatchLabels) == 0 {
		errs = append(errs, pos.Errorf("spec.selector.matchLabels", "must not be empty when selector is set (omit selector to select every workload in the namespace)"))
	}
	if spec.TargetRef != nil || len(spec.TargetRefs) > 0 {
		field := "spec.targetRef"
		if spec.TargetRef == nil {
			field = "spec.targetRefs"
		}
		errs = append(errs, pos.Errorf(field, "targetRef (Gateway API attachment) is not supported; use selector"))
	}
	for i, r := range spec.JWTRules {
		path := fmt.Sprintf("spec.jwtRules[%d]", i)
		if r.Issuer == "" && r.JWKSURI == "" {
			errs = append(errs, pos.Errorf(path, "issuer or jwksUri must be set"))
		}
		for j, a := range r.Audiences {
			if a == "" {
				errs = append(errs, pos.Errorf(fmt.Sprintf("%s.audiences[%d]", path, j), "empty value"))
			}
		}
		if r.JWKSURI != "" {
			if _, err := ParseJWKSURI(r.JWKSURI); err != nil {
				errs = append(errs, pos.Errorf(path+".jwksUri", "%v", err))
			}
		}
		if r.JWKS != "" {
			if !IsJWKS([]byte(r.JWKS)) {
				errs = append(errs, pos.Errorf(path+".jwks", "not a JSON Web Key Set (an object with \"keys\")"))
			}
		}
		for j, h := range r.FromHeaders {
			if h.Name == "" {
				errs = append(errs, pos.Errorf(fmt.Sprintf("%s.fromHeaders[%d].name", path, j), "required"))
			}
		}
		for j, v := range r.FromParams {
			if v == "" {
				errs = append(errs, pos.Errorf(fmt.Sprintf("%s.fromParams[%d]", path, j), "empty value"))
			}
		}
		for j, v := range r.FromCookies {
			if v == "" {
				errs = append(errs, pos.Errorf(fmt.Sprintf("%s.fromCookies[%d]", path, j), "empty value"))
			}
		}
		for j, c := range r.OutputClaimToHeaders {
			f := fmt.Sprintf("%s.outputClaimToHeaders[%d]", path, j)
			switch {
			case c.Header == "" || c.Claim == "":
				errs = append(errs, pos.Errorf(f, "header and claim must be set"))
			case strings.ContainsAny(c.Header, " :\x00\r\n") || strings.ToLower(c.Header) != c.Header:
				errs = append(errs, pos.Errorf(f+".header", "invalid header name %q (lower case, no ':' or spaces)", c.Header))
			}
		}
		if r.Timeout != "" {
			if d, err := time.ParseDuration(r.Timeout); err != nil || d < time.Millisecond {
				errs = append(errs, pos.Errorf(path+".timeout", "invalid duration %q: want at least 1ms (e.g. \"5s\")", r.Timeout))
			}
		}
	}
	return errs
}

// IsJWKS reports whether b is a JSON Web Key Set: a JSON object with a
// "keys" array (the keys themselves are Envoy's to check).
func IsJWKS(b []byte) bool {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	return json.Unmarshal(b, &set) == nil && set.Keys != nil
}

// RequestAuthenticationsFor returns the RequestAuthentications that apply
// to a workload (its namespace's and the root namespace's whose selector
// matches), in the set's order.
func (s *Set) RequestAuthenticationsFor(namespace string, labels map[string]string, rootNamespace string) []*RequestAuthentication {
	var out []*RequestAuthentication
	for _, p := range s.RequestAuthentication {
		if appliesTo(p.Metadata, p.Spec.Selector, namespace, labels, rootNamespace) {
			out = append(out, p)
		}
	}
	return out
}

// JWKSURIs returns the jwksUris whose keys the set's RequestAuthentications
// need fetched (rules with a jwksUri and no inline jwks), sorted and
// without duplicates.
func (s *Set) JWKSURIs() []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range s.RequestAuthentication {
		for _, r := range p.Spec.JWTRules {
			if r.JWKSURI != "" && r.JWKS == "" && !seen[r.JWKSURI] {
				seen[r.JWKSURI] = true
				out = append(out, r.JWKSURI)
			}
		}
	}
	sort.Strings(out)
	return out
}

// requestAuthnNote is the compile note for a RequestAuthentication on a
// data plane that validates no JWT: Istio would reject a request whose
// token is invalid (401); here the token is not checked at all, and only
// the fail-closed treatment of JWT attributes in AuthorizationPolicies
// keeps unauthenticated requests out.
func requestAuthnNote(p *RequestAuthentication) string {
	return fmt.Sprintf("RequestAuthentication %s/%s selects this workload, but this data plane validates no JWT: tokens are not checked (Istio would reject an invalid one), and AuthorizationPolicy rules on JWT attributes fail closed",
		p.Metadata.Namespace, p.Metadata.Name)
}
