package dnsguard

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/internal/workload"
)

// TestRealDNS2TCPTunnelIsDetected drives Debian's dns2tcp (server and
// client) through the resolver and expects a tunneling alert. dns2tcpc
// only talks to port 53, so the test needs root; it is skipped, loudly,
// without root or the tool (make deps installs it).
func TestRealDNS2TCPTunnelIsDetected(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIP: dns2tcpc needs port 53 (root)")
	}
	for _, bin := range []string{"dns2tcpd", "dns2tcpc"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("SKIP: %s not installed (make deps)", bin)
		}
	}
	// A TCP echo service is the tunnel's far end.
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	dir := t.TempDir()
	serverIP := fmt.Sprintf("127.0.%d.%d", 100+os.Getpid()%100, 2)
	resolverIP := fmt.Sprintf("127.0.%d.%d", 100+os.Getpid()%100, 3)
	conf := fmt.Sprintf("listen = %s\nport = 5399\nuser = nobody\nchroot = /tmp\ndomain = exfil-test.example\nresources = echo:%s\n", serverIP, echo.Addr())
	if err := os.WriteFile(filepath.Join(dir, "d.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srvCmd := exec.CommandContext(ctx, "dns2tcpd", "-F", "-f", filepath.Join(dir, "d.conf"))
	if err := srvCmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srvCmd.Process.Kill(); srvCmd.Wait() }()

	feed, err := alert.NewFeed(alert.Config{Dir: filepath.Join(dir, "alerts")})
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	insp, err := NewInspector(InspectorConfig{Feed: feed})
	if err != nil {
		t.Fatal(err)
	}
	defer insp.Close()
	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{{Name: "compromised", Namespace: "shop", ServiceAccount: "worker", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}})
	srv, err := New(Config{Registry: reg, Upstreams: []string{serverIP + ":5399"}, Inspector: insp})
	if err != nil {
		t.Fatal(err)
	}
	pc, ln, err := ListenUDPTCP(resolverIP + ":53")
	if err != nil {
		t.Skipf("SKIP: cannot bind %s:53: %v", resolverIP, err)
	}
	go srv.Serve(ctx, pc, ln)
	defer srv.Close()

	localPort := 20000 + os.Getpid()%20000
	cli := exec.CommandContext(ctx, "dns2tcpc", "-z", "exfil-test.example", "-r", "echo", "-l", fmt.Sprint(localPort), resolverIP)
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cli.Process.Kill(); cli.Wait() }()
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", localPort))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dns2tcpc did not listen: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling the client's listener, bounded
	}
	defer conn.Close()
	secret := make([]byte, 8000)
	rand.Read(secret)
	if _, err := conn.Write(secret); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(secret))
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("tunnel did not echo: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if as := feed.List(alert.Filter{Kind: alert.KindTunneling}); len(as) > 0 {
			if as[0].Pod != "compromised" || as[0].Domain != "exfil-test.example" {
				t.Fatalf("alert %+v", as[0])
			}
			t.Logf("alert: %s %s score %.2f: %s", as[0].Kind, as[0].Severity, as[0].Score, as[0].Message)
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no tunneling alert for a real dns2tcp session")
		}
		time.Sleep(20 * time.Millisecond) // the detector publishes asynchronously
	}
}
