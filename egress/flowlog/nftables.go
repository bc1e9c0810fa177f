package flowlog

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// conntrackTable is the table New adds so that the kernel tracks
// connections in the namespace at all.
const conntrackTable = "kordon-flowlog"

// ensureConntrack adds table inet kordon-flowlog with one regular
// (hookless) chain holding one rule that loads ct state. Why: the kernel
// registers conntrack's hooks in a namespace only while some rule uses
// conntrack; with none (no kordon firewall on the node) there are no
// entries, no events and so no flow log. A chain without a hook is never
// traversed: it costs no packet anything. An old copy (a crash) is
// replaced in the same transaction.
func ensureConntrack(nsfd int) error {
	c, err := nftables.New(nftables.WithNetNSFd(nsfd))
	if err != nil {
		return fmt.Errorf("flowlog: nftables: %w", err)
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: conntrackTable})
	c.FlushTable(tbl)
	ch := c.AddChain(&nftables.Chain{Name: "conntrack", Table: tbl})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{&expr.Ct{Register: 1, Key: expr.CtKeySTATE}}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("flowlog: nftables: table inet %s: %w", conntrackTable, err)
	}
	return nil
}

// removeConntrackTable deletes the table ensureConntrack added.
func removeConntrackTable(nsfd int) error {
	c, err := nftables.New(nftables.WithNetNSFd(nsfd))
	if err != nil {
		return fmt.Errorf("flowlog: nftables: %w", err)
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: conntrackTable})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("flowlog: nftables: delete table inet %s: %w", conntrackTable, err)
	}
	return nil
}
