// Package issuancepb is the generated Go code of issuance.proto, the
// controller's SVID issuance API (kordon.identity.v1.Issuance); package
// identity serves and calls it. Regenerate with make generate.
package issuancepb
