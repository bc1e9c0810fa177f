// Package handover lets two generations of a node agent run side by side
// on one host during a rolling update (a DaemonSet with maxSurge: 1): the
// new one binds beside the old, becomes ready, and only then is the old
// one stopped, so DNS, the SPIFFE Workload API and the egress firewall
// never lapse.
//
// It holds three small mechanisms, each a noun the agent's parts share:
//   - a Member of the node's agent generations (a lock file per running
//     agent in one folder, held with flock(2) for the process's life): an
//     agent knows it is Superseded when a newer live agent exists, so the
//     old one answers /readyz 503 and, in kordon dev, leaves the nftables
//     table to its successor at exit;
//   - ListenTCP: a TCP listener with SO_REUSEPORT, so both generations
//     bind the same fixed HTTP port;
//   - ListenUnix: a Unix socket bound on a temporary name and renamed over
//     the old one's path in one step (rename(2) is atomic), so a client
//     connecting during the handover finds either socket, never none; the
//     path is removed at Close only while it still is this socket.
package handover

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Member is one running agent among the generations of a node.
type Member struct {
	dir  string
	name string
	f    *os.File
}

const lockSuffix = ".agent"

// Join registers this process in dir (created if missing) as the newest
// generation: it creates dir/<start time>-<pid>.agent and holds an
// exclusive flock on it until Leave or the process's death (the kernel
// drops the lock, so a killed agent never counts as alive).
func Join(dir string) (*Member, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("handover: %w", err)
	}
	// Zero-padded nanoseconds sort by start; the pid keeps two agents
	// started in the same nanosecond apart.
	name := fmt.Sprintf("%020d-%d%s", time.Now().UnixNano(), os.Getpid(), lockSuffix)
	// Locked under a name the others ignore, then renamed into view (the
	// lock stays on the inode): a lock file visible before it is locked
	// would look like a dead agent's, and another agent's check would
	// remove it.
	tmp := filepath.Join(dir, name+".new")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("handover: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("handover: lock %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("handover: %w", err)
	}
	return &Member{dir: dir, name: name, f: f}, nil
}

// Superseded reports whether an agent that started after this one is
// still running (holds its lock). Lock files of agents that died are
// removed on the way. A nil Member is never superseded.
func (m *Member) Superseded() bool {
	return m != nil && m.anyAlive(func(name string) bool { return name > m.name })
}

// Alone reports whether no other agent, older or newer, is running: the
// last one to leave may remove what they all share (kordon dev's nftables
// table). A nil Member is alone.
func (m *Member) Alone() bool {
	return m == nil || !m.anyAlive(func(name string) bool { return name != m.name })
}

// anyAlive reports whether an agent whose lock file name passes keep
// still holds its lock, newest first.
func (m *Member) anyAlive(keep func(name string) bool) bool {
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		return false
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), lockSuffix) && keep(e.Name()) {
			names = append(names, e.Name())
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(names)))
	for _, n := range names {
		if alive(filepath.Join(m.dir, n)) {
			return true
		}
	}
	return false
}

// alive reports whether the agent of lock file path still holds it; a
// file nobody holds is an agent that died, and is removed (under its
// lock, so no one else removes it meanwhile).
func alive(path string) bool {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	_ = os.Remove(path)
	return false
}

// Leave releases this agent's lock and removes its file.
func (m *Member) Leave() error {
	if m == nil || m.f == nil {
		return nil
	}
	err := os.Remove(filepath.Join(m.dir, m.name))
	if cerr := m.f.Close(); err == nil {
		err = cerr
	}
	m.f = nil
	return err
}

// NetNSDir is a folder for the agents of this network namespace under
// base (os.TempDir() when empty): the nftables table and the DNS sockets
// are per network namespace, so the generations sharing them meet there.
func NetNSDir(base string) (string, error) {
	if base == "" {
		base = os.TempDir()
	}
	fi, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		return "", fmt.Errorf("handover: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", errors.New("handover: no inode for /proc/self/ns/net")
	}
	return filepath.Join(base, fmt.Sprintf("kordon-agents-net%d", st.Ino)), nil
}

// ReusePort binds UDP sockets and TCP listeners with SO_REUSEPORT (the
// DNS sockets of dnsguard, the HTTP listeners here). Read-only.
var ReusePort = net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}}

// ListenTCP listens on addr with SO_REUSEPORT: a second agent (the next
// generation) binds the same address beside this one and the kernel
// spreads new connections over both until one closes its listener. Both
// must serve the same API; /readyz stays truthful because an agent that
// is Superseded answers 503.
func ListenTCP(addr string) (net.Listener, error) {
	return ReusePort.Listen(context.Background(), "tcp", addr)
}

// unixListener removes its path at Close only if the path is still its
// own socket (a successor may have renamed its socket over it).
type unixListener struct {
	*net.UnixListener
	path string
	fi   os.FileInfo
}

// ListenUnix listens on a Unix socket at path without a moment where path
// is missing: it binds path.<pid>.new and renames it over path (atomic),
// replacing a predecessor's socket, whose listener keeps serving the
// connections it accepted. perm is applied before the rename, so clients
// never see the socket with other permissions.
func ListenUnix(path string, perm os.FileMode) (net.Listener, error) {
	tmp := fmt.Sprintf("%s.%d.new", path, os.Getpid())
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// The listener would unlink tmp at Close, a name gone after the
	// rename; Close removes path itself, when it is still ours.
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("handover: %w", err)
	}
	if err := os.Chmod(tmp, perm); err != nil {
		return fail(err)
	}
	fi, err := os.Stat(tmp)
	if err != nil {
		return fail(err)
	}
	err = withPathLock(path, func() error { return os.Rename(tmp, path) })
	if err != nil {
		return fail(err)
	}
	return &unixListener{UnixListener: ln, path: path, fi: fi}, nil
}

// withPathLock runs fn holding an flock on path.lock: a successor's
// rename over path and a predecessor's check-then-remove at Close never
// interleave (which could remove the successor's fresh socket).
func withPathLock(path string, fn func() error) error {
	f, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	return fn()
}

// Close stops listening and removes the socket's path unless a successor
// has replaced it.
func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	_ = withPathLock(l.path, func() error {
		if fi, serr := os.Stat(l.path); serr == nil && os.SameFile(fi, l.fi) {
			return os.Remove(l.path)
		}
		return nil
	})
	return err
}
