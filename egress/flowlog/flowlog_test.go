package flowlog

import (
	"net/netip"
	"testing"
)

// TestFillLeavesCallerInternal: fill masks its own copy of Internal; the
// caller's slice (shared with the firewall in kordon node) is not written.
func TestFillLeavesCallerInternal(t *testing.T) {
	t.Parallel()
	unmasked := netip.MustParsePrefix("10.1.2.3/8")
	internal := []netip.Prefix{unmasked}
	cfg := Config{Internal: internal}
	if err := cfg.fill(); err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.Internal[0], netip.MustParsePrefix("10.0.0.0/8"); got != want {
		t.Errorf("cfg.Internal[0] = %s, want %s", got, want)
	}
	if internal[0] != unmasked {
		t.Errorf("caller's Internal[0] = %s, want it untouched (%s)", internal[0], unmasked)
	}
}
