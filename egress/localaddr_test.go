package egress

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/kordon-dev/kordon/internal/netns"
)

// TestEnsureLocalAddress: in a fresh namespace the address ends up on a
// dummy interface and can be listened on; a second call changes nothing;
// an address already local (on lo) creates no interface.
func TestEnsureLocalAddress(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "localaddr")
	addr := netip.MustParseAddr("169.254.20.10")
	for i := 0; i < 2; i++ {
		if err := ns.Do(func() error { return EnsureLocalAddress("", addr) }); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	// On the dummy interface, or on lo where the kernel has no dummy driver.
	out := ns.Exec(t, "ip", "-o", "addr", "show")
	if strings.Count(out, "169.254.20.10/32") != 1 {
		t.Fatalf("want the address once, got:\n%s", out)
	}
	if err := ns.Do(func() error {
		pc, err := net.ListenPacket("udp", "169.254.20.10:53")
		if err == nil {
			pc.Close()
		}
		return err
	}); err != nil {
		t.Fatalf("listen on the ensured address: %v", err)
	}

	ns2 := netns.New(t, "localaddr-lo")
	ns2.Exec(t, "ip", "addr", "add", "10.96.0.53/32", "dev", "lo")
	if err := ns2.Do(func() error { return EnsureLocalAddress("", netip.MustParseAddr("10.96.0.53")) }); err != nil {
		t.Fatal(err)
	}
	if out := ns2.Exec(t, "ip", "-o", "link"); strings.Contains(out, DefaultDNSInterface) {
		t.Fatalf("an address already local got a dummy interface anyway:\n%s", out)
	}
	v6 := netip.MustParseAddr("fd00:96::53")
	if err := ns2.Do(func() error { return EnsureLocalAddress("", v6) }); err != nil {
		t.Fatal(err)
	}
	if out := ns2.Exec(t, "ip", "-o", "-6", "addr", "show"); !strings.Contains(out, "fd00:96::53/128") {
		t.Fatalf("IPv6 address not added:\n%s", out)
	}
}
