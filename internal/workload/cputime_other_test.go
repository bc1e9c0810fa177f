//go:build !unix

package workload

import "time"

// cpuTime is not measured here.
func cpuTime() time.Duration { return 0 }
