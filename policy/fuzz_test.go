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
		if _, err := Explain(set, goldenTarget, Request{Method: "GET", Path: "/"}, CompileOptions{}); err != nil {
			t.Fatalf("explain: %v", err)
		}
	})
}
