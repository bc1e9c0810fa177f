package manifests

import (
	"path/filepath"
	"reflect"

	"github.com/kordon-dev/kordon/policy"
)

// requestAuthnTypesFile is the file of package policy with the
// RequestAuthentication types, read beside the types file.
const requestAuthnTypesFile = "requestauthn.go"

// requestAuthnCRD is the CRD of kordon's RequestAuthentication
// (security.kordon.dev/v1), Istio's JWT policy under kordon's group,
// generated from policy.RequestAuthenticationSpec like the other kinds.
func requestAuthnCRD(d docs, typesFile string, columns ...any) (map[string]any, error) {
	more, err := parseDocs(filepath.Join(filepath.Dir(typesFile), requestAuthnTypesFile))
	if err != nil {
		return nil, err
	}
	for k, v := range more {
		d[k] = v
	}
	issuers := map[string]any{"name": "Issuers", "type": "string", "jsonPath": ".spec.jwtRules[*].issuer"}
	return crd(policy.KindRequestAuthentication, "requestauthentications", "kra", reflect.TypeOf(policy.RequestAuthenticationSpec{}), d,
		append([]any{issuers}, columns...)), nil
}
