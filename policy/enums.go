package policy

// Enums lists the allowed values of the string fields validation checks
// against a fixed set, by "Type.Field" (Go type and field names), in
// documentation order. The CRD generator (package manifests) publishes
// them as OpenAPI enums, so the CRDs and validation cannot drift;
// TestEnumsMatchValidation checks each list against validation.
func Enums() map[string][]string {
	return map[string][]string{
		"AuthorizationPolicySpec.Action": {string(ActionAllow), string(ActionDeny), string(ActionAudit), string(ActionCustom)},
		"EgressPolicySpec.Mode":          {string(EgressEnforce), string(EgressAudit)},
		"DetectionSpec.Sensitivity":      {SensitivityLow, SensitivityMedium, SensitivityHigh},
		"DetectionSpec.Action":           {DetectionAlert, DetectionQuarantine},
		"EgressPort.Protocol":            {"TCP", "UDP", "SCTP"},
	}
}
