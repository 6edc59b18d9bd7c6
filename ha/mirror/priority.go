package mirror

import (
	"context"
	"runtime"
	"time"

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
//
// fn must not take a lock that the stream's goroutines take: the OS may leave a thread of
// the lowest priority waiting for tens of milliseconds on a busy machine, lock held.
func runInBackground(fn func()) {
	runtime.LockOSThread()
	// Lowering one's own priority needs no privilege; a failure leaves it as it was.
	_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), backgroundNice)
	fn()
}

// A background dump rests dumpRest after every dumpBusy of dumping, so that it takes at
// most a quarter of a CPU. The lowest priority alone was not enough: in the lab (2 cores,
// 10k new flows/s for 25 s, `bench -only steady`) the digests' dumps gave a lag p99 of
// 59–158 ms in four runs (2 ms with no digests); paced so, 8.5–19 ms. A tenth of a CPU did
// no better. The kernel dumps a chunk of the table at each read of the socket, and nothing
// between reads, so a pause in fn paces the kernel too.
const (
	dumpBusy    = time.Millisecond
	dumpRest    = 3 * time.Millisecond
	pacerStride = 64 // flows between two looks at the clock
)

// pacedSnapshot runs snapshot with fn, resting as the constants above say, and returns
// how long it rested.
func pacedSnapshot(ctx context.Context, snapshot func(context.Context, func(Flow) error) error, fn func(Flow) error) (rested time.Duration, err error) {
	n, since := 0, time.Now()
	err = snapshot(ctx, func(f Flow) error {
		if err := fn(f); err != nil {
			return err
		}
		if n++; n%pacerStride != 0 || time.Since(since) < dumpBusy {
			return nil
		}
		busyEnd := time.Now()
		t := time.NewTimer(dumpRest)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-t.C:
		}
		since = time.Now()
		rested += since.Sub(busyEnd)
		return nil
	})
	return rested, err
}
