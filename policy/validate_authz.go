package policy

// validateAuthorizationPolicy checks an AuthorizationPolicy after decoding.
func validateAuthorizationPolicy(p *AuthorizationPolicy) ErrorList {
	return validateMeta(p.Metadata, p.Pos)
}
