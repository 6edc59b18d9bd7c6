package conntrack

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// openNetfilterSocket opens a NETLINK_NETFILTER socket in the calling thread's namespace,
// bound to a port id that the kernel picks, and returns it with that port id.
//
// The socket blocks, and os.NewFile leaves a blocking descriptor out of the Go runtime's
// poller. The poller watches its sockets edge-triggered for as long as they are open, so
// each datagram arriving on a socket that no goroutine waits for at that moment wakes the
// thread parked in epoll_wait for nothing: the event socket while its reader lingers,
// and the request socket at each answer to a batch, which its reader reads without
// waiting. Its users wait themselves: the Listener with ppoll, the querier in a read
// bounded by SO_RCVTIMEO.
func openNetfilterSocket(name string) (*os.File, uint32, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, 0, fmt.Errorf("open %s socket: %w", name, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		_ = unix.Close(fd)
		return nil, 0, fmt.Errorf("bind %s socket: %w", name, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		_ = unix.Close(fd)
		return nil, 0, fmt.Errorf("%s socket's address: %w", name, err)
	}
	nl, ok := sa.(*unix.SockaddrNetlink)
	if !ok {
		_ = unix.Close(fd)
		return nil, 0, fmt.Errorf("%s socket's address: %T, not netlink", name, sa)
	}
	return os.NewFile(uintptr(fd), name), nl.Pid, nil
}
