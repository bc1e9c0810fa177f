package manifests

// The chart's values: each is a place in the install objects (install.go)
// that a user may change. Defaults without def are read from those
// objects, so the chart at its defaults is install.yaml.

const (
	ctrlDeploy = "Deployment/kordon-controller"
	nodeDS     = "DaemonSet/kordon-node"
	ctrlPod    = "spec.template.spec"
	ctrlC      = "spec.template.spec.containers[name=controller]"
	nodeC      = "spec.template.spec.containers[name=node]"
	nodeInit   = "spec.template.spec.initContainers[name=host-setup]"
)

func kordonChart() chartSpec {
	repo, tag := splitImage(Image)
	return chartSpec{
		sections: map[string]string{
			"namespace":                 "The namespace is the release's (helm install -n kordon-system --create-namespace).",
			"image":                     "The image of the controller and the node agent.",
			"crds":                      "AuthorizationPolicy, EgressPolicy and kordon's other CustomResourceDefinitions.",
			"controller":                "kordon controller: CA and SVID issuance, xDS, policy status, the alert feed.",
			"node":                      "kordon node: the DaemonSet serving DNS to every pod of its node, the egress firewall and the Workload API.",
			"node.dns":                  "The node agent's resolver.",
			"node.egressFirewall":       "The egress firewall (nftables and conntrack on the host): pods under an enforcing EgressPolicy reach only addresses their own allowed DNS answers gave them; every pod's DNS is redirected to the agent and every egress flow is logged.",
			"rbac":                      "Roles for people.",
			"monitoring":                "Prometheus Operator and Grafana objects (manifests/monitoring). Off by default: they need the monitoring.coreos.com CRDs.",
			"monitoring.serviceMonitor": "A ServiceMonitor scraping the controllers' /metrics.",
			"monitoring.podMonitor":     "A PodMonitor scraping each node agent's /metrics on node.metricsPort.",
			"monitoring.prometheusRule": "kordon's alerting rules (manifests/monitoring/prometheusrule.yaml).",
			"monitoring.dashboard":      "kordon's Grafana dashboard in a ConfigMap, for the Grafana sidecar that loads labelled ConfigMaps.",
		},
		values: []chartValue{
			{path: "namespace.create", def: false, doc: "Create the release namespace with its Pod Security labels (enforce privileged: the node agent uses hostNetwork). Leave false with --create-namespace, and label the namespace yourself if your cluster enforces a Pod Security level by default."},
			{path: "rootNamespace", def: "", doc: "Namespace whose AuthorizationPolicies and EgressPolicies are mesh-wide (--root-namespace of the controller and the node agents; empty: kordon-system). Set it when you install into another namespace and want the root there."},
			{path: "image.repository", def: repo, doc: "Image repository."},
			{path: "image.tag", def: tag, doc: "Image tag."},
			{path: "image.pullPolicy", def: "", doc: "imagePullPolicy of every container (empty: Kubernetes' default)."},
			{path: "crds.install", def: true, doc: "Install the CRDs with the chart (they are upgraded with it)."},
			{path: "controller.replicas", doc: "Controller replicas; a Lease elects the one that writes shared state, every replica serves xDS, issuance and the feed."},
			{path: "controller.resources", doc: "Resources of the controller container."},
			{path: "controller.nodeSelector", def: map[string]any{}, doc: "nodeSelector of the controller pods."},
			{path: "controller.tolerations", def: []any{}, doc: "Tolerations of the controller pods."},
			{path: "controller.priorityClassName", def: "", doc: "priorityClassName of the controller pods."},
			{path: "node.dns.address", doc: "Link-local address the agent serves DNS on (the NodeLocal DNSCache convention): point kubelet's clusterDNS at it. Put on a dummy interface kordon-dns when no interface has it."},
			{path: "node.dns.upstream", doc: "Upstream resolver, IP:PORT: your cluster DNS Service (kube-dns)."},
			{path: "node.dns.blockRcode", def: "", doc: "Response code for blocked names, NXDOMAIN or REFUSED (empty: NXDOMAIN)."},
			{path: "node.dns.unknownClients", def: "", doc: "Policy for source addresses that are no known pod: allow, deny (in-cluster names only) or refuse (empty: allow)."},
			{path: "node.dns.rateLimit", def: 0, doc: "Queries per second per client address (0: unlimited)."},
			{path: "node.dns.cacheSize", def: 0, doc: "Maximum cached answers (0: the agent's default, 100000)."},
			{path: "node.egressFirewall.enabled", def: true, doc: "Program the firewall (needs NET_ADMIN and a privileged init container that turns on conntrack accounting). Off: DNS filtering, the query log and DNS-based detection only."},
			{path: "node.egressFirewall.podCIDR", doc: "The cluster's pod CIDR, never filtered."},
			{path: "node.egressFirewall.serviceCIDR", doc: "The cluster's service CIDR, never filtered."},
			{path: "node.egressFirewall.extraInternalCIDRs", def: []any{}, doc: "More CIDRs never filtered (e.g. a second pod CIDR, node addresses)."},
			{path: "node.egressFirewall.ttlGrace", def: "", doc: "How long past an answer's TTL its addresses stay reachable for new connections, a Go duration (empty: 60s)."},
			{path: "node.detection.alertCooldown", def: "", doc: "Detection defaults: repeats of an alert (workload, kind, domain) within this Go duration are not recorded again (empty: the agent's default, 10m). Detection sensitivity and the action on detection are per EgressPolicy (spec.detection)."},
			{path: "node.metricsPort", def: 0, doc: "Serve /metrics (and /healthz, /readyz) on this port of every node address, for monitoring.podMonitor (0: only on 127.0.0.1:9081 with the agent's other APIs)."},
			{path: "node.resources", doc: "Resources of the node agent container."},
			{path: "node.nodeSelector", def: map[string]any{}, doc: "nodeSelector of the node agent pods."},
			{path: "node.tolerations", doc: "Tolerations of the node agent pods: every node by default, as the agent is each pod's resolver."},
			{path: "node.priorityClassName", doc: "priorityClassName of the node agent pods."},
			{path: "rbac.securityViewer.create", def: true, optional: true, doc: "Create the kordon-security-viewer ClusterRole (read alerts and quarantines, lift quarantines) for the security team to bind."},
			{path: "monitoring.serviceMonitor.enabled", def: false, doc: "Create the ServiceMonitor."},
			{path: "monitoring.serviceMonitor.interval", def: "30s", doc: "Scrape interval."},
			{path: "monitoring.serviceMonitor.labels", def: map[string]any{}, doc: "Extra labels (e.g. the release label your Prometheus selects)."},
			{path: "monitoring.podMonitor.enabled", def: false, doc: "Create the PodMonitor (set node.metricsPort too)."},
			{path: "monitoring.podMonitor.interval", def: "30s", doc: "Scrape interval."},
			{path: "monitoring.podMonitor.labels", def: map[string]any{}, doc: "Extra labels."},
			{path: "monitoring.prometheusRule.enabled", def: false, doc: "Create the PrometheusRule."},
			{path: "monitoring.prometheusRule.labels", def: map[string]any{}, doc: "Extra labels (e.g. the label your Prometheus' ruleSelector selects)."},
			{path: "monitoring.dashboard.enabled", def: false, doc: "Create the dashboard ConfigMap (label grafana_dashboard: \"1\")."},
			{path: "monitoring.dashboard.labels", def: map[string]any{}, doc: "Extra labels."},
		},
		edits: []edit{
			{obj: ctrlDeploy, path: "spec.replicas", op: opSet, value: "controller.replicas"},
			{obj: ctrlDeploy, path: ctrlC + ".args[^--namespace=]", op: opWith, format: "--root-namespace=%v", value: "rootNamespace"},
			{obj: nodeDS, path: nodeC + ".args[^--namespace=]", op: opWith, format: "--root-namespace=%v", value: "rootNamespace"},
			{obj: ctrlDeploy, path: ctrlC + ".resources", op: opSet, value: "controller.resources"},
			{obj: ctrlDeploy, path: ctrlC, op: opInsert, key: "imagePullPolicy", value: "image.pullPolicy"},
			{obj: ctrlDeploy, path: ctrlPod, op: opInsert, key: "nodeSelector", value: "controller.nodeSelector"},
			{obj: ctrlDeploy, path: ctrlPod, op: opInsert, key: "tolerations", value: "controller.tolerations"},
			{obj: ctrlDeploy, path: ctrlPod, op: opInsert, key: "priorityClassName", value: "controller.priorityClassName"},

			{obj: nodeDS, path: nodeC + ".args[^--dns-listen=]", op: opArg, prefix: "--dns-listen=", suffix: ":53", value: "node.dns.address"},
			{obj: nodeDS, path: nodeC + ".env[name=UPSTREAM_DNS].value", op: opSet, value: "node.dns.upstream"},
			{obj: nodeDS, path: nodeC + ".args[^--namespace=]", op: opWith, format: "--block-rcode=%v", value: "node.dns.blockRcode"},
			{obj: nodeDS, path: nodeC + ".args[^--namespace=]", op: opWith, format: "--unknown-clients=%v", value: "node.dns.unknownClients"},
			{obj: nodeDS, path: nodeC + ".args[^--namespace=]", op: opWith, format: "--rate-limit=%v", value: "node.dns.rateLimit"},
			{obj: nodeDS, path: nodeC + ".args[^--namespace=]", op: opWith, format: "--cache-size=%v", value: "node.dns.cacheSize"},
			{obj: nodeDS, path: nodeC + ".args[^--http-listen=]", op: opWith, format: "--metrics-listen=:%v", value: "node.metricsPort"},
			{obj: nodeDS, path: nodeC + ".args[^--http-listen=]", op: opWith, format: "--alert-cooldown=%v", value: "node.detection.alertCooldown"},
			{obj: nodeDS, path: nodeC + ".args[=--internal-cidr=$(SERVICE_CIDR)]", op: opRange, format: "--internal-cidr=%v", value: "node.egressFirewall.extraInternalCIDRs", cond: "node.egressFirewall.enabled"},
			{obj: nodeDS, path: nodeC + ".args[=--internal-cidr=$(SERVICE_CIDR)]", op: opWith, format: "--egress-ttl-grace=%v", value: "node.egressFirewall.ttlGrace", cond: "node.egressFirewall.enabled"},
			{obj: nodeDS, path: nodeC + ".args[=--egress-firewall]", op: opWhen, value: "node.egressFirewall.enabled"},
			{obj: nodeDS, path: nodeC + ".args[=--internal-cidr=$(POD_CIDR)]", op: opWhen, value: "node.egressFirewall.enabled"},
			{obj: nodeDS, path: nodeC + ".args[=--internal-cidr=$(SERVICE_CIDR)]", op: opWhen, value: "node.egressFirewall.enabled"},
			{obj: nodeDS, path: nodeC + ".env[name=POD_CIDR].value", op: opSet, value: "node.egressFirewall.podCIDR"},
			{obj: nodeDS, path: nodeC + ".env[name=SERVICE_CIDR].value", op: opSet, value: "node.egressFirewall.serviceCIDR"},
			{obj: nodeDS, path: nodeC + ".env[name=POD_CIDR]", op: opWhen, value: "node.egressFirewall.enabled"},
			{obj: nodeDS, path: nodeC + ".env[name=SERVICE_CIDR]", op: opWhen, value: "node.egressFirewall.enabled"},
			{obj: nodeDS, path: nodeC + ".securityContext.capabilities.add[=NET_ADMIN]", op: opWhen, value: "node.egressFirewall.enabled"},
			{obj: nodeDS, path: nodeInit, op: opWhen, value: "node.egressFirewall.enabled"},
			{obj: nodeDS, path: nodeC + ".resources", op: opSet, value: "node.resources"},
			{obj: nodeDS, path: nodeC, op: opInsert, key: "imagePullPolicy", value: "image.pullPolicy"},
			{obj: nodeDS, path: nodeInit, op: opInsert, key: "imagePullPolicy", value: "image.pullPolicy"},
			{obj: nodeDS, path: ctrlPod, op: opInsert, key: "nodeSelector", value: "node.nodeSelector"},
			{obj: nodeDS, path: ctrlPod + ".tolerations", op: opSet, value: "node.tolerations"},
			{obj: nodeDS, path: ctrlPod + ".priorityClassName", op: opSet, value: "node.priorityClassName"},

			{obj: "ServiceMonitor/kordon-controller", path: "spec.endpoints[port=http].interval", op: opSet, value: "monitoring.serviceMonitor.interval"},
			{obj: "ServiceMonitor/kordon-controller", path: "metadata.labels", op: opKeys, value: "monitoring.serviceMonitor.labels"},
			{obj: "PodMonitor/kordon-node", path: "spec.podMetricsEndpoints[path=/metrics].interval", op: opSet, value: "monitoring.podMonitor.interval"},
			{obj: "PodMonitor/kordon-node", path: "spec.podMetricsEndpoints[path=/metrics].relabelings[targetLabel=__address__].replacement", op: opArg, prefix: "$1:", value: "node.metricsPort"},
			{obj: "PodMonitor/kordon-node", path: "metadata.labels", op: opKeys, value: "monitoring.podMonitor.labels"},
			{obj: "PrometheusRule/kordon", path: "metadata.labels", op: opKeys, value: "monitoring.prometheusRule.labels"},
			{obj: "ConfigMap/kordon-grafana-dashboard", path: "metadata.labels", op: opKeys, value: "monitoring.dashboard.labels"},
		},
		when: []objectWhen{
			{sel: "Namespace/*", value: "namespace.create"},
			{sel: "CustomResourceDefinition/*", value: "crds.install"},
			{sel: "ClusterRole/kordon-security-viewer", value: "rbac.securityViewer.create"},
			{sel: "ServiceMonitor/*", value: "monitoring.serviceMonitor.enabled"},
			{sel: "PodMonitor/*", value: "monitoring.podMonitor.enabled"},
			{sel: "PrometheusRule/*", value: "monitoring.prometheusRule.enabled"},
			{sel: "ConfigMap/kordon-grafana-dashboard", value: "monitoring.dashboard.enabled"},
		},
	}
}
