// Package setns runs a function on an OS thread inside another network
// namespace. It is the one non-test piece of namespace switching: package
// netns (test topologies) and egress/flowlog (per-namespace sysctls) both
// use it, so the thread-locking rules live in one place.
package setns

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs f on a fresh, locked OS thread that has entered the network
// namespace open as fd, then returns the thread to its own namespace.
// Sockets created in f stay in the namespace; paths under /proc/sys/net
// opened in f resolve to it. If the thread cannot return, it stays locked
// when its goroutine ends and Go discards it, so no other goroutine ever
// runs in the wrong namespace.
func Do(fd int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		ferr := f()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back: %w (thread discarded)", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
