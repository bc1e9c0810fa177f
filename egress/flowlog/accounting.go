package flowlog

import "errors"

// EnableAccounting sets net.netfilter.nf_conntrack_acct=1 and
// nf_conntrack_timestamp=1 in a network namespace (0: the current one).
// New does the same, but only warns when it cannot (a container's
// /proc/sys is read-only): `kordon node --prepare-host`, run by the
// DaemonSet's privileged init container, calls this so the agent itself
// needs no privilege beyond NET_ADMIN. A value already set is not written.
func EnableAccounting(netnsFd int) error {
	var errs []error
	for _, key := range []string{"nf_conntrack_acct", "nf_conntrack_timestamp"} {
		if err := setNetfilterSysctl(netnsFd, key, "1"); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
