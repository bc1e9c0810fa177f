package policy

// validateEgressPolicy checks an EgressPolicy after decoding.
func validateEgressPolicy(p *EgressPolicy) ErrorList {
	return validateMeta(p.Metadata, p.Pos)
}
