package manifests

// NodeScopePolicy is the ValidatingAdmissionPolicy that keeps each node
// agent to the EgressAlerts and Quarantines of its own node.
const NodeScopePolicy = "kordon-node-scope"

// SecurityViewerRole is the ClusterRole for the security team: read
// alerts and quarantines, lift quarantines.
const SecurityViewerRole = "kordon-security-viewer"

// stateResources are the cluster-state resources node agents write.
var stateResources = []any{"egressalerts", "quarantines"}

// stateInstallObjects are the install objects of alerts and quarantines
// as cluster state: the node-scope admission policy and its binding, and
// the security team's ClusterRole.
func stateInstallObjects() []map[string]any {
	nodeUser := "system:serviceaccount:" + Namespace + ":kordon-node"
	return []map[string]any{
		{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(SecurityViewerRole, false, nil), "rules": []any{
			rule([]any{"security.kordon.dev"}, stateResources, read),
			rule([]any{"security.kordon.dev"}, []any{"quarantines"}, []any{"delete"}),
		}},
		// RBAC cannot scope a write to "objects of my node": the admission
		// policy compares the node the writer's pod-bound token names (the
		// API server puts it in the user's extra) with the object's
		// spec.node, as the Node authorizer does for kubelets. A token
		// that is not bound to a pod has no node and may write nothing.
		{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": meta(NodeScopePolicy, false, nil), "spec": map[string]any{
			"failurePolicy": "Fail",
			"matchConstraints": map[string]any{"resourceRules": []any{map[string]any{
				"apiGroups": []any{"security.kordon.dev"}, "apiVersions": []any{"v1"},
				"operations": []any{"CREATE", "UPDATE", "DELETE"}, "resources": stateResources,
			}}},
			"matchConditions": []any{map[string]any{"name": "kordon-node-agent", "expression": "request.userInfo.username == '" + nodeUser + "'"}},
			"variables":       []any{map[string]any{"name": "node", "expression": "'authentication.kubernetes.io/node-name' in request.userInfo.extra ? request.userInfo.extra['authentication.kubernetes.io/node-name'][0] : ''"}},
			"validations": []any{
				map[string]any{"expression": "variables.node != ''", "reason": "Forbidden",
					"message": "a kordon node agent must use a token bound to its pod (its node is unknown)"},
				map[string]any{"expression": "request.operation == 'DELETE' || has(object.spec.node) && object.spec.node == variables.node", "reason": "Forbidden",
					"messageExpression": "'the node agent of ' + variables.node + ' may only write objects whose spec.node is ' + variables.node"},
				map[string]any{"expression": "request.operation == 'CREATE' || has(oldObject.spec.node) && oldObject.spec.node == variables.node", "reason": "Forbidden",
					"messageExpression": "'the node agent of ' + variables.node + ' may not change another node\\'s object'"},
			},
		}},
		{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding", "metadata": meta(NodeScopePolicy, false, nil), "spec": map[string]any{
			"policyName": NodeScopePolicy, "validationActions": []any{"Deny"},
		}},
	}
}
