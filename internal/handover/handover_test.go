package handover

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// join registers an agent in dir; it leaves at the end of the test.
func join(t *testing.T, dir string) *Member {
	t.Helper()
	m, err := Join(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Leave() })
	return m
}

func TestSupersededByANewerLiveAgent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	old := join(t, dir)
	if old.Superseded() {
		t.Fatal("the only agent is superseded")
	}
	next := join(t, dir)
	if !old.Superseded() {
		t.Error("old agent not superseded while a newer one runs")
	}
	if next.Superseded() {
		t.Error("the newest agent is superseded")
	}
	if old.Alone() || next.Alone() {
		t.Error("an agent is alone while two run")
	}
	if err := next.Leave(); err != nil {
		t.Fatal(err)
	}
	if old.Superseded() || !old.Alone() {
		t.Error("old agent still superseded (or not alone) after the newer one left")
	}
	var none *Member
	if none.Superseded() {
		t.Error("a nil Member is superseded")
	}
}

func TestDeadAgentDoesNotSupersede(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	old, dead := join(t, dir), join(t, dir)
	// As a killed process: the kernel drops the lock, the file stays.
	dead.f.Close()
	if old.Superseded() {
		t.Error("superseded by an agent that died")
	}
	if _, err := os.Stat(filepath.Join(dir, dead.name)); !os.IsNotExist(err) {
		t.Errorf("dead agent's lock file left: %v", err)
	}
}

func TestListenTCPTwiceOnOnePort(t *testing.T) {
	t.Parallel()
	a, err := ListenTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := ListenTCP(a.Addr().String())
	if err != nil {
		t.Fatalf("second listener on %s: %v", a.Addr(), err)
	}
	b.Close()
}

func TestListenUnixReplacesWithoutGap(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "agent.sock")
	old, err := ListenUnix(path, 0o777)
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := old.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	held, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	oldConn := <-accepted
	defer oldConn.Close()

	next, err := ListenUnix(path, 0o777)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o777 {
		t.Fatalf("socket after the handover: %v %v", fi, err)
	}
	// The old listener's accepted connection still works.
	go func() { _, _ = oldConn.Write([]byte("x")) }()
	buf := make([]byte, 1)
	if _, err := held.Read(buf); err != nil {
		t.Fatalf("connection accepted by the old listener: %v", err)
	}
	// Closing the old listener leaves the successor's socket in place.
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	go func() {
		if c, err := next.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("successor's socket after the old listener closed: %v", err)
	}
	c.Close()
	// The last one removes its own path.
	if err := next.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after the last listener closed: %v", err)
	}
}
