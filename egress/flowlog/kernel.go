package flowlog

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/kordon-dev/kordon/internal/netns/setns"
)

// eventReadBuffer is the event socket's receive buffer. A burst of
// connections makes several events each; the kernel drops the socket's
// messages (ENOBUFS) once this fills.
const eventReadBuffer = 8 << 20

// eventConn is the conntrack event socket. It is read directly (not
// through conntrack.Conn.Listen) so that an overrun (ENOBUFS) is counted
// and survived instead of ending the library's worker, and so that its
// buffer can be raised past net.core.rmem_max (SO_RCVBUFFORCE, root).
type eventConn struct{ c *netlink.Conn }

func dialEvents(nsfd int) (*eventConn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsfd})
	if err != nil {
		return nil, fmt.Errorf("flowlog: conntrack events: %w", err)
	}
	if err := setReadBuffer(c, eventReadBuffer); err != nil {
		c.Close()
		return nil, fmt.Errorf("flowlog: conntrack events: %w", err)
	}
	for _, g := range netfilter.GroupsCT {
		if err := c.JoinGroup(uint32(g)); err != nil {
			c.Close()
			return nil, fmt.Errorf("flowlog: conntrack events: join group %d: %w", g, err)
		}
	}
	return &eventConn{c: c}, nil
}

// setReadBuffer raises a netlink socket's receive buffer, past rmem_max
// when privileged.
func setReadBuffer(c *netlink.Conn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	}); err != nil {
		return err
	}
	if serr != nil { // not privileged: as much as rmem_max allows
		return c.SetReadBuffer(n)
	}
	return nil
}

// receive blocks for the next messages and decodes the conntrack events
// among them (expectation events and undecodable messages are skipped).
func (e *eventConn) receive(evs []conntrack.Event) ([]conntrack.Event, error) {
	msgs, err := e.c.Receive()
	if err != nil {
		return evs, err
	}
	for _, m := range msgs {
		if m.Header.Type == netlink.Done || m.Header.Type == netlink.Error || m.Header.Type == netlink.Noop {
			continue
		}
		var ev conntrack.Event
		if ev.Unmarshal(m) != nil || ev.Flow == nil {
			continue
		}
		evs = append(evs, ev)
	}
	return evs, nil
}

func (e *eventConn) Close() error { return e.c.Close() }

// isOverrun reports a netlink receive buffer overrun.
func isOverrun(err error) bool { return errors.Is(err, unix.ENOBUFS) }

// dumpConn is the second conntrack socket, for Dump and Get (a socket that
// listens for events cannot also dump).
type dumpConn struct{ c *conntrack.Conn }

func dialDump(nsfd int) (*dumpConn, error) {
	c, err := conntrack.Dial(&netlink.Config{NetNS: nsfd})
	if err != nil {
		return nil, fmt.Errorf("flowlog: conntrack: %w", err)
	}
	return &dumpConn{c: c}, nil
}

func (d *dumpConn) dump() ([]conntrack.Flow, error) { return d.c.Dump(nil) }

// get reads one entry's current state (with counters) by its original
// tuple.
func (d *dumpConn) get(t conntrack.Tuple, zone uint16) (conntrack.Flow, error) {
	return d.c.Get(conntrack.Flow{TupleOrig: t, Zone: zone})
}

func (d *dumpConn) Close() error { return d.c.Close() }

// setNetfilterSysctl writes net.netfilter.<key> in the namespace nsfd (0:
// the current one), unless it already has value.
func setNetfilterSysctl(nsfd int, key, value string) error {
	path := "/proc/sys/net/netfilter/" + key
	set := func() error {
		if cur, err := os.ReadFile(path); err == nil && string(bytes.TrimSpace(cur)) == value {
			return nil
		}
		return os.WriteFile(path, []byte(value), 0o644)
	}
	if nsfd == 0 {
		return set()
	}
	// /proc/sys/net resolves to the namespace of the thread that opens it.
	return setns.Do(nsfd, set)
}
