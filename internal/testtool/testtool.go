// Package testtool finds the external tools that tests run against (the
// ones hack/install-deps.sh installs). A missing tool skips the test
// loudly, or fails it when KORDON_E2E_REQUIRED=1 (as under make test), so
// a run that is meant to exercise every real tool cannot pass by skipping.
package testtool

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Required reports whether KORDON_E2E_REQUIRED=1: a missing tool is then a
// failure, not a skip.
func Required() bool { return os.Getenv("KORDON_E2E_REQUIRED") == "1" }

// Need returns the path of the first of candidates found: a bare name is
// looked up in PATH, a name with a slash is a file path (a glob is allowed,
// for a plug-in whose directory names the architecture). With no
// candidates, name itself is looked up. When none is found the test fails
// under KORDON_E2E_REQUIRED=1 and is skipped otherwise, with a SKIP line
// on stderr naming the test and the package that provides the tool (what,
// e.g. "rsyslog-gnutls").
func Need(t testing.TB, what string, candidates ...string) string {
	t.Helper()
	if len(candidates) == 0 {
		candidates = []string{what}
	}
	if p, ok := find(candidates); ok {
		return p
	}
	msg := fmt.Sprintf("%s not installed (hack/install-deps.sh installs it; looked for %s): the test did not run", what, strings.Join(candidates, ", "))
	if Required() {
		t.Fatal(msg)
		return ""
	}
	fmt.Fprintln(os.Stderr, "SKIP:", t.Name()+":", msg)
	t.Skip("SKIP: " + msg)
	return ""
}

func find(candidates []string) (string, bool) {
	for _, c := range candidates {
		if !strings.Contains(c, "/") {
			if p, err := exec.LookPath(c); err == nil {
				return p, true
			}
			continue
		}
		matches, _ := filepath.Glob(c)
		for _, m := range matches {
			if _, err := os.Stat(m); err == nil {
				return m, true
			}
		}
	}
	return "", false
}

// WaitFor polls cond every 10ms until it holds, failing t after 10s with
// "timed out waiting for <what>": the deadline-bounded poll tests use
// instead of sleeping as synchronisation.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
