package policy

import (
	"strings"
	"testing"
)

func TestDomainPattern(t *testing.T) {
	t.Parallel()
	cases := []struct {
		pattern string
		err     string
		accept  []string
		reject  []string
	}{
		{pattern: "api.example.com", accept: []string{"api.example.com"}, reject: []string{"example.com", "x.api.example.com", "api.example.co"}},
		{pattern: "API.Example.COM.", accept: []string{"api.example.com"}},
		{pattern: "*.example.com", accept: []string{"a.example.com", "a.b.c.example.com", "_dmarc.example.com"}, reject: []string{"example.com", "badexample.com", "example.com.evil"}},
		{pattern: "**.example.com", accept: []string{"a.b.example.com"}, reject: []string{"example.com"}},
		{pattern: "bücher.example", accept: []string{"xn--bcher-kva.example"}, reject: []string{"bucher.example"}},
		{pattern: "*.münchen.de", accept: []string{"www.xn--mnchen-3ya.de"}},
		{pattern: "*", err: `invalid pattern "*": `},
		{pattern: "*.com", err: `invalid pattern "*.com": a wildcard must be below a domain with at least two labels, not a whole top-level domain`},
		{pattern: "api.*.com", err: `invalid pattern "api.*.com": '*' is allowed only as a whole leading label (*.example.com)`},
		{pattern: "*example.com", err: `invalid pattern "*example.com": '*' is allowed only as a whole leading label (*.example.com)`},
		{pattern: "a..b", err: `invalid pattern "a..b": domain "a..b" has an empty label`},
		{pattern: "exa mple.com", err: `invalid pattern "exa mple.com": domain "exa mple.com" has an invalid character ' '`},
		{pattern: "-bad.com", err: `invalid pattern "-bad.com": domain "-bad.com" has an invalid character '-'`},
		{pattern: "", err: `invalid pattern "": empty domain`},
		{pattern: strings.Repeat("a", 64) + ".com", err: "has a label longer than 63 characters"},
	}
	for _, tc := range cases {
		t.Run(tc.pattern, func(t *testing.T) {
			t.Parallel()
			p, err := ParseDomainPattern(tc.pattern)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			set := NewDomainSet([]DomainPattern{p})
			for _, n := range tc.accept {
				if !p.Match(n) {
					t.Errorf("%s should match %s", p, n)
				}
				if _, ok := set.Match(n); !ok {
					t.Errorf("set %s should match %s", p, n)
				}
			}
			for _, n := range tc.reject {
				if p.Match(n) {
					t.Errorf("%s should not match %s", p, n)
				}
				if _, ok := set.Match(n); ok {
					t.Errorf("set %s should not match %s", p, n)
				}
			}
		})
	}
}

func egressSet(t *testing.T, docs ...string) *EgressIndex {
	t.Helper()
	var b strings.Builder
	for _, d := range docs {
		b.WriteString("---\n" + d)
	}
	set, err := Parse("egress.yaml", []byte(b.String()), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := CompileEgress(set, EgressOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

func ep(ns, name, spec string) string {
	return "apiVersion: security.kordon.dev/v1\nkind: EgressPolicy\nmetadata:\n  name: " + name + "\n  namespace: " + ns + "\nspec:\n" + spec + "\n"
}

func TestEgressDecide(t *testing.T) {
	t.Parallel()
	ix := egressSet(t,
		ep("shop", "frontend", "  selector: {matchLabels: {app: frontend}}\n  allow: [\"*.cdn.example\", api.example.com]\n  deny: [bad.cdn.example]"),
		ep("shop", "checkout", "  selector: {matchLabels: {app: checkout}}\n  mode: Audit\n  allow: [api.pay.example]"),
		ep("kordon-system", "mesh", "  deny: [\"*.evil.example\"]"),
		ep("shop", "worker", "  selector: {matchLabels: {app: worker}}\n  detection: {sensitivity: High, action: Quarantine}"),
	)
	cases := []struct {
		labels  map[string]string
		ns      string
		name    string
		verdict EgressVerdict
		policy  string
	}{
		{map[string]string{"app": "frontend"}, "shop", "img.cdn.example", EgressAllow, "shop/frontend"},
		{map[string]string{"app": "frontend"}, "shop", "cdn.example", EgressBlock, "shop/frontend"},
		{map[string]string{"app": "frontend"}, "shop", "bad.cdn.example", EgressBlock, "shop/frontend"},
		{map[string]string{"app": "frontend"}, "shop", "x.evil.example", EgressBlock, "kordon-system/mesh"},
		{map[string]string{"app": "frontend"}, "shop", "payments.shop.svc.cluster.local", EgressAllow, ""},
		{map[string]string{"app": "frontend"}, "shop", "google.com", EgressBlock, "shop/frontend"},
		{map[string]string{"app": "checkout"}, "shop", "google.com", EgressAuditBlock, "shop/checkout"},
		{map[string]string{"app": "checkout"}, "shop", "api.pay.example", EgressAllow, "shop/checkout"},
		{map[string]string{"app": "worker"}, "shop", "anything.example", EgressAllow, ""},
		{map[string]string{"app": "worker"}, "shop", "a.evil.example", EgressBlock, "kordon-system/mesh"},
		{map[string]string{"app": "frontend"}, "other", "google.com", EgressAllow, ""},
	}
	for _, tc := range cases {
		d := ix.ForWorkload(tc.ns, tc.labels).Decide(tc.name)
		if d.Verdict != tc.verdict || d.Policy != tc.policy {
			t.Errorf("%s/%v %s: got verdict %d policy %q, want %d %q", tc.ns, tc.labels, tc.name, d.Verdict, d.Policy, tc.verdict, tc.policy)
		}
	}
	det, name := ix.ForWorkload("shop", map[string]string{"app": "worker"}).Detection()
	if det == nil || det.Action != DetectionQuarantine || name != "shop/worker" {
		t.Errorf("detection = %+v %q", det, name)
	}
}

func TestEgressValidation(t *testing.T) {
	t.Parallel()
	doc := ep("shop", "p", "  mode: enforce\n  allow:\n  - \"api.*.com\"\n  detection: {sensitivity: Extreme, action: Block}")
	_, err := Parse("e.yaml", []byte(doc), LoadOptions{})
	want := []string{
		`e.yaml:7:9: spec.mode: unknown mode "enforce" (want Enforce or Audit)`,
		`e.yaml:9:5: spec.allow[0]: invalid pattern "api.*.com": '*' is allowed only as a whole leading label (*.example.com)`,
		`e.yaml:10:28: spec.detection.sensitivity: unknown sensitivity "Extreme" (want Low, Medium or High)`,
		`e.yaml:10:45: spec.detection.action: unknown action "Block" (want Alert or Quarantine)`,
	}
	if err == nil || err.Error() != strings.Join(want, "\n") {
		t.Fatalf("got:\n%v\nwant:\n%s", err, strings.Join(want, "\n"))
	}
}

func FuzzDomainPattern(f *testing.F) {
	for _, s := range []string{"a.b", "*.a.b", "**.x.y", "bücher.de", "A.B.", "*", "a..b", "_x.y"} {
		f.Add(s, "x.a.b")
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		p, err := ParseDomainPattern(pattern)
		if err != nil {
			return
		}
		n := CanonicalName(name)
		got := p.Match(n)
		_, setGot := NewDomainSet([]DomainPattern{p}).Match(n)
		if got != setGot {
			t.Fatalf("pattern %q name %q: Match=%v set=%v", pattern, n, got, setGot)
		}
		if p.Wildcard && p.Match(p.Domain) {
			t.Fatalf("wildcard %q matches its apex", pattern)
		}
		if again, err := ParseDomainPattern(p.String()); err != nil || again != p {
			t.Fatalf("round trip %q -> %q: %v", pattern, p.String(), err)
		}
	})
}
