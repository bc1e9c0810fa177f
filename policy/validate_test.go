package policy

import (
	"strings"
	"testing"
)

func TestValidationErrors(t *testing.T) {
	t.Parallel()
	head := "apiVersion: security.kordon.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\nspec:\n"
	cases := []struct {
		name string
		doc  string
		want []string
	}{
		{"unknown field with suggestion", head + "  rules:\n  - from:\n    - source:\n        principal: [a]\n",
			[]string{"t.yaml:10:9: spec.rules[0].from[0].source.principal: unknown field (did you mean \"principals\"?)"}},
		{"wrong type", head + "  rules:\n  - to:\n    - operation:\n        ports: 8080\n",
			[]string{"t.yaml:10:16: spec.rules[0].to[0].operation.ports: expected a list, got a number"}},
		{"custom not supported", head + "  action: CUSTOM\n  provider: {name: ext}\n",
			[]string{"t.yaml:7:11: spec.action: CUSTOM is not supported: kordon has no external authorizer; use ALLOW, DENY or AUDIT"}},
		{"unknown action", head + "  action: allow\n",
			[]string{"t.yaml:7:11: spec.action: unknown action \"allow\" (want ALLOW, DENY or AUDIT)"}},
		{"bad cidr", head + "  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0.0/33\", \"10.0.0.1\"]\n",
			[]string{"t.yaml:10:20: spec.rules[0].from[0].source.ipBlocks[0]: invalid CIDR \"10.0.0.0/33\""}},
		{"bad ip", head + "  rules:\n  - from:\n    - source:\n        notRemoteIpBlocks:\n        - nope\n",
			[]string{"t.yaml:11:11: spec.rules[0].from[0].source.notRemoteIpBlocks[0]: invalid IP address or CIDR \"nope\""}},
		{"bad port", head + "  rules:\n  - to:\n    - operation:\n        ports: [\"0\", \"65536\", \"http\"]\n",
			[]string{
				"t.yaml:10:17: spec.rules[0].to[0].operation.ports[0]: invalid port \"0\": must be a number from 1 to 65535",
				"t.yaml:10:22: spec.rules[0].to[0].operation.ports[1]: invalid port \"65536\": must be a number from 1 to 65535",
				"t.yaml:10:31: spec.rules[0].to[0].operation.ports[2]: invalid port \"http\": must be a number from 1 to 65535",
			}},
		{"mid wildcard", head + "  rules:\n  - to:\n    - operation:\n        paths: [\"/api/*/users\"]\n",
			[]string{"t.yaml:10:17: spec.rules[0].to[0].operation.paths[0]: invalid wildcard \"/api/*/users\": '*' is allowed only alone, as a prefix or as a suffix"}},
		{"wildcard both ends", head + "  rules:\n  - from:\n    - source:\n        principals: [\"*foo*\"]\n",
			[]string{"t.yaml:10:22: spec.rules[0].from[0].source.principals[0]: invalid wildcard \"*foo*\": '*' is allowed only alone, as a prefix or as a suffix"}},
		{"empty selector", head + "  selector:\n    matchLabels: {}\n",
			[]string{"t.yaml:8:18: spec.selector.matchLabels: must not be empty when selector is set (omit selector to select every workload in the namespace)"}},
		{"empty source", head + "  rules:\n  - from:\n    - source: {}\n",
			[]string{"t.yaml:9:15: spec.rules[0].from[0].source: at least one field must be set"}},
		{"missing operation", head + "  rules:\n  - to:\n    - {}\n",
			[]string{"t.yaml:9:7: spec.rules[0].to[0]: operation is required"}},
		{"unknown when key", head + "  rules:\n  - when:\n    - key: request.foo\n      values: [a]\n",
			[]string{"t.yaml:9:12: spec.rules[0].when[0].key: unknown key \"request.foo\""}},
		{"grpc header", head + "  rules:\n  - when:\n    - key: request.headers[GRPC-Timeout]\n      values: [1S]\n",
			[]string{"t.yaml:9:12: spec.rules[0].when[0].key: header \"GRPC-Timeout\" cannot be matched: gRPC data planes reject RBAC header matchers on grpc-* and :scheme"}},
		{"scheme header", head + "  rules:\n  - when:\n    - key: request.headers[:scheme]\n      values: [https]\n",
			[]string{"t.yaml:9:12: spec.rules[0].when[0].key: header \":scheme\" cannot be matched: gRPC data planes reject RBAC header matchers on grpc-* and :scheme"}},
		{"header name with newline", head + "  rules:\n  - when:\n    - key: \"request.headers[a\\nb]\"\n      values: [x]\n",
			[]string{"t.yaml:9:12: spec.rules[0].when[0].key: invalid header name \"a\\nb\""}},
		{"empty claim segment", head + "  rules:\n  - when:\n    - key: request.auth.claims[groups][]\n      values: [x]\n",
			[]string{"t.yaml:9:12: spec.rules[0].when[0].key: invalid claim path \"groups][\": empty claim name"}},
		{"when without values", head + "  rules:\n  - when:\n    - key: source.ip\n",
			[]string{"t.yaml:9:7: spec.rules[0].when[0]: values or notValues must be set"}},
		// Istio's pkg/config/security/security.go CheckValidPathTemplate.
		{"path template after {**}", head + "  rules:\n  - to:\n    - operation:\n        paths: [\"/a/{**}/{*}\"]\n",
			[]string{"t.yaml:10:17: spec.rules[0].to[0].operation.paths[0]: invalid path template \"/a/{**}/{*}\": {**} must be the last operator"}},
		{"path template inside a segment", head + "  rules:\n  - to:\n    - operation:\n        notPaths: [\"/a{*}\"]\n",
			[]string{"t.yaml:10:20: spec.rules[0].to[0].operation.notPaths[0]: invalid path template \"/a{*}\": '{' or '}' outside {*} or {**}"}},
		{"path template with a wildcard", head + "  rules:\n  - to:\n    - operation:\n        paths: [\"/a/{*}/b*\"]\n",
			[]string{"t.yaml:10:17: spec.rules[0].to[0].operation.paths[0]: invalid path template \"/a/{*}/b*\": segment \"b*\" is not a valid path literal"}},
		{"trust domain with a slash", head + "  rules:\n  - from:\n    - source:\n        trustDomains: [\"td/ns\"]\n",
			[]string{"t.yaml:10:24: spec.rules[0].from[0].source.trustDomains[0]: invalid trust domain \"td/ns\": must not contain '/'"}},
		{"experimental key without a metadata key", head + "  rules:\n  - when:\n    - key: experimental.envoy.filters.network.mysql_proxy\n      values: [a]\n",
			[]string{"t.yaml:9:12: spec.rules[0].when[0].key: unknown key \"experimental.envoy.filters.network.mysql_proxy\""}},
		{"dry-run not a boolean", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\n  annotations: {istio.io/dry-run: \"yes please\"}\nspec: {}\n",
			[]string{"t.yaml:6:35: metadata.annotations[istio.io/dry-run]: invalid value \"yes please\": want \"true\" or \"false\""}},
		{"dry-run AUDIT", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\n  annotations: {istio.io/dry-run: \"true\"}\nspec: {action: AUDIT, rules: [{}]}\n",
			[]string{"t.yaml:6:35: metadata.annotations[istio.io/dry-run]: istio.io/dry-run supports only actions ALLOW and DENY, not AUDIT"}},
		// Istio's pkg/config/validation/validation.go validateJwtRule.
		{"jwt rule without issuer", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: foo}\nspec:\n  jwtRules:\n  - audiences: [a]\n",
			[]string{"t.yaml:6:5: spec.jwtRules[0]: issuer or jwksUri must be set"}},
		{"jwt rule bad fields", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: foo}\nspec:\n  jwtRules:\n  - issuer: i\n    jwksUri: ftp://x\n    jwks: \"{}\"\n    fromHeaders: [{prefix: B}]\n    timeout: 0s\n",
			[]string{
				"t.yaml:7:14: spec.jwtRules[0].jwksUri: invalid jwksUri \"ftp://x\": URI scheme \"ftp\" is not supported (want http or https)",
				"t.yaml:8:11: spec.jwtRules[0].jwks: not a JSON Web Key Set (an object with \"keys\")",
				"t.yaml:9:19: spec.jwtRules[0].fromHeaders[0].name: required",
				"t.yaml:10:14: spec.jwtRules[0].timeout: invalid duration \"0s\": want at least 1ms (e.g. \"5s\")",
			}},
		{"jwt rule unknown field", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: foo}\nspec:\n  jwtRules:\n  - issuer: i\n    jwksURI: https://x\n",
			[]string{"t.yaml:7:5: spec.jwtRules[0].jwksURI: unknown field (did you mean \"jwksUri\"?)"}},
		{"targetRef unsupported", head + "  targetRef: {kind: Gateway, name: gw}\n",
			[]string{"t.yaml:7:14: spec.targetRef: targetRef (Gateway API attachment) is not supported; use selector"}},
		{"bad name", "apiVersion: security.kordon.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: Bad_Name\nspec: {}\n",
			[]string{"t.yaml:4:9: metadata.name: \"Bad_Name\" must be a lower case RFC 1123 subdomain"}},
		{"wrong api version", "apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: p}\n",
			[]string{"t.yaml:1:13: apiVersion: unsupported apiVersion \"security.istio.io/v2\" for AuthorizationPolicy (want security.kordon.dev/v1, security.istio.io/v1 or security.istio.io/v1beta1)"}},
		{"unknown kind", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: p}\n",
			[]string{"t.yaml:2:7: kind: unsupported kind \"ConfigMap\" (want AuthorizationPolicy, RequestAuthentication or EgressPolicy)"}},
		{"yaml syntax", "apiVersion: v1\nkind: [\n",
			[]string{"t.yaml:2:1: invalid YAML: did not find expected node content"}},
		{"second document bad rejects whole file", head + "  rules: [{}]\n---\n" + head + "  action: NOPE\n",
			[]string{"t.yaml:15:11: spec.action: unknown action \"NOPE\" (want ALLOW, DENY or AUDIT)"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			set, err := Parse("t.yaml", []byte(tc.doc), LoadOptions{})
			if err == nil {
				t.Fatalf("no error; set has %d policies", set.Len())
			}
			if set != nil {
				t.Fatal("a rejected file must not yield a partial set")
			}
			got := strings.Split(err.Error(), "\n")
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d:\n%s", len(got), len(tc.want), err)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.want[i]) {
					t.Errorf("error %d:\n got: %s\nwant: %s", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestDuplicatePolicyAcrossFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	doc := "apiVersion: security.kordon.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: foo\nspec: {}\n"
	writeFile(t, dir+"/a.yaml", doc)
	writeFile(t, dir+"/b.yaml", doc)
	_, err := LoadPaths(LoadOptions{}, dir)
	if err == nil || !strings.Contains(err.Error(), "b.yaml:4:9: metadata.name: duplicate AuthorizationPolicy foo/p (first defined at "+dir+"/a.yaml:4:9)") {
		t.Fatalf("got %v", err)
	}
}
