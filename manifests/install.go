package manifests

import (
	"bytes"

	"sigs.k8s.io/yaml"
)

// Namespace is where kordon runs; its policies are mesh-wide.
const Namespace = "kordon-system"

// Image is the container image the install uses.
const Image = "ghcr.io/kordon-dev/kordon:latest"

// Ports of the controller.
const (
	XDSPort      = 15010
	IssuancePort = 15012
	HTTPPort     = 9080
	// FeedPort serves the alert feed over HTTPS: node agents with their
	// SVID, people and tools with a bearer token (TokenReview and
	// SubjectAccessReview on egressalerts.security.kordon.dev).
	FeedPort = 9443
)

// NodeCIDR is the address range of the nodes (and the API server's
// network): node agents run with hostNetwork, so their traffic to the
// feed comes from node addresses, which no podSelector matches. Set it
// to yours in the NetworkPolicy.
const NodeCIDR = "172.18.0.0/16"

// FeedAccessLabel on a namespace admits its pods to the controller's
// feed port in the NetworkPolicy (a security team's tools); each request
// still needs a token with RBAC on egressalerts.
const FeedAccessLabel = "security.kordon.dev/alert-feed"

// NodeLocalDNS is the link-local address the node agent serves DNS on,
// the NodeLocal DNSCache convention: point kubelet's --cluster-dns (or a
// pod's dnsConfig.nameservers) at it.
const NodeLocalDNS = "169.254.20.10"

var labels = map[string]any{"app.kubernetes.io/part-of": "kordon"}

func meta(name string, namespaced bool, extra map[string]any) map[string]any {
	l := map[string]any{"app.kubernetes.io/part-of": "kordon"}
	for k, v := range extra {
		l[k] = v
	}
	m := map[string]any{"name": name, "labels": l}
	if namespaced {
		m["namespace"] = Namespace
	}
	return m
}

func restrictedContainerSecurity() map[string]any {
	return map[string]any{
		"allowPrivilegeEscalation": false,
		"readOnlyRootFilesystem":   true,
		"runAsNonRoot":             true,
		"runAsUser":                65532,
		"capabilities":             map[string]any{"drop": []any{"ALL"}},
		"seccompProfile":           map[string]any{"type": "RuntimeDefault"},
	}
}

func rule(groups, resources, verbs []any) map[string]any {
	return map[string]any{"apiGroups": groups, "resources": resources, "verbs": verbs}
}

var read = []any{"get", "list", "watch"}

// installObjects are the non-CRD objects of install.yaml, in apply order.
func installObjects() []map[string]any {
	ctrl := map[string]any{"app.kubernetes.io/name": "kordon-controller"}
	node := map[string]any{"app.kubernetes.io/name": "kordon-node"}
	return append([]map[string]any{
		{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": Namespace, "labels": map[string]any{
			"app.kubernetes.io/part-of": "kordon",
			// The node agent needs hostNetwork and NET_BIND_SERVICE, which
			// the restricted level forbids; the controller meets restricted.
			"pod-security.kubernetes.io/enforce": "privileged",
			"pod-security.kubernetes.io/warn":    "restricted",
		}}},
		{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("kordon-controller", true, ctrl)},
		{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("kordon-node", true, node)},
		{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta("kordon-controller", false, ctrl), "rules": []any{
			rule([]any{""}, []any{"pods", "namespaces", "serviceaccounts"}, read),
			rule([]any{"security.kordon.dev"}, []any{"authorizationpolicies", "egresspolicies", "requestauthentications"}, read),
			rule([]any{"security.kordon.dev"}, []any{"authorizationpolicies/status", "egresspolicies/status", "requestauthentications/status"}, []any{"get", "update", "patch"}),
			// Istio's own objects, read only with --istio-policies.
			rule([]any{"security.istio.io"}, []any{"authorizationpolicies", "requestauthentications"}, read),
			// The alert feed and webhooks read alerts; the leader deletes
			// expired ones (retention, per-namespace cap); the feed's
			// /v1/quarantines lifts quarantines for callers allowed to.
			rule([]any{"security.kordon.dev"}, stateResources, read),
			rule([]any{"security.kordon.dev"}, stateResources, []any{"delete"}),
			rule([]any{"authentication.k8s.io"}, []any{"tokenreviews"}, []any{"create"}),
			// The feed's callers: may this token's user list egressalerts?
			rule([]any{"authorization.k8s.io"}, []any{"subjectaccessreviews"}, []any{"create"}),
			rule([]any{"", "events.k8s.io"}, []any{"events"}, []any{"create", "patch"}),
		}},
		{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta("kordon-controller", false, ctrl),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kordon-controller"},
			"subjects": []any{map[string]any{"kind": "ServiceAccount", "name": "kordon-controller", "namespace": Namespace}}},
		// Secrets and Leases only in kordon-system: the CA Secret and the
		// leader-election Lease.
		{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta("kordon-controller", true, ctrl), "rules": []any{
			rule([]any{""}, []any{"secrets"}, []any{"get", "list", "watch", "create", "update"}),
			rule([]any{"coordination.k8s.io"}, []any{"leases"}, []any{"get", "create", "update"}),
			// The trust bundle published for node agents, and the leader's
			// alert delivery positions (kordon-alert-delivery).
			rule([]any{""}, []any{"configmaps"}, []any{"get", "create", "update", "patch"}),
		}},
		{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta("kordon-controller", true, ctrl),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kordon-controller"},
			"subjects": []any{map[string]any{"kind": "ServiceAccount", "name": "kordon-controller", "namespace": Namespace}}},
		{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta("kordon-node", false, node), "rules": []any{
			// kordon node --http-auth: who may read alerts or lift quarantines here.
			rule([]any{"authentication.k8s.io"}, []any{"tokenreviews"}, []any{"create"}),
			rule([]any{"authorization.k8s.io"}, []any{"subjectaccessreviews"}, []any{"create"}),
			rule([]any{""}, []any{"pods", "namespaces"}, read),
			rule([]any{"security.kordon.dev"}, []any{"egresspolicies"}, read),
			rule([]any{"", "events.k8s.io"}, []any{"events"}, []any{"create", "patch"}),
			// Alerts and quarantines of this node's pods only: the
			// kordon-node-scope admission policy enforces the node.
			rule([]any{"security.kordon.dev"}, stateResources, []any{"get", "list", "watch", "create", "update"}),
		}},
		{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta("kordon-node", true, node), "rules": []any{
			rule([]any{""}, []any{"configmaps"}, []any{"get"}),
		}},
		{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta("kordon-node", true, node),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kordon-node"},
			"subjects": []any{map[string]any{"kind": "ServiceAccount", "name": "kordon-node", "namespace": Namespace}}},
		{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta("kordon-node", false, node),
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kordon-node"},
			"subjects": []any{map[string]any{"kind": "ServiceAccount", "name": "kordon-node", "namespace": Namespace}}},
		{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("kordon-controller", true, ctrl), "spec": map[string]any{
			"replicas": 2,
			"selector": map[string]any{"matchLabels": ctrl},
			"template": map[string]any{
				"metadata": map[string]any{"labels": merge(labels, ctrl)},
				"spec": map[string]any{
					"serviceAccountName": "kordon-controller",
					"securityContext":    map[string]any{"runAsNonRoot": true, "seccompProfile": map[string]any{"type": "RuntimeDefault"}},
					"affinity": map[string]any{"podAntiAffinity": map[string]any{"preferredDuringSchedulingIgnoredDuringExecution": []any{
						map[string]any{"weight": 100, "podAffinityTerm": map[string]any{"topologyKey": "kubernetes.io/hostname", "labelSelector": map[string]any{"matchLabels": ctrl}}},
					}}},
					"containers": []any{map[string]any{
						"name":  "controller",
						"image": Image,
						"args": []any{"controller", "--namespace=" + Namespace,
							"--xds-listen=:15010", "--issuance-listen=:15012", "--http-listen=:9080", "--feed-listen=:9443"},
						"env": []any{map[string]any{"name": "POD_NAME", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "metadata.name"}}}},
						"ports": []any{
							map[string]any{"name": "xds", "containerPort": XDSPort},
							map[string]any{"name": "issuance", "containerPort": IssuancePort},
							map[string]any{"name": "http", "containerPort": HTTPPort},
							map[string]any{"name": "feed", "containerPort": FeedPort},
						},
						"readinessProbe":  map[string]any{"httpGet": map[string]any{"path": "/readyz", "port": "http"}},
						"livenessProbe":   map[string]any{"httpGet": map[string]any{"path": "/healthz", "port": "http"}},
						"resources":       map[string]any{"requests": map[string]any{"cpu": "100m", "memory": "128Mi"}, "limits": map[string]any{"memory": "1Gi"}},
						"securityContext": restrictedContainerSecurity(),
						"volumeMounts":    []any{map[string]any{"name": "alerts", "mountPath": "/var/lib/kordon"}},
					}},
					"volumes": []any{map[string]any{"name": "alerts", "emptyDir": map[string]any{}}},
				},
			},
		}},
		{"apiVersion": "v1", "kind": "Service", "metadata": meta("kordon-controller", true, ctrl), "spec": map[string]any{
			"selector": ctrl,
			"ports": []any{
				map[string]any{"name": "grpc-xds", "port": XDSPort, "targetPort": "xds"},
				map[string]any{"name": "grpc-issuance", "port": IssuancePort, "targetPort": "issuance"},
				map[string]any{"name": "http", "port": HTTPPort, "targetPort": "http"},
				map[string]any{"name": "https-feed", "port": FeedPort, "targetPort": "feed"},
			},
		}},
		{"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta("kordon-controller", true, ctrl), "spec": map[string]any{
			"minAvailable": 1, "selector": map[string]any{"matchLabels": ctrl},
		}},
		{"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta("kordon-node", true, node), "spec": map[string]any{
			"selector": map[string]any{"matchLabels": node},
			// Surge: the new agent starts beside the old one on the node
			// (both hostNetwork: DNS, HTTP and the nftables table shared,
			// see internal/handover), becomes ready, and only then is the
			// old one sent SIGTERM: it stops taking datagrams and drains,
			// so pods on the node never lose a DNS query in a rollout.
			"updateStrategy": map[string]any{"type": "RollingUpdate", "rollingUpdate": map[string]any{"maxSurge": 1, "maxUnavailable": 0}},
			"template": map[string]any{
				"metadata": map[string]any{"labels": merge(labels, node)},
				"spec": map[string]any{
					"serviceAccountName": "kordon-node",
					// hostNetwork: DNS is served on the node-local address
					// and source IPs of pods are seen unchanged.
					"hostNetwork": true,
					// hostPID: SO_PEERCRED PIDs of Workload API callers must
					// resolve in /proc to find their pod (as SPIRE's agent).
					"hostPID": true,
					// ClusterFirstWithHostNet, as Cilium's agent: the agent dials
					// kordon-controller.<ns>.svc (issuance, feed), which only
					// the cluster DNS knows; with Default it would ask the
					// node's resolv.conf. Where kubelet's --cluster-dns is
					// this agent's own address, the agent's lookups are
					// answered by the running agent (or retried until it
					// serves), forwarded to the upstream like any pod's.
					"dnsPolicy":         "ClusterFirstWithHostNet",
					"priorityClassName": "system-node-critical",
					"tolerations":       []any{map[string]any{"operator": "Exists"}},
					// SIGTERM comes only once the successor is ready, so no
					// preStop wait is needed; the grace covers the drain:
					// queued and in-flight DNS (5 s at most), HTTP requests
					// in flight (10 s), then the flow log's and the alert
					// log's flush.
					"terminationGracePeriodSeconds": 30,
					// /proc/sys is read-only in the agent's container: a privileged
					// init container turns on conntrack accounting (byte counts in
					// the flow log) and exits.
					"initContainers": []any{map[string]any{
						"name": "host-setup", "image": Image, "args": []any{"node", "--prepare-host"},
						"securityContext": map[string]any{"privileged": true},
						"resources":       map[string]any{"requests": map[string]any{"cpu": "10m", "memory": "16Mi"}, "limits": map[string]any{"memory": "64Mi"}},
					}},
					"containers": []any{map[string]any{
						"name":  "node",
						"image": Image,
						"args": []any{"node", "--node=$(NODE_NAME)", "--dns-listen=" + NodeLocalDNS + ":53",
							"--upstream=$(UPSTREAM_DNS)",
							"--state-dir=/var/lib/kordon", "--http-listen=127.0.0.1:9081", "--namespace=" + Namespace,
							"--controller-issuance=kordon-controller." + Namespace + ".svc:15012",
							"--workload-api-socket=/run/kordon/sockets/agent.sock", "--token-file=/var/run/secrets/kordon/token",
							// The egress firewall: pods under an enforcing EgressPolicy reach
							// only what their own DNS answers gave them; every pod's DNS is
							// redirected here and every egress flow is logged.
							"--egress-firewall", "--internal-cidr=$(POD_CIDR)", "--internal-cidr=$(SERVICE_CIDR)"},
						"env": []any{
							map[string]any{"name": "NODE_NAME", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "spec.nodeName"}}},
							// The cluster DNS Service IP (kube-dns): set it to yours.
							map[string]any{"name": "UPSTREAM_DNS", "value": "10.96.0.10:53"},
							// The pod and service CIDRs, never filtered by the egress
							// firewall: set them to yours.
							map[string]any{"name": "POD_CIDR", "value": "10.244.0.0/16"},
							map[string]any{"name": "SERVICE_CIDR", "value": "10.96.0.0/12"},
						},
						// No ports: with hostNetwork they default to hostPorts, and
						// the scheduler would keep the surge pod off a node whose old
						// pod holds them, so the rollout would never start
						// (kubernetes/kubernetes#106417). DNS is on NodeLocalDNS:53
						// (udp and tcp), shared by the two pods with SO_REUSEPORT.
						"volumeMounts": []any{
							map[string]any{"name": "state", "mountPath": "/var/lib/kordon"},
							map[string]any{"name": "sockets", "mountPath": "/run/kordon/sockets"},
							map[string]any{"name": "kordon-token", "mountPath": "/var/run/secrets/kordon", "readOnly": true},
						},
						// /readyz answers 200 once this agent serves DNS with
						// the firewall programmed, and 503 while a newer agent
						// runs beside it: with SO_REUSEPORT either agent may
						// answer the probe, so a 200 always comes from the
						// newest one, ready. The HTTP port is on loopback:
						// the kubelet probes the node's 127.0.0.1.
						"readinessProbe": map[string]any{"httpGet": map[string]any{"host": "127.0.0.1", "port": 9081, "path": "/readyz"}, "periodSeconds": 2, "failureThreshold": 3},
						"livenessProbe":  map[string]any{"httpGet": map[string]any{"host": "127.0.0.1", "port": 9081, "path": "/healthz"}, "periodSeconds": 10, "failureThreshold": 6},
						"resources":      map[string]any{"requests": map[string]any{"cpu": "50m", "memory": "64Mi"}, "limits": map[string]any{"memory": "512Mi"}},
						"securityContext": map[string]any{
							"allowPrivilegeEscalation": false,
							"readOnlyRootFilesystem":   true,
							// NET_ADMIN: nftables and conntrack (the egress firewall and flow log).
							"capabilities":   map[string]any{"drop": []any{"ALL"}, "add": []any{"NET_BIND_SERVICE", "NET_ADMIN"}},
							"seccompProfile": map[string]any{"type": "RuntimeDefault"},
						},
					}},
					// Alert log, webhook cursor and quarantines survive restarts.
					"volumes": []any{
						map[string]any{"name": "state", "hostPath": map[string]any{"path": "/var/lib/kordon", "type": "DirectoryOrCreate"}},
						// Pods mount this directory to reach the Workload API.
						map[string]any{"name": "sockets", "hostPath": map[string]any{"path": "/run/kordon/sockets", "type": "DirectoryOrCreate"}},
						// A pod-bound token for the issuance API (audience kordon).
						map[string]any{"name": "kordon-token", "projected": map[string]any{"sources": []any{map[string]any{
							"serviceAccountToken": map[string]any{"audience": "kordon", "expirationSeconds": 3600, "path": "token"},
						}}}},
					},
				},
			},
		}},
		// Only the controller's ports are reachable. xDS and issuance from
		// every pod (workloads fetch their SVIDs and configuration; both
		// authenticate each caller); metrics and probes from inside the
		// cluster; the alert feed only from node agents (node addresses),
		// the API server's network (kubectl port-forward and the service
		// proxy arrive from there) and namespaces labelled
		// security.kordon.dev/alert-feed=allowed. The feed authenticates
		// every request as well: this is the second wall, not the first.
		{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("kordon-controller", true, ctrl), "spec": map[string]any{
			"podSelector": map[string]any{"matchLabels": ctrl},
			"policyTypes": []any{"Ingress"},
			"ingress": []any{
				map[string]any{
					"from": []any{map[string]any{"namespaceSelector": map[string]any{}}},
					"ports": []any{
						map[string]any{"port": XDSPort, "protocol": "TCP"},
						map[string]any{"port": IssuancePort, "protocol": "TCP"},
						map[string]any{"port": HTTPPort, "protocol": "TCP"},
					},
				},
				map[string]any{
					"from": []any{
						map[string]any{"ipBlock": map[string]any{"cidr": NodeCIDR}},
						map[string]any{"namespaceSelector": map[string]any{"matchLabels": map[string]any{FeedAccessLabel: "allowed"}}},
					},
					"ports": []any{map[string]any{"port": FeedPort, "protocol": "TCP"}},
				},
			},
		}},
	}, stateInstallObjects()...)
}

func merge(a, b map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// render joins objects as a multi-document YAML stream.
func render(header string, objs []map[string]any) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(header)
	for _, o := range objs {
		y, err := yaml.Marshal(o)
		if err != nil {
			return nil, err
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	return b.Bytes(), nil
}

// InstallObjects returns every object of install.yaml (CRDs first).
func InstallObjects(typesFile string) ([]map[string]any, error) {
	crds, err := CRDs(typesFile)
	if err != nil {
		return nil, err
	}
	return append(crds, installObjects()...), nil
}

// Generate renders crds.yaml and install.yaml.
func Generate(typesFile string) (map[string][]byte, error) {
	crds, err := CRDs(typesFile)
	if err != nil {
		return nil, err
	}
	const gen = "# Generated by `go run ./manifests/gen` from policy/types.go and manifests/*.go. DO NOT EDIT.\n"
	c, err := render(gen, crds)
	if err != nil {
		return nil, err
	}
	all, err := render(gen+"# Install kordon cluster-wide: kubectl apply --server-side -f manifests/install.yaml\n", append(crds, installObjects()...))
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{"crds.yaml": c, "install.yaml": all}
	chart, err := chartFiles(append(crds, installObjects()...))
	if err != nil {
		return nil, err
	}
	for name, data := range chart {
		files[name] = data
	}
	return files, nil
}
