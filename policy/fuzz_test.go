package policy

import (
	"os"
	"path/filepath"
	"testing"
)

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// FuzzParse: arbitrary input never panics; whatever parses compiles to
// ValidateAll-clean RBAC and can be explained.
func FuzzParse(f *testing.F) {
	ins, _ := filepath.Glob("testdata/*-in.yaml")
	for _, in := range ins {
		b, err := os.ReadFile(in)
		if err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("kind: AuthorizationPolicy\napiVersion: security.kordon.dev/v1\nmetadata: {name: x}\nspec: {rules: [{from: [{source: {principals: ['*']}}]}]}"))
	f.Add([]byte("- &a [*a]"))
	f.Add([]byte("kind: EgressPolicy\napiVersion: security.kordon.dev/v1\nmetadata: {name: x, namespace: n}\nspec: {allow: [a.example], deny: [b.a.example], allowCIDRs: [10.0.0.0/8, '2001:db8::/32'], ports: [{port: 443}, {protocol: UDP, port: 1000, endPort: 2000}]}"))
	f.Add([]byte("kind: EgressPolicy\napiVersion: security.kordon.dev/v1\nmetadata: {name: x, namespace: n}\nspec: {mode: Audit, allowCIDRs: [10.1.2.3/8], ports: [{endPort: 1}]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := Parse("fuzz.yaml", data, LoadOptions{})
		if err != nil {
			if set != nil {
				t.Fatal("error with a non-nil set")
			}
			if AsErrorList(err) == nil {
				t.Fatalf("parse error without positions: %v", err)
			}
			return
		}
		c, err := Compile(set, goldenTarget, CompileOptions{})
		if err != nil {
			t.Fatalf("valid input failed to compile: %v", err)
		}
		if _, err := c.FiltersJSON(); err != nil {
			t.Fatalf("valid input failed to render: %v", err)
		}
		for _, opts := range []CompileOptions{{JWTAuthn: true}, {DynamicMetadata: true}} {
			c, err := Compile(set, goldenTarget, opts)
			if err != nil {
				t.Fatalf("valid input failed to compile with %+v: %v", opts, err)
			}
			if _, err := c.FiltersJSON(); err != nil {
				t.Fatalf("valid input failed to render with %+v: %v", opts, err)
			}
		}
		if _, err := Explain(set, goldenTarget, Request{Method: "GET", Path: "/"}, CompileOptions{}); err != nil {
			t.Fatalf("explain: %v", err)
		}
		ix, err := CompileEgress(set, EgressOptions{})
		if err != nil {
			t.Fatalf("valid egress input failed to compile: %v", err)
		}
		for _, p := range set.Egress {
			var labels map[string]string
			if p.Spec.Selector != nil {
				labels = p.Spec.Selector.MatchLabels
			}
			we := ix.ForWorkload(p.Metadata.Namespace, labels)
			fw := we.Firewall()
			if (fw.Mode == FirewallOff) != (fw.Policy == "") {
				t.Fatalf("firewall %+v: mode and policy disagree", fw)
			}
			for _, v := range p.Spec.Allow {
				dp, err := ParseDomainPattern(v)
				if err != nil {
					t.Fatalf("validated pattern %q: %v", v, err)
				}
				name := dp.Domain
				if dp.Wildcard {
					name = "x." + name
				}
				if _, _, ok := we.NamePorts(name); ok && we.Decide(name).Verdict == EgressBlock {
					t.Fatalf("NamePorts ok for %s, which Decide blocks", name)
				}
			}
		}
	})
}
