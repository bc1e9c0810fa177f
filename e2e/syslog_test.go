package e2e

import (
	"bufio"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
)

// syslogReceiver is a TCP syslog listener on loopback collecting the
// octet-counted messages of every connection.
type syslogReceiver struct {
	addr string
	mu   sync.Mutex
	msgs []string
}

func startSyslogReceiver(t *testing.T) *syslogReceiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	r := &syslogReceiver{addr: ln.Addr().String()}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				for {
					m, err := alert.ReadSyslogFrame(br)
					if err != nil {
						return
					}
					r.mu.Lock()
					r.msgs = append(r.msgs, m)
					r.mu.Unlock()
				}
			}()
		}
	}()
	return r
}

// waitFor waits until a message contains every one of parts.
func (r *syslogReceiver) waitFor(t *testing.T, what string, parts ...string) {
	t.Helper()
	eventually(t, 30*time.Second, what, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
	next:
		for _, m := range r.msgs {
			for _, p := range parts {
				if !strings.Contains(m, p) {
					continue next
				}
			}
			return true
		}
		return false
	})
}
