package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/kube"
)

// TestControllerConsoleBehindFeedAuthentication: the controller serves
// the web console on the feed's HTTPS listener. The page's files need no
// token (they hold no data; a browser cannot send one when it
// navigates); policy explain needs a token whose user may list
// AuthorizationPolicies, and then answers with the policies the
// controller watches in the API server.
func TestControllerConsoleBehindFeedAuthentication(t *testing.T) {
	bin := buildKordon(t)
	kubeconfig := writeKubeconfig(t)
	sysNS := newNamespace(t)
	feedAddr := freeAddr(t)
	_, _, httpAddr := startController(t, bin, kubeconfig, sysNS, "controller-0", "--feed-listen", feedAddr)
	eventually(t, 30*time.Second, "the trust bundle published", func() bool { return bundleConfigMapExists(t, sysNS) })
	ns := newNamespace(t)
	createPolicy(t, kube.AuthorizationPolicyGVR, ns, fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: AuthorizationPolicy
metadata: {name: payments-from-checkout, namespace: %s}
spec:
  selector: {matchLabels: {app: payments}}
  rules: [{from: [{source: {principals: [cluster.local/ns/%s/sa/checkout]}}]}]
`, ns, ns))
	do := feedRequester(t, sysNS, feedAddr)
	if code, h, body := do(http.MethodGet, "/ui/", "", ""); code != http.StatusOK || !strings.Contains(body, `<script src="app.js"`) ||
		!strings.Contains(h.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("GET /ui/ without a token: %d %q %.100q", code, h.Get("Content-Security-Policy"), body)
	}
	if code, _, body := do(http.MethodGet, "/ui/config.json", "", ""); code != http.StatusOK || body != `{"mode":"controller"}` {
		t.Fatalf("GET /ui/config.json: %d %s", code, body)
	}
	req := func(principal string) string {
		return fmt.Sprintf(`{"namespace":%q,"labels":{"app":"payments"},"principal":%q}`, ns, principal)
	}
	checkout := "spiffe://cluster.local/ns/" + ns + "/sa/checkout"
	if code, _, body := do(http.MethodPost, "/v1/policy/explain", "", req(checkout)); code != http.StatusUnauthorized {
		t.Fatalf("explain without a token: %d %s", code, body)
	}
	nobody := saToken(t, ns, "nobody")
	if code, _, body := do(http.MethodPost, "/v1/policy/explain", nobody, req(checkout)); code != http.StatusForbidden ||
		!strings.Contains(body, "cannot list authorizationpolicies.security.kordon.dev") {
		t.Fatalf("explain with a token without rights: %d %s", code, body)
	}
	// The policy source syncs, then explain evaluates what it watches.
	var body string
	eventually(t, 30*time.Second, "explain to allow checkout by "+ns+"/payments-from-checkout", func() bool {
		var code int
		code, _, body = do(http.MethodPost, "/v1/policy/explain", cluster.AdminToken, req(checkout))
		return code == http.StatusOK && strings.Contains(body, `"decision":"ALLOW","policy":"`+ns+`/payments-from-checkout"`)
	})
	if code, _, body := do(http.MethodPost, "/v1/policy/explain", cluster.AdminToken, req("spiffe://cluster.local/ns/"+ns+"/sa/frontend")); code != http.StatusOK ||
		!strings.Contains(body, `"allowed":false,"decision":"DENY"`) {
		t.Fatalf("explain for frontend: %d %s", code, body)
	}
	// The plain --http-listen (health and metrics) never serves it.
	for _, path := range []string{"/ui/", "/v1/policy/explain"} {
		resp, err := http.Post("http://"+httpAddr+path, "application/json", strings.NewReader(req(checkout)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("POST %s on --http-listen: %d, want it not served", path, resp.StatusCode)
		}
	}
}

// feedRequester returns a function making one request to the
// controller's feed listener at addr (trusting sysNS's bundle) with
// feedRequest.
func feedRequester(t *testing.T, sysNS, addr string) func(method, path, token, body string) (int, http.Header, string) {
	c := feedClient(t, sysNS, nil)
	return func(method, path, token, body string) (int, http.Header, string) {
		t.Helper()
		code, h, b := feedRequest(t, c, method, "https://"+addr+path, token, body)
		return code, h, string(b)
	}
}

// feedRequest makes one request with c, with a bearer token unless it is
// "", and returns its status, header and body.
func feedRequest(t *testing.T, c *http.Client, method, url, token, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}
