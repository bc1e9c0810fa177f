package policy

import (
	"strings"
	"testing"
)

// TestEnumsMatchValidation: every value Enums lists for a field passes
// validation, and a value it does not list fails at that field, so the
// CRD enums (generated from Enums) and validation agree.
func TestEnumsMatchValidation(t *testing.T) {
	t.Parallel()
	// One document per field, with %s where the value goes, and the field
	// path of the error an unlisted value must give.
	docs := map[string]struct{ doc, field string }{
		"AuthorizationPolicySpec.Action": {"apiVersion: security.kordon.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec: {action: %s, rules: [{}]}\n", "spec.action"},
		"EgressPolicySpec.Mode":          {"apiVersion: security.kordon.dev/v1\nkind: EgressPolicy\nmetadata: {name: p, namespace: foo}\nspec: {mode: %s, allow: [a.example]}\n", "spec.mode"},
		"DetectionSpec.Sensitivity":      {"apiVersion: security.kordon.dev/v1\nkind: EgressPolicy\nmetadata: {name: p, namespace: foo}\nspec: {allow: [a.example], detection: {sensitivity: %s}}\n", "spec.detection.sensitivity"},
		"DetectionSpec.Action":           {"apiVersion: security.kordon.dev/v1\nkind: EgressPolicy\nmetadata: {name: p, namespace: foo}\nspec: {allow: [a.example], detection: {action: %s}}\n", "spec.detection.action"},
		"EgressPort.Protocol":            {"apiVersion: security.kordon.dev/v1\nkind: EgressPolicy\nmetadata: {name: p, namespace: foo}\nspec: {allow: [a.example], ports: [{port: 443, protocol: %s}]}\n", "spec.ports[0].protocol"},
	}
	enums := Enums()
	if len(enums) != len(docs) {
		t.Fatalf("Enums has %d fields, the test knows %d: add a document for the new one", len(enums), len(docs))
	}
	for key, values := range enums {
		d, ok := docs[key]
		if !ok {
			t.Fatalf("no document for %s", key)
		}
		for _, v := range values {
			_, err := Parse("t.yaml", []byte(strings.Replace(d.doc, "%s", v, 1)), LoadOptions{})
			// CUSTOM is listed (Istio's schema has it) and refused by
			// validation with its own message.
			if v == string(ActionCustom) {
				if err == nil || !strings.Contains(err.Error(), "CUSTOM is not supported") {
					t.Errorf("%s=%s: %v", key, v, err)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s=%s is listed but refused: %v", key, v, err)
			}
		}
		_, err := Parse("t.yaml", []byte(strings.Replace(d.doc, "%s", "Bogus", 1)), LoadOptions{})
		if err == nil || !strings.Contains(err.Error(), ": "+d.field+": ") {
			t.Errorf("%s=Bogus: want an error at %s, got %v", key, d.field, err)
		}
	}
}
