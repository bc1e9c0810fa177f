package main

import (
	"context"
	"path/filepath"

	"github.com/kordon-dev/kordon/internal/handover"
)

// wireHandover registers this agent among the node's agent generations
// (--state-dir/agents, internal/handover), so a rolling update with
// maxSurge runs two side by side: the listeners bind with SO_REUSEPORT,
// the Workload API socket is renamed over the old one, and the old
// agent's /readyz answers 503 once the new one runs. The nftables table
// always stays at exit in node mode (kordon node --cleanup removes it).
func (n *nodeAgent) wireHandover(context.Context) error {
	m, err := handover.Join(filepath.Join(n.f.stateDir, "agents"))
	if err != nil {
		return err
	}
	n.member = m
	n.closers = append(n.closers, m.Leave)
	return nil
}
