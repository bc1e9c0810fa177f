package main

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/kordon-dev/kordon/internal/handover"
)

// joinHandover registers this process among the kordon dev processes of
// its network namespace that serve the same DNS address (a successor
// binds beside it with SO_REUSEPORT; they also share the nftables table),
// so a successor started beside it (a restart without a gap) is seen:
// /readyz answers 503 here once one runs, and the table is removed at exit
// only by the last one. Another kordon dev on another address is not a
// successor (a test or a second demo beside this one); with port 0 no
// process can share the address, so there is no group to join.
func (d *devServer) joinHandover() error {
	ap, err := netip.ParseAddrPort(d.opts.dnsListen)
	if err != nil || ap.Port() == 0 {
		return nil
	}
	dir, err := handover.NetNSDir("")
	if err != nil {
		return err
	}
	m, err := handover.Join(filepath.Join(dir, "dns-"+strings.NewReplacer(":", "_", "[", "", "]", "").Replace(ap.String())))
	if err != nil {
		return err
	}
	d.member = m
	// First added, so the last closer: the table's fate is decided while
	// this process still counts as running.
	d.closers = append(d.closers, func(context.Context) error { return m.Leave() })
	return nil
}
