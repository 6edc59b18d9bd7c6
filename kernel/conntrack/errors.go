package conntrack

import "errors"

var (
	// ErrInvalidFlow is wrapped by Inject, Delete and Get when the flow cannot be expressed
	// to the kernel: a protocol other than TCP or UDP, a missing address, or addresses of
	// mixed families (conntrack has no NAT64).
	ErrInvalidFlow = errors.New("invalid flow")

	// ErrUnsupported is wrapped by DefaultTimeout for a protocol or TCP state that has no
	// timeout sysctl of its own.
	ErrUnsupported = errors.New("unsupported protocol or state")

	// ErrListenerRunning is returned by Listener.Run when Run is already running or has
	// already returned: a Listener delivers its socket's events to one loop, once.
	ErrListenerRunning = errors.New("listener already running")
)
