package kube

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/policy"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GVRs of the cluster-state kinds: node agents write them, the
// controller and people read them.
var (
	EgressAlertGVR = schema.GroupVersionResource{Group: "security.kordon.dev", Version: "v1", Resource: "egressalerts"}
	QuarantineGVR  = schema.GroupVersionResource{Group: "security.kordon.dev", Version: "v1", Resource: "quarantines"}
)

// LabelAlertKind labels each EgressAlert with its kind
// (kubectl get egressalerts -l kordon.dev/alert-kind=exfiltration).
const LabelAlertKind = "kordon.dev/alert-kind"

// AlertName is the EgressAlert name of a's series: one per workload, kind
// and domain (Alert.DedupKey), readable and unique.
func AlertName(a *alert.Alert) string {
	sum := sha256.Sum256([]byte(a.DedupKey()))
	who := a.Pod
	if who == "" {
		who = a.ClientIP
	}
	return objectName(a.Kind+"-"+who, hex.EncodeToString(sum[:5]))
}

// QuarantineName names the Quarantine of one workload (owner kind and
// name, or service account) and one domain or address.
func QuarantineName(workload, domain string) string {
	sum := sha256.Sum256([]byte(workload + "|" + domain))
	return objectName(workload, hex.EncodeToString(sum[:5]))
}

// objectName makes a DNS-subdomain object name of prefix (lower-cased,
// other characters as '-', shortened) and a hash suffix.
func objectName(prefix, suffix string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(prefix) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	p := strings.Trim(b.String(), "-.")
	if len(p) > 200 {
		p = strings.Trim(p[:200], "-.")
	}
	if p == "" {
		return suffix
	}
	return p + "-" + suffix
}

func toUnstructured(kind, namespace, name string, labels map[string]string, spec any) (*unstructured.Unstructured, error) {
	u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": policy.GroupVersion, "kind": kind}}
	if err := setSpec(u, spec); err != nil {
		return nil, err
	}
	u.SetNamespace(namespace)
	u.SetName(name)
	l := map[string]string{"app.kubernetes.io/part-of": "kordon"}
	for k, v := range labels {
		l[k] = v
	}
	u.SetLabels(l)
	return u, nil
}

// specOf decodes u's spec into out (a *policy.EgressAlertSpec or
// *policy.QuarantineSpec).
func specOf(u *unstructured.Unstructured, out any) error {
	b, err := json.Marshal(u.Object["spec"])
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("kube: %s %s/%s: spec: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	return nil
}

// setSpec replaces u's spec.
func setSpec(u *unstructured.Unstructured, spec any) error {
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	u.Object["spec"] = m
	return nil
}

// AlertFromObject is the feed record of an EgressAlert: its series
// fields set, Time its last occurrence and ID its resourceVersion (the
// etcd revision of its last write: increasing across the cluster and
// the same on every replica, so every controller numbers, orders and
// resumes the stream alike).
func AlertFromObject(u *unstructured.Unstructured) (alert.Alert, error) {
	var s policy.EgressAlertSpec
	if err := specOf(u, &s); err != nil {
		return alert.Alert{}, err
	}
	id, err := strconv.ParseUint(u.GetResourceVersion(), 10, 64)
	if err != nil {
		return alert.Alert{}, fmt.Errorf("kube: EgressAlert %s/%s: resourceVersion %q is not a number", u.GetNamespace(), u.GetName(), u.GetResourceVersion())
	}
	a := alert.Alert{
		ID: id, Time: s.LastSeen, Severity: s.Severity, Kind: s.Kind, Node: s.Node, Pod: s.Pod,
		ServiceAccount: s.ServiceAccount, SPIFFEID: s.SPIFFEID, ClientIP: s.ClientIP, Domain: s.Domain,
		Score: s.Score, Evidence: s.Evidence, Action: s.Action, Policy: s.Policy, Message: s.Message,
		Count: s.Count, FirstSeen: s.FirstSeen, LastSeen: s.LastSeen,
	}
	if s.Pod != "" {
		a.Namespace = u.GetNamespace()
	}
	return a, nil
}
