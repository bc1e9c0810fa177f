package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func runPolicyCmd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newPolicyCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

// TestPolicyDevFolder runs what a new user runs after the README: the dev
// folder holds workloads.yaml and services.yaml beside the policies.
func TestPolicyDevFolder(t *testing.T) {
	t.Parallel()
	notes := "note: skipped ../../examples/dev/services.yaml: not a policy file: a list (kordon dev's services.yaml)\n" +
		"note: skipped ../../examples/dev/workloads.yaml: not a policy file: a list (kordon dev's workloads.yaml)\n"
	for _, args := range [][]string{
		{"check", "../../examples/dev/"},
		{"compile", "-n", "shop", "-l", "app=payments", "../../examples/dev/"},
		{"explain", "-n", "shop", "-l", "app=frontend", "--principal", "spiffe://cluster.local/ns/shop/sa/frontend", "--path", "/x/y", "../../examples/dev/"},
	} {
		out, errOut, err := runPolicyCmd(t, args...)
		var ee exitError
		if err != nil && !(errors.As(err, &ee) && ee.code == 2) {
			t.Fatalf("%v: %v\n%s", args, err, errOut)
		}
		if errOut != notes {
			t.Errorf("%v: stderr %q, want %q", args, errOut, notes)
		}
		if out == "" {
			t.Errorf("%v: no output", args)
		}
	}
	// Named explicitly, a file that is not a policy is still an error.
	_, errOut, err := runPolicyCmd(t, "check", "../../examples/dev/workloads.yaml")
	if err == nil || !strings.Contains(errOut, "workloads.yaml:5:1: expected a Kubernetes object") {
		t.Fatalf("named workloads.yaml: %v %q", err, errOut)
	}
}

// TestPolicyExplainExample runs explain's help example on
// manifests/examples and gets the decision its comment states.
func TestPolicyExplainExample(t *testing.T) {
	t.Parallel()
	lines := strings.Split(newPolicyExplainCmd().Example, "\n")
	want := strings.TrimPrefix(strings.TrimSpace(lines[0]), "# ")
	cmdline := strings.ReplaceAll(strings.Join(lines[1:], "\n"), "\\\n", " ")
	args := strings.Fields(cmdline)
	if len(args) < 3 || args[0] != "kordon" || args[1] != "policy" {
		t.Fatalf("example %q is not a kordon policy command", cmdline)
	}
	args = args[2:]
	args[len(args)-1] = "../../" + args[len(args)-1]
	out, errOut, err := runPolicyCmd(t, args...)
	if err != nil {
		t.Fatalf("%v: %v\n%s%s", args, err, out, errOut)
	}
	decision, _, _ := strings.Cut(want, " (")
	if !strings.HasPrefix(out, decision+" ") {
		t.Errorf("example output %q, want it to start with %q", out, decision)
	}
}
