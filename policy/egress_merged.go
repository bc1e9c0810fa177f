package policy

import (
	"strconv"
	"strings"
	"sync"
)

// mergedThreshold is the number of selecting policies from which Decide
// looks names up in merged sets (one pass) instead of policy by policy.
const mergedThreshold = 4

// mergedSets index the patterns of a workload's selecting policies by
// domain, each mapped to the first policy (in the workload's order) that
// has it, so a lookup costs O(labels) however many policies select the
// workload. Workloads selected by the same policies share one instance.
type mergedSets struct {
	enforceDeny, auditDeny, allow mergedSet
}

type mergedSet struct {
	exact    map[string]int32
	wildcard map[string]int32
}

func (m *mergedSet) add(s *DomainSet, i int32) {
	if s == nil {
		return
	}
	for _, p := range s.patterns {
		t := &m.exact
		if p.Wildcard {
			t = &m.wildcard
		}
		if *t == nil {
			*t = map[string]int32{}
		}
		if _, seen := (*t)[p.Domain]; !seen {
			(*t)[p.Domain] = i
		}
	}
}

// first returns the lowest policy index with a pattern matching name, or
// -1: the policy the policy-by-policy loop would stop at.
func (m *mergedSet) first(name string) int32 {
	best := int32(-1)
	if i, ok := m.exact[name]; ok {
		best = i
	}
	if len(m.wildcard) == 0 {
		return best
	}
	for k := 0; k < len(name); k++ {
		if name[k] == '.' {
			if i, ok := m.wildcard[name[k+1:]]; ok && (best < 0 || i < best) {
				best = i
			}
		}
	}
	return best
}

// merged returns the shared merged sets for a selection of policies.
func (ix *EgressIndex) merged(policies []*compiledEgress, ids []int) *mergedSets {
	var key strings.Builder
	for _, id := range ids {
		key.WriteString(strconv.Itoa(id))
		key.WriteByte(',')
	}
	ix.mergedMu.Lock()
	defer ix.mergedMu.Unlock()
	if m, ok := ix.mergedBy[key.String()]; ok {
		return m
	}
	m := &mergedSets{}
	for i, c := range policies {
		if c.audit {
			m.auditDeny.add(c.deny, int32(i))
		} else {
			m.enforceDeny.add(c.deny, int32(i))
		}
		m.allow.add(c.allow, int32(i))
	}
	if ix.mergedBy == nil {
		ix.mergedBy = map[string]*mergedSets{}
	}
	ix.mergedBy[key.String()] = m
	return m
}

// mergedCache is embedded in EgressIndex.
type mergedCache struct {
	mergedMu sync.Mutex
	mergedBy map[string]*mergedSets // by the selected policies' indices
}
