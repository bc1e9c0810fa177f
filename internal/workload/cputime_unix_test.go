//go:build unix

package workload

import (
	"syscall"
	"time"
)

// cpuTime is the CPU time (user and system, every thread, GC included)
// the process has used: on a shared machine it says more than the wall
// clock.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
