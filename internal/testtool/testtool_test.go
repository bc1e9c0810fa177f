package testtool

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// fakeTB records what Need asks of a test instead of ending it.
type fakeTB struct {
	testing.TB
	fatal, skip string
}

func (f *fakeTB) Helper()        {}
func (f *fakeTB) Name() string   { return "fake" }
func (f *fakeTB) Fatal(a ...any) { f.fatal = a[0].(string) }
func (f *fakeTB) Skip(a ...any)  { f.skip = a[0].(string) }

func TestNeed(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	if got := Need(t, "shell", "no-such-tool-kordon", "sh"); got != sh {
		t.Fatalf("Need found %q, want %q", got, sh)
	}
	if got := Need(t, "shell", filepath.Join(filepath.Dir(sh), "s?")); got == "" {
		t.Fatal("glob not matched")
	}

	t.Setenv("KORDON_E2E_REQUIRED", "1")
	f := &fakeTB{}
	if got := Need(f, "no-such-tool-kordon"); got != "" || f.fatal == "" || f.skip != "" {
		t.Fatalf("required: got %q, fatal %q, skip %q", got, f.fatal, f.skip)
	}
	t.Setenv("KORDON_E2E_REQUIRED", "")
	f = &fakeTB{}
	if got := Need(f, "no-such-pkg", "/nonexistent/*/x.so"); got != "" || f.skip == "" || f.fatal != "" {
		t.Fatalf("not required: got %q, fatal %q, skip %q", got, f.fatal, f.skip)
	}
}
