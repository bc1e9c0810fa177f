package egress

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultDNSInterface is the dummy interface that holds the node-local DNS
// address (NodeLocal DNSCache's convention: a dummy interface, so the
// address is local on every node and routed nowhere).
const DefaultDNSInterface = "kordon-dns"

// EnsureLocalAddress makes addr local to this network namespace: when no
// interface has it, a dummy interface ifname (created if missing, set up)
// gets it as a /32 or /128 (lo when the kernel has no dummy driver). The node agent calls it before listening on
// its DNS address, since every workload's DNS is redirected there: a
// redirect to an address that is not local would send every pod's DNS
// nowhere. It is idempotent and leaves existing addresses alone.
func EnsureLocalAddress(ifname string, addr netip.Addr) error {
	if ifname == "" {
		ifname = DefaultDNSInterface
	}
	addr = addr.Unmap()
	if local, err := isLocal(addr); err != nil {
		return fmt.Errorf("egress: %w", err)
	} else if local {
		return nil
	}
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		var notFound netlink.LinkNotFoundError
		if !errors.As(err, &notFound) {
			return fmt.Errorf("egress: interface %s: %w", ifname, err)
		}
		err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: ifname}})
		switch {
		case errors.Is(err, unix.EOPNOTSUPP):
			// No dummy driver in this kernel: an address on lo is just as
			// local.
			ifname = "lo"
		case err != nil:
			return fmt.Errorf("egress: create dummy interface %s: %w", ifname, err)
		}
		if link, err = netlink.LinkByName(ifname); err != nil {
			return fmt.Errorf("egress: interface %s: %w", ifname, err)
		}
	}
	bits := 32
	if addr.Is6() {
		bits = 128
	}
	nl := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(bits, bits)}}
	if addr.Is6() {
		nl.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(link, nl); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("egress: add %s to %s: %w", addr, ifname, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("egress: set %s up: %w", ifname, err)
	}
	return nil
}

// isLocal reports whether some interface of this namespace has addr.
func isLocal(addr netip.Addr) (bool, error) {
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(nil, family)
	if err != nil {
		return false, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
			return true, nil
		}
	}
	return false, nil
}
