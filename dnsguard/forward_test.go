package dnsguard

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestRetiredSocketClosedAfterTimeout checks that a pooled socket retired
// while a query waits on it is closed once that query times out, rather
// than leaking the socket and its reader goroutine.
func TestRetiredSocketClosedAfterTimeout(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	u, err := newUpstream(silent.LocalAddr().String(), 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer u.close()

	errc := make(chan error, 1)
	go func() {
		q := new(dns.Msg)
		q.SetQuestion("a.example.", dns.TypeA)
		_, err := u.exchange(context.Background(), q)
		errc <- err
	}()

	var c *udpConn
	deadline := time.Now().Add(5 * time.Second)
	for c == nil {
		if time.Now().After(deadline) {
			t.Fatal("query never registered on a pooled socket")
		}
		u.mu.Lock()
		if cand := u.conns[0]; cand != nil {
			cand.mu.Lock()
			if len(cand.pending) == 1 {
				c = cand
			}
			cand.mu.Unlock()
		}
		u.mu.Unlock()
		if c == nil {
			time.Sleep(time.Millisecond)
		}
	}
	c.retire()
	if _, err := c.conn.Write([]byte{0}); err != nil {
		t.Fatalf("retired socket closed while a query still waited on it: %v", err)
	}
	if err := <-errc; err == nil {
		t.Fatal("silent upstream: want a timeout error")
	}
	if _, err := c.conn.Write([]byte{0}); err == nil {
		t.Fatal("retired socket still open after its last query timed out")
	}
}
