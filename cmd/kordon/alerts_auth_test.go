package main

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kordon-dev/kordon/dnsguard/alert"
)

// TestFeedClientBearer: --token, then --token-file, then the kubeconfig's
// token, which is sent only to an https server.
func TestFeedClientBearer(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	kubeconfig := filepath.Join(dir, "kubeconfig")
	noToken := filepath.Join(dir, "kubeconfig-exec")
	for path, data := range map[string]string{
		tokenFile: "from-file\n",
		kubeconfig: `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: from-kubeconfig}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`,
		noToken: `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`,
	} {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		flags   feedClientFlags
		server  string
		want    string
		wantErr string
	}{
		{name: "token flag first", flags: feedClientFlags{token: "flag", tokenFile: tokenFile, kubeconfig: kubeconfig}, server: "https://x", want: "flag"},
		{name: "token file, trimmed", flags: feedClientFlags{tokenFile: tokenFile, kubeconfig: kubeconfig}, server: "https://x", want: "from-file"},
		{name: "kubeconfig over https", flags: feedClientFlags{kubeconfig: kubeconfig}, server: "https://x", want: "from-kubeconfig"},
		{name: "kubeconfig never in the clear", flags: feedClientFlags{kubeconfig: kubeconfig}, server: "http://127.0.0.1:9080", want: ""},
		{name: "explicit token over http is the user's choice", flags: feedClientFlags{token: "flag"}, server: "http://127.0.0.1:9080", want: "flag"},
		{name: "kubeconfig without a token", flags: feedClientFlags{kubeconfig: noToken}, server: "https://x",
			wantErr: "--kubeconfig: the current user has no bearer token (exec and auth-provider plugins are not run: pass --token)"},
		{name: "missing token file", flags: feedClientFlags{tokenFile: filepath.Join(dir, "nope")}, server: "https://x", wantErr: "--token-file: open "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.flags.bearer(tc.server)
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("bearer = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestEgressQuarantineRule(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		method, path string
		want         alert.Access
	}{
		{"GET", "/v1/egress/quarantines", alert.Access{Verb: "list", Resource: "quarantines"}},
		{"DELETE", "/v1/egress/quarantines/10.0.0.1/203.0.113.9", alert.Access{Verb: "delete", Resource: "quarantines"}},
		{"POST", "/v1/egress/quarantines/10.0.0.1/203.0.113.9", alert.Access{Verb: "create", Resource: "quarantines"}},
		{"DELETE", "/v1/egress/quarantines", alert.Access{NodeAgent: true}},
		{"PUT", "/v1/egress/quarantines/a/b", alert.Access{NodeAgent: true}},
	} {
		got, err := egressQuarantineRule(httptest.NewRequest(tc.method, tc.path, nil))
		if err != nil || got != tc.want {
			t.Errorf("%s %s: %+v %v, want %+v", tc.method, tc.path, got, err, tc.want)
		}
	}
}
