package egress

import (
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// transactions is how many batches the firewall has written to the
// kernel (samples of kordon_egress_programming_seconds).
func transactions(t *testing.T, reg *prometheus.Registry) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "kordon_egress_programming_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatal("no kordon_egress_programming_seconds")
	return 0
}

// TestHeldGrantSkipsKernel: re-admitting an answer whose elements the
// kernel already holds long enough (a cache hit: the TTL minus the whole
// seconds elapsed) writes nothing to the kernel, yet refreshes the name
// memory; a longer TTL than the kernel holds (beyond refreshSlack) is
// written, and a new address too, in the same call.
func TestHeldGrantSkipsKernel(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, 1, func(c *Config) { c.Metrics = reg; c.TTLGrace = 60 * time.Second })
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	dst := netip.MustParseAddr("198.51.100.151")
	other := netip.MustParseAddr("198.51.100.152")
	e.admit(0, "api.example.com", 100, dst)
	base := transactions(t, reg)
	if base == 0 {
		t.Fatal("the first grant wrote no batch")
	}
	time.Sleep(1500 * time.Millisecond)
	// A cache hit 1.5 s later: TTL 99 (one whole second elapsed), so
	// it asks for half a second more than the kernel holds.
	for range 10 {
		e.admit(0, "api.example.com", 99, dst)
	}
	e.admit(0, "api.example.com", 100, dst)
	if n := transactions(t, reg) - base; n != 0 {
		t.Fatalf("held grants wrote %d batches, want 0", n)
	}
	if name, ok := e.fw.Lookup(e.tp.Pods[0].IP4, dst); !ok || name != "api.example.com" {
		t.Fatalf("Lookup = %q, %v", name, ok)
	}
	// One of the call's grants needs the kernel: the whole call waits for
	// it (one batch), and the kernel then holds both.
	p := e.tp.Pods[0]
	if err := e.fw.Admit([]Grant{
		{Client: p.IP4, Name: "api.example.com", Addrs: []netip.Addr{dst}, TTL: 99},
		{Client: p.IP4, Name: "api.example.com", Addrs: []netip.Addr{other}, TTL: 99},
	}); err != nil {
		t.Fatal(err)
	}
	if n := transactions(t, reg) - base; n != 1 {
		t.Fatalf("a new address wrote %d batches, want 1", n)
	}
	if n := len(e.setElems("dns4")); n != 2 {
		t.Fatalf("dns4 has %d elements, want 2", n)
	}
	// Ten seconds more than the kernel holds: refreshed.
	e.admit(0, "api.example.com", 110, dst)
	if n := transactions(t, reg) - base; n != 2 {
		t.Fatalf("a longer TTL wrote %d batches in all, want 2", n)
	}
}

// TestPendingElementNotHeld: an element of the batch being written is in
// f.elems before the kernel has it; a call needing it must wait for the
// commit loop, not return at once.
func TestPendingElementNotHeld(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	dst := netip.MustParseAddr("198.51.100.153")
	p := e.tp.Pods[0]
	e.fw.mu.Lock()
	k := mkEkey(e.fw.setsOf(&fam4).dns, append(p.IP4.AsSlice(), dst.AsSlice()...))
	// As program leaves it while its batch is on the wire.
	e.fw.putElem(k, time.Now().Add(time.Hour).UnixNano())
	e.fw.pending[k] = struct{}{}
	e.fw.mu.Unlock()
	held := e.fw.admitHeld([]Grant{{Client: p.IP4, Name: "api.example.com", Addrs: []netip.Addr{dst}, TTL: 10}})
	e.fw.mu.Lock()
	delete(e.fw.pending, k)
	e.fw.delElem(k)
	e.fw.mu.Unlock()
	if held {
		t.Fatal("an element still being written was taken for programmed")
	}
}
