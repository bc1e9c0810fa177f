// Package policy holds kordon's user-facing policy APIs (AuthorizationPolicy,
// EgressPolicy), their strict decoding with file:line:col positions, their
// validation, and their compilation to Envoy RBAC and to domain matchers.
//
// It imports no Kubernetes client, no other kordon package and no network
// code: it is pure and safe to fuzz.
package policy
