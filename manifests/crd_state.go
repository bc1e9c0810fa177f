package manifests

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"

	"github.com/kordon-dev/kordon/policy"
)

// stateTypesFile is the file of package policy with the cluster-state
// kinds (EgressAlert, Quarantine), read beside the types file.
const stateTypesFile = "clusterstate.go"

// stateEnums lists the allowed values of string fields of the
// cluster-state kinds, by "Type.Field".
var stateEnums = map[string][]string{
	"QuarantineOwner.Kind": policy.QuarantineOwnerKinds,
	"EgressAlertSpec.Kind": {"exfiltration", "tunneling", "blocked", "quarantine"},
}

// mergeStateDocs adds the doc comments of the cluster-state types, from
// the file beside typesFile (when it is there).
func mergeStateDocs(d docs, typesFile string) error {
	more, err := parseDocs(filepath.Join(filepath.Dir(typesFile), stateTypesFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for k, v := range more {
		d[k] = v
	}
	return nil
}

// stateCRD is a CRD for a kind kordon writes: no status subresource
// (everything it records is in spec, written in one request).
func stateCRD(kind, plural, short string, spec reflect.Type, d docs, columns []any) map[string]any {
	c := crd(kind, plural, short, spec, d, columns)
	v := c["spec"].(map[string]any)["versions"].([]any)[0].(map[string]any)
	delete(v, "subresources")
	delete(v["schema"].(map[string]any)["openAPIV3Schema"].(map[string]any)["properties"].(map[string]any), "status")
	return c
}

// stateCRDs are the CRDs of EgressAlert and Quarantine.
func stateCRDs(d docs) []map[string]any {
	age := map[string]any{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
	col := func(name, typ, path string, priority int) map[string]any {
		c := map[string]any{"name": name, "type": typ, "jsonPath": path}
		if priority > 0 {
			c["priority"] = priority
		}
		return c
	}
	return []map[string]any{
		stateCRD(policy.KindEgressAlert, "egressalerts", "ealert", reflect.TypeOf(policy.EgressAlertSpec{}), d, []any{
			col("Kind", "string", ".spec.kind", 0), col("Severity", "string", ".spec.severity", 0),
			col("Pod", "string", ".spec.pod", 0), col("Domain", "string", ".spec.domain", 0),
			col("Count", "integer", ".spec.count", 0), col("Last Seen", "date", ".spec.lastSeen", 0),
			col("Action", "string", ".spec.action", 1), col("Node", "string", ".spec.node", 1), age,
		}),
		stateCRD(policy.KindQuarantine, "quarantines", "quar", reflect.TypeOf(policy.QuarantineSpec{}), d, []any{
			col("Owner Kind", "string", ".spec.owner.kind", 0), col("Owner", "string", ".spec.owner.name", 0),
			col("Service Account", "string", ".spec.serviceAccount", 0), col("Domains", "string", ".spec.domains", 0),
			col("Addresses", "string", ".spec.addresses", 1), col("Node", "string", ".spec.node", 1),
			col("Reason", "string", ".spec.reason", 1), age,
		}),
	}
}
