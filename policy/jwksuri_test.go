package policy

import (
	"fmt"
	"testing"
)

// TestJWKSURIOneCheck: `policy check` (validation) and the jwt_authn
// compiler accept exactly the same jwksUris, because both call
// ParseJWKSURI. The expectations follow Istio's ParseJwksURI
// (istio/istio pkg/config/security/security.go, used by validateJwtRule in
// pkg/config/validation/validation.go): http or https, a numeric port,
// default ports 80 and 443; kordon additionally requires a host and a port
// in 1-65535 (see ParseJWKSURI for why).
func TestJWKSURIOneCheck(t *testing.T) {
	t.Parallel()
	cases := []struct {
		uri     string
		cluster string // "" when rejected
		err     string
	}{
		{uri: "https://issuer.example/jwks.json", cluster: "kordon-jwks|issuer.example|443"},
		{uri: "http://issuer.example/jwks.json", cluster: "kordon-jwks|issuer.example|80"},
		{uri: "HTTPS://Issuer.example:8443/k", cluster: "kordon-jwks|Issuer.example|8443"}, // url.Parse lowers the scheme, as in Istio
		{uri: "https://[2001:db8::1]:8443/k", cluster: "kordon-jwks|2001:db8::1|8443"},
		{uri: "http://:8080/x", err: `invalid jwksUri "http://:8080/x": no host`}, // Istio accepts it; its fetch would dial the local machine
		{uri: "https:///jwks", err: `invalid jwksUri "https:///jwks": no host`},
		{uri: "ftp://issuer.example/k", err: `invalid jwksUri "ftp://issuer.example/k": URI scheme "ftp" is not supported (want http or https)`},
		{uri: "issuer.example/jwks", err: `invalid jwksUri "issuer.example/jwks": URI scheme "" is not supported (want http or https)`},
		{uri: "https://issuer.example:https/k", err: `invalid jwksUri "https://issuer.example:https/k": invalid port ":https" after host`},
		{uri: "https://issuer.example:99999/k", err: `invalid jwksUri "https://issuer.example:99999/k": invalid port "99999": must be a number from 1 to 65535`},
		{uri: "https://issuer.example:0/k", err: `invalid jwksUri "https://issuer.example:0/k": invalid port "0": must be a number from 1 to 65535`},
		{uri: "https://issuer .example/k", err: `invalid jwksUri "https://issuer .example/k": invalid character " " in host name`},
	}
	for _, tc := range cases {
		t.Run(tc.uri, func(t *testing.T) {
			t.Parallel()
			r, err := ParseJWKSURI(tc.uri)
			if got := fmt.Sprint(err); (err == nil) != (tc.err == "") || (err != nil && got != tc.err) {
				t.Fatalf("ParseJWKSURI: %v, want %q", err, tc.err)
			}
			if r.Cluster != tc.cluster {
				t.Fatalf("cluster %q, want %q", r.Cluster, tc.cluster)
			}
			// policy check
			doc := fmt.Sprintf("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: foo}\nspec:\n  jwtRules:\n  - issuer: i\n    jwksUri: %q\n", tc.uri)
			_, perr := Parse("r.yaml", []byte(doc), LoadOptions{})
			if (perr == nil) != (tc.err == "") {
				t.Fatalf("policy check: %v, want error %v", perr, tc.err != "")
			}
			if perr != nil && perr.Error() != "r.yaml:7:14: spec.jwtRules[0].jwksUri: "+tc.err {
				t.Fatalf("policy check: %v", perr)
			}
			// the compiler, given the object without validation
			set := &Set{RequestAuthentication: []*RequestAuthentication{{
				Metadata: ObjectMeta{Name: "r", Namespace: "foo"},
				Spec:     RequestAuthenticationSpec{JWTRules: []JWTRule{{Issuer: "i", JWKSURI: tc.uri}}},
			}}}
			j, cerr := CompileJWTAuthn(set, goldenTarget, CompileOptions{})
			if (cerr == nil) != (tc.err == "") {
				t.Fatalf("compiler: %v, want error %v", cerr, tc.err != "")
			}
			if cerr == nil && (len(j.Remotes) != 1 || j.Remotes[0].Cluster != tc.cluster) {
				t.Fatalf("compiler remotes %+v", j.Remotes)
			}
		})
	}
}
