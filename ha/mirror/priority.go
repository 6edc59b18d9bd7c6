package mirror

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// backgroundNice is the nice value of the threads that dump a table for anti-entropy.
const backgroundNice = 19

// runInBackground runs fn on an OS thread of its own at the lowest priority, for work that
// may wait: a digest's dump of the kernel table, or the standby's check of it. A dump is
// kernel work (the kernel formats every entry, and deletes the expired ones it meets) that
// on a busy machine took the CPU from the event reader and the injector, and held mirrored
// changes back by tens of milliseconds at every digest. The thread is never handed back to
// the runtime: it ends with fn, priority and all.
func runInBackground(fn func()) {
	runtime.LockOSThread()
	// Lowering one's own priority needs no privilege; a failure leaves it as it was.
	_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), backgroundNice)
	fn()
}
