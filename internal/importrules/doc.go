// Package importrules holds only a test: it checks the import rules of
// DESIGN.md (policy, identity, dnsguard and egress never import each
// other's internals, Kubernetes clients or xds; identity never pulls in
// policy or the Envoy protos; egress and dnsguard may use policy) against
// `go list -deps`, so a new import that breaks them fails the build's tests.
package importrules
