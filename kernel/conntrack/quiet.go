package conntrack

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The hot paths' reads and writes, on sockets that never block, are quiet system calls:
// they go around the runtime's syscall bookkeeping (entersyscall), which wakes the
// runtime's monitor thread (sysmon) whenever it sleeps, so that it can take the processor
// back from a call that blocks. Under a steady trickle of events the monitor was then
// woken for every burst, and polled every 20 µs while the burst was handled: a quarter of
// the event reader's CPU time, measured in the lab at 10k flows/s. A quiet call keeps its
// processor (P) to the end, which a garbage collection's stop-the-world waits for, so it
// is only for calls known to return soon: never a dump's read, never a large batch.

// quietRequests is the largest number of requests a batch sends in a quiet write: creating
// an entry takes the kernel about 10 µs.
const quietRequests = 32

// quietSyscall makes a read(2) or write(2)-shaped call (fd, buffer, length) as a quiet
// system call and returns its result as unix.Read and unix.Write do.
func quietSyscall(trap, fd uintptr, b []byte) (int, error) {
	var p unsafe.Pointer
	if len(b) > 0 {
		p = unsafe.Pointer(&b[0])
	}
	r, _, errno := unix.RawSyscall(trap, fd, uintptr(p), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}
