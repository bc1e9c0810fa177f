package main

import (
	"context"

	"github.com/kordon-dev/kordon/internal/handover"
)

// joinHandover registers this process among the kordon dev processes of
// its network namespace (they share the DNS address and the nftables
// table), so a successor started beside it (a restart without a gap) is
// seen: /readyz answers 503 here once one runs, and the table is removed
// at exit only by the last one.
func (d *devServer) joinHandover() error {
	dir, err := handover.NetNSDir("")
	if err != nil {
		return err
	}
	m, err := handover.Join(dir)
	if err != nil {
		return err
	}
	d.member = m
	// First added, so the last closer: the table's fate is decided while
	// this process still counts as running.
	d.closers = append(d.closers, func(context.Context) error { return m.Leave() })
	return nil
}
