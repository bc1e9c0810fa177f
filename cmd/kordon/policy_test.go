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
