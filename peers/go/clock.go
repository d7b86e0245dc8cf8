package main

import "golang.org/x/sys/unix"

// monoMicros reads CLOCK_MONOTONIC in whole microseconds: the clock every process on a Linux
// machine shares, so T0/T1 compare directly with the driver's own readings. Go's time.Now()
// carries a monotonic reading too, but counted from this process's start, so it cannot be
// compared across processes.
func monoMicros() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return int64(ts.Sec)*1_000_000 + int64(ts.Nsec)/1_000
}
