package flowlog

import (
	"errors"
	"testing"

	"github.com/kordon-dev/kordon/internal/netns"
)

// TestNFLOGGroupBusyWhileAnotherHoldsIt: during a handover the previous
// agent holds the group; the successor is told errGroupBusy (so New goes
// on and readNFLOG waits) and binds the group once the holder lets go.
func TestNFLOGGroupBusyWhileAnotherHoldsIt(t *testing.T) {
	netns.RequireRoot(t)
	ns := netns.New(t, "nflogbusy")
	fd := ns.Fd(t)
	holder, err := dialNFLOG(fd, nflogGroup)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dialNFLOG(fd, nflogGroup); !errors.Is(err, errGroupBusy) {
		holder.Close()
		t.Fatalf("second bind while the group is held: %v, want errGroupBusy", err)
	}
	holder.Close()
	next, err := dialNFLOG(fd, nflogGroup)
	if err != nil {
		t.Fatalf("bind after the holder closed: %v", err)
	}
	next.Close()
}
