package egress

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
)

// TestRegistryChanges: Run follows the registry: a pod that gains an
// enforcing label is filtered, and an address that changes hands loses
// the grants the previous owner learned.
func TestRegistryChanges(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(pol{pod: 7, allow: []string{"api.example.com"}}) // selects nobody yet
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.fw.Run(ctx) }()
	defer func() { cancel(); <-done }()
	srv := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.110"), 8080)
	e.mustConnect(0, srv.addr) // unmanaged

	p := e.tp.Pods[0]
	relabel := func(name, label string) {
		e.reg.Replace([]*workload.Workload{{Name: name, Namespace: "default", ServiceAccount: "default",
			Labels: map[string]string{"pod": label}, IPs: []netip.Addr{p.IP4, p.IP6}}})
	}
	relabel("pod0", "7")
	eventually(t, 3*time.Second, "pod0 enforced after relabel", func() error {
		c, err := e.dial(0, srv.addr)
		if err == nil {
			c.Close()
			return errConnected
		}
		return nil
	})
	e.admit(0, "api.example.com", 300, srv.addr.Addr())
	e.mustConnect(0, srv.addr)
	// A new pod takes the address: the old grant must not carry over.
	relabel("pod0-new", "7")
	eventually(t, 3*time.Second, "grant dropped when the address changed hands", func() error {
		c, err := e.dial(0, srv.addr)
		if err == nil {
			c.Close()
			return errConnected
		}
		return nil
	})
}

// TestConcurrentAdmit: concurrent callers are committed together and
// each returns only once its grant is in the kernel.
func TestConcurrentAdmit(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"*.example.com"}})
	e.tp.Outside.Exec(t, "ip", "route", "add", "local", "203.0.113.0/24", "dev", "lo")
	e.tcpServer(netip.IPv4Unspecified(), 8080)
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)})
			if err := e.fw.Admit([]Grant{{Client: e.tp.Pods[0].IP4, Name: "c.example.com", Addrs: []netip.Addr{dst}, TTL: 60}}); err != nil {
				t.Errorf("Admit: %v", err)
				failed.Add(1)
				return
			}
			var c net.Conn
			if err := e.tp.Pods[0].Do(func() (err error) {
				c, err = net.DialTimeout("tcp", netip.AddrPortFrom(dst, 8080).String(), 3*time.Second)
				return err
			}); err != nil {
				t.Errorf("%s: %v", dst, err)
				failed.Add(1)
				return
			}
			c.Close()
		}()
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Fatalf("%d of 32 concurrent admit-then-connect failed", n)
	}
}

// TestRestartNoLapse: while the agent restarts over and over, a blocked
// destination never connects and an admitted one always does.
func TestRestartNoLapse(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	ok := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.120"), 8080)
	bad := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.121"), 8080)
	e.admit(0, "api.example.com", 300, ok.addr.Addr())
	stop := make(chan struct{})
	var leaks, misses, tries atomic.Int32
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 100000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			tries.Add(1)
			if c, err := e.dial(0, bad.addr); err == nil {
				c.Close()
				leaks.Add(1)
			}
			if c, err := e.dial(0, ok.addr); err != nil {
				misses.Add(1)
			} else {
				c.Close()
			}
		}
	}()
	for i := 0; i < 20; i++ {
		if err := e.fw.Close(); err != nil {
			t.Fatal(err)
		}
		e.start()
		e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}})
	}
	close(stop)
	wg.Wait()
	if leaks.Load() != 0 || misses.Load() != 0 {
		t.Fatalf("over %d probes during 20 restarts: %d blocked connects, %d admitted failures", tries.Load(), leaks.Load(), misses.Load())
	}
	t.Logf("%d probe pairs during 20 restarts: none leaked, none failed", tries.Load())
}
