package dnsguard

import "strings"

// ClusterQuarantine is one quarantine the cluster holds (a Quarantine
// object) applied to one pod of this node.
type ClusterQuarantine struct {
	Namespace, Pod string
	// Domain is the registrable domain blocked.
	Domain string
	// Name is the Quarantine object, namespace/name, quoted to the client.
	Name string
}

func (q *ClusterQuarantine) key() string {
	return q.Namespace + "/" + q.Pod + "|" + strings.ToLower(strings.TrimSuffix(q.Domain, "."))
}

// SetClusterQuarantines replaces the quarantines held by the cluster.
// A local quarantine (raised by this node's detector) of a pod and
// domain that the previous set held and qs no longer holds is lifted as
// well: the object that recorded it was deleted, which is how a person
// lifts a quarantine in a cluster.
func (in *DetectionInspector) SetClusterQuarantines(qs []ClusterQuarantine) error {
	next := make(map[string]string, len(qs))
	for i := range qs {
		next[qs[i].key()] = qs[i].Name
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	lifted := false
	for k := range in.cluster {
		if _, still := next[k]; still {
			continue
		}
		if _, local := in.quarantines[k]; local {
			delete(in.quarantines, k)
			lifted = true
		}
		// The detector forgets the pair either way, as Lift has it do.
		if i := strings.LastIndexByte(k, '|'); i >= 0 {
			in.forgetLocked(k[:i], k[i+1:])
		}
	}
	in.cluster = next
	in.ncluster.Store(int32(len(next)))
	if !lifted {
		return nil
	}
	in.nq.Store(int32(len(in.quarantines)))
	return in.saveLocked()
}

// clusterQuarantined is Quarantined for the cluster's set; key is
// workload|domain.
func (in *DetectionInspector) clusterQuarantined(key string) (string, bool) {
	if in.ncluster.Load() == 0 {
		return "", false
	}
	in.mu.RLock()
	name, ok := in.cluster[key]
	in.mu.RUnlock()
	if !ok {
		return "", false
	}
	ns, n, _ := strings.Cut(name, "/")
	return "quarantined by kordon (lift with kubectl delete quarantine -n " + ns + " " + n + ")", true
}
