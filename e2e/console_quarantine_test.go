package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/internal/testtool/browser"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestControllerQuarantineAPI: the controller's feed listener serves the
// Quarantine objects to the console: a token bound to
// kordon-security-viewer in one namespace lists that namespace's
// quarantines (not another's, not cluster-wide) and lifts one (the
// object is deleted); a token without rights gets 403, none 401.
func TestControllerQuarantineAPI(t *testing.T) {
	sysNS, feedAddr := startFeedController(t)
	ns, other := newNamespace(t), newNamespace(t)
	createState(t, kube.QuarantineGVR, ns, `apiVersion: security.kordon.dev/v1
kind: Quarantine
metadata: {name: report-worker-evil}
spec: {owner: {kind: Deployment, name: report-worker}, domains: [evil.example], addresses: [192.0.2.7], node: node-a, reason: exfiltration over DNS}
`)
	createState(t, kube.QuarantineGVR, other, `apiVersion: security.kordon.dev/v1
kind: Quarantine
metadata: {name: billing-tunnel}
spec: {serviceAccount: billing, domains: [tunnel.example], reason: tunneling}
`)
	ensureSecurityViewer(t)
	bindViewer(t, ns, ns, "viewer")
	viewer, nobody := saToken(t, ns, "viewer"), saToken(t, ns, "nobody")
	do := feedRequester(t, sysNS, feedAddr)
	list := "/v1/quarantines?namespace=" + ns
	if code, h, body := do(http.MethodGet, list, "", ""); code != http.StatusUnauthorized || h.Get("WWW-Authenticate") == "" {
		t.Fatalf("list without a token: %d %s", code, body)
	}
	if code, _, body := do(http.MethodGet, list, nobody, ""); code != http.StatusForbidden ||
		!strings.Contains(body, "cannot list quarantines.security.kordon.dev in namespace "+ns) {
		t.Fatalf("list with a token without rights: %d %s", code, body)
	}
	if code, _, body := do(http.MethodDelete, "/v1/quarantines/"+ns+"/report-worker-evil", nobody, ""); code != http.StatusForbidden {
		t.Fatalf("lift with a token without rights: %d %s", code, body)
	}
	for _, path := range []string{"/v1/quarantines", "/v1/quarantines?namespace=" + other} {
		if code, _, body := do(http.MethodGet, path, viewer, ""); code != http.StatusForbidden {
			t.Fatalf("viewer of %s: GET %s: %d %s", ns, path, code, body)
		}
	}
	code, _, body := do(http.MethodGet, list, viewer, "")
	var got struct {
		Quarantines []struct{ ID, Namespace, Name, Workload, Domain, Reason string }
	}
	if err := json.Unmarshal([]byte(body), &got); code != http.StatusOK || err != nil {
		t.Fatalf("viewer's list: %d %s %v", code, body, err)
	}
	if len(got.Quarantines) != 1 {
		t.Fatalf("viewer's list: %s", body)
	}
	q := got.Quarantines[0]
	if q.ID != ns+"/report-worker-evil" || q.Name != "report-worker-evil" || q.Workload != ns+"/Deployment/report-worker" ||
		q.Domain != "evil.example, 192.0.2.7" || q.Reason != "exfiltration over DNS" {
		t.Fatalf("viewer's list: %s", body)
	}
	if code, _, body := do(http.MethodDelete, "/v1/quarantines/"+other+"/billing-tunnel", viewer, ""); code != http.StatusForbidden {
		t.Fatalf("viewer lifting in %s: %d %s", other, code, body)
	}
	if code, _, body := do(http.MethodDelete, "/v1/quarantines/"+ns+"/report-worker-evil", viewer, ""); code != http.StatusNoContent {
		t.Fatalf("viewer's lift: %d %s", code, body)
	}
	ctx := context.Background()
	if _, err := clients.Dynamic.Resource(kube.QuarantineGVR).Namespace(ns).Get(ctx, "report-worker-evil", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the lifted Quarantine: %v, want NotFound", err)
	}
	if _, err := clients.Dynamic.Resource(kube.QuarantineGVR).Namespace(other).Get(ctx, "billing-tunnel", metav1.GetOptions{}); err != nil {
		t.Fatalf("the other namespace's Quarantine: %v", err)
	}
	if code, _, body := do(http.MethodDelete, "/v1/quarantines/"+ns+"/report-worker-evil", viewer, ""); code != http.StatusNotFound {
		t.Fatalf("lifting it again: %d %s, want 404", code, body)
	}
	if code, _, body := do(http.MethodGet, list, viewer, ""); code != http.StatusOK || !strings.Contains(body, `"quarantines":[]`) {
		t.Fatalf("list after the lift: %d %s", code, body)
	}
}

// TestControllerConsoleLiftsQuarantineInChromium: the controller's web
// console in a real headless Chromium lists a Quarantine object once the
// viewer's token is typed into the page, and its lift button deletes
// the object. Chromium is told to accept the controller's certificate:
// an SVID names a SPIFFE ID, no host a browser could check.
func TestControllerConsoleLiftsQuarantineInChromium(t *testing.T) {
	_, feedAddr := startFeedController(t)
	ns := newNamespace(t)
	createState(t, kube.QuarantineGVR, ns, `apiVersion: security.kordon.dev/v1
kind: Quarantine
metadata: {name: report-worker-evil}
spec: {owner: {kind: Deployment, name: report-worker}, domains: [evil.example], reason: exfiltration over DNS}
`)
	ensureSecurityViewer(t)
	bindViewer(t, "", ns, "console-viewer") // cluster-wide: the page lists every namespace
	viewer := saToken(t, ns, "console-viewer")
	ctx := browser.Start(t, chromedp.Flag("ignore-certificate-errors", true))
	browser.Do(t, ctx, "open the console", chromedp.Navigate("https://"+feedAddr+"/ui/"), chromedp.WaitVisible(chromedp.CSS("#token")))
	browser.WaitText(t, ctx, "#mode", "controller")
	// Typing the token and leaving the field stores it and refreshes.
	lift := `#quarantines button.lift[data-domain="evil.example"]`
	browser.Do(t, ctx, "type the token", chromedp.SendKeys(chromedp.CSS("#token"), viewer),
		chromedp.Click(chromedp.CSS("#refresh-quarantines")), chromedp.WaitVisible(chromedp.CSS(lift)))
	browser.WaitText(t, ctx, "#quarantines", ns+"/Deployment/report-worker")
	browser.Do(t, ctx, "click lift", chromedp.Click(chromedp.CSS(lift)), chromedp.WaitNotPresent(chromedp.CSS(lift)))
	browser.WaitText(t, ctx, "#quarantines-status", "lifted evil.example for "+ns+"/Deployment/report-worker")
	if _, err := clients.Dynamic.Resource(kube.QuarantineGVR).Namespace(ns).Get(context.Background(), "report-worker-evil", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the Quarantine lifted from the page: %v, want NotFound", err)
	}
}

// startFeedController starts one controller replica with its feed on a
// free address and waits for its trust bundle; it returns the
// controller's namespace and the feed's address.
func startFeedController(t *testing.T) (sysNS, feedAddr string) {
	t.Helper()
	sysNS, feedAddr = newNamespace(t), freeAddr(t)
	startController(t, buildKordon(t), writeKubeconfig(t), sysNS, "controller-0", "--feed-listen", feedAddr)
	eventually(t, 30*time.Second, "the trust bundle published", func() bool { return bundleConfigMapExists(t, sysNS) })
	return sysNS, feedAddr
}
