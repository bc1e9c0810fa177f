// Package xds is kordon's xDS control plane: an aggregated discovery
// service (go-control-plane, state of the world and delta) that builds one
// snapshot per connected node from the workload registry, the services, the
// compiled AuthorizationPolicies and the identities, and pushes it
// debounced and incrementally.
//
// A node identifies itself with node.id "<namespace>/<pod>", the key of a
// workload of the registry. Proxyless gRPC nodes (the default) receive
// server Listeners for the addresses they ask for, an inbound
// RouteConfiguration that carries the RBAC as RBACPerRoute, and client
// Listeners, Clusters and ClusterLoadAssignments for the services they
// dial; TLS material comes from certificate-provider plugin instances
// (file_watcher). Envoy nodes (node metadata "kordon.dev/proxy": "envoy")
// receive inbound Listeners with HTTP and network RBAC filters and their
// SVID and trust bundles as SDS Secrets.
//
// Every snapshot is checked with Snapshot.Consistent and every resource
// with ValidateAll before it is served. ACKs and NACKs are recorded per node
// and type (matched by response nonce), logged, counted in metrics and
// served as JSON by StatusHandler.
//
// Streams are authenticated (peer SVID or a service-account token) and a
// stream may only ask for the node whose workload identity it proved.
package xds
