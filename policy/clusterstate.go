package policy

import (
	"encoding/json"
	"time"
)

// Kinds kordon writes as cluster state (node agents create them; people
// read them and lift quarantines by deleting them).
const (
	KindEgressAlert = "EgressAlert"
	KindQuarantine  = "Quarantine"
)

// EgressAlert is one series of egress alerts: one workload (pod), one kind
// and one registrable domain or destination address, counted as
// Kubernetes Events series are, in the workload's namespace. The node
// agent of the pod's node writes it from its durable local alert log.
type EgressAlert struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta      `json:"metadata"`
	Spec     EgressAlertSpec `json:"spec"`
}

// EgressAlertSpec is the alert feed's record (the same fields and meaning
// as the JSON of GET /v1/alerts) plus its series.
type EgressAlertSpec struct {
	// Severity is low, medium, high or critical.
	Severity string `json:"severity"`
	// Kind is exfiltration, tunneling, blocked or quarantine.
	Kind string `json:"kind"`
	// Node is the node whose agent raised the alert; only that node's
	// agent may write this object.
	Node string `json:"node"`
	// Pod is the offending pod (empty when the source address is not a
	// known pod).
	Pod string `json:"pod,omitempty"`
	// ServiceAccount of the pod.
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// SPIFFEID of the pod.
	SPIFFEID string `json:"spiffeId,omitempty"`
	// ClientIP is the source address of the queries or connections.
	ClientIP string `json:"clientIp,omitempty"`
	// Domain is the registrable domain (eTLD+1), or the destination
	// address of a direct connection.
	Domain string `json:"domain"`
	// Score is the detector's score.
	Score float64 `json:"score,omitempty"`
	// Evidence holds the detector's measurements.
	Evidence json.RawMessage `json:"evidence,omitempty"`
	// Action is alerted, quarantined or blocked.
	Action string `json:"action"`
	// Policy is the EgressPolicy (namespace/name) that applied.
	Policy string `json:"policy,omitempty"`
	// Message describes the latest occurrence.
	Message string `json:"message,omitempty"`
	// Count is how many alerts of the series the node recorded.
	Count int64 `json:"count"`
	// FirstSeen is the time of the first alert of the series.
	FirstSeen time.Time `json:"firstSeen"`
	// LastSeen is the time of the latest alert of the series.
	LastSeen time.Time `json:"lastSeen"`
	// LastAlertID is the id of the latest alert in the node's local log:
	// a retried write of the same alert does not count it twice.
	LastAlertID uint64 `json:"lastAlertId,omitempty"`
}

// Quarantine blocks domains or destination addresses for a workload until
// it is deleted (kubectl delete quarantine NAME lifts it). It selects the
// workload by its owner or service account, never by pod name, so a
// restarted or rescheduled pod stays quarantined; every node agent
// enforces it for the matching pods of its node.
type Quarantine struct {
	TypeMeta `json:",inline"`
	Metadata ObjectMeta     `json:"metadata"`
	Spec     QuarantineSpec `json:"spec"`
}

// QuarantineSpec says whom and what a Quarantine blocks. Exactly one of
// Owner and ServiceAccount is set.
type QuarantineSpec struct {
	// Owner selects the pods of one controller in the namespace: a
	// Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob (a
	// ReplicaSet's Deployment and a Job's CronJob count as the owner), or
	// a bare Pod.
	Owner *QuarantineOwner `json:"owner,omitempty"`
	// ServiceAccount selects every pod of the namespace running as it.
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// Domains are registrable domains the workload may no longer resolve.
	Domains []string `json:"domains,omitempty"`
	// Addresses are destination IP addresses the workload may no longer
	// connect to.
	Addresses []string `json:"addresses,omitempty"`
	// Node is the node whose agent raised the quarantine (empty when a
	// person created it).
	Node string `json:"node,omitempty"`
	// Pod is the pod that triggered it.
	Pod string `json:"pod,omitempty"`
	// Reason says why.
	Reason string `json:"reason,omitempty"`
	// Alert names the EgressAlert that caused it.
	Alert string `json:"alert,omitempty"`
}

// QuarantineOwner is a workload controller, by kind and name.
type QuarantineOwner struct {
	// Kind is Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob
	// or Pod.
	Kind string `json:"kind"`
	// Name of the controller in the Quarantine's namespace.
	Name string `json:"name"`
}

// QuarantineOwnerKinds are the values of QuarantineOwner.Kind.
var QuarantineOwnerKinds = []string{"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
