package policy

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// goldenTarget is the proxy of Istio's own builder tests.
var goldenTarget = Target{Namespace: "foo", Labels: map[string]string{"app": "httpbin", "version": "v1"}}

// goldenOptions are the options of golden case name: *-dynamic-metadata
// for a data plane that writes istio_authn and other filters' metadata
// (istiod's form), *-jwt-authn for Envoy with kordon's jwt_authn filter.
func goldenOptions(name string) CompileOptions {
	return CompileOptions{
		DynamicMetadata: strings.HasSuffix(name, "-dynamic-metadata"),
		JWTAuthn:        strings.HasSuffix(name, "-jwt-authn"),
	}
}

func TestCompileGolden(t *testing.T) {
	t.Parallel()
	ins, err := filepath.Glob("testdata/*-in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) < 40 {
		t.Fatalf("want at least 40 golden cases, have %d", len(ins))
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), "-in.yaml")
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			set, err := LoadPaths(LoadOptions{}, in)
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			c, err := Compile(set, goldenTarget, goldenOptions(name))
			if err != nil {
				t.Fatalf("compile: %v", err)
			}
			got, err := c.FiltersJSON()
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			golden := filepath.Join("testdata", name+"-out.json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./policy -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("compiled output differs from %s (run go test ./policy -update and review the diff)\ngot:\n%s", golden, got)
			}
		})
	}
}

func TestCompileDeterministic(t *testing.T) {
	t.Parallel()
	set, err := LoadPaths(LoadOptions{}, "testdata/deny-allow-audit-combined-in.yaml", "testdata/root-namespace-mesh-wide-in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var first []byte
	for i := 0; i < 5; i++ {
		c, err := Compile(set, goldenTarget, CompileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.FiltersJSON()
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = b
		} else if !bytes.Equal(first, b) {
			t.Fatal("compilation is not deterministic")
		}
	}
}

// TestCompileNotesRequestAuthentication: a RequestAuthentication on a data
// plane that validates no JWT is noted, and so is the ALLOW rule on its
// principals that now matches nothing; with DynamicMetadata neither.
func TestCompileNotesRequestAuthentication(t *testing.T) {
	t.Parallel()
	set, err := LoadPaths(LoadOptions{}, "testdata/request-authentication-in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Compile(set, goldenTarget, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"RequestAuthentication foo/jwt-example selects this workload, but this data plane validates no JWT: tokens are not checked (Istio would reject an invalid one), and AuthorizationPolicy rules on JWT attributes fail closed",
		"ns[foo]-policy[require-issuer]-rule[0]: ALLOW rule needs requestPrincipals, which this data plane cannot know (no filter validates JWTs or writes that metadata): it matches nothing (fail closed)",
	}
	if strings.Join(c.Notes, "\n") != strings.Join(want, "\n") {
		t.Fatalf("notes:\n%s\nwant:\n%s", strings.Join(c.Notes, "\n"), strings.Join(want, "\n"))
	}
	c, err = Compile(set, goldenTarget, CompileOptions{DynamicMetadata: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Notes) != 0 {
		t.Fatalf("notes with dynamic metadata: %q", c.Notes)
	}
}
