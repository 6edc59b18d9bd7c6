package conntrack

import "errors"

var (
	// ErrInvalidFlow is wrapped by Inject, Delete and Get when the flow cannot be expressed
	// to the kernel: a protocol other than TCP or UDP, a missing address, or addresses of
	// mixed families (conntrack has no NAT64).
	ErrInvalidFlow = errors.New("invalid flow")

	// ErrTableFull is wrapped, with unix.ENOMEM, by Inject and InjectBatch when the kernel
	// has no room for another entry: the namespace holds net.netfilter.nf_conntrack_max
	// entries and none could be dropped early. That limit is the initial namespace's,
	// read-only in the others; each namespace may hold up to it.
	ErrTableFull = errors.New("conntrack table full (net.netfilter.nf_conntrack_max)")

	// ErrUnsupported is wrapped by DefaultTimeout for a protocol or TCP state that has no
	// timeout sysctl of its own.
	ErrUnsupported = errors.New("unsupported protocol or state")

	// ErrListenerRunning is returned by Listener.Run when Run is already running or has
	// already returned: a Listener delivers its socket's events to one loop, once.
	ErrListenerRunning = errors.New("listener already running")
)
