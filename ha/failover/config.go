package failover

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// DefaultTimeout is the default failover.nettimeout, used when Config.Timeout is zero:
// half a second, where BIG-IP's is 3 s, so that traffic flows again within a second of a
// failure. Heartbeats go every 50 ms (Timeout/10) on their own real-time thread.
const DefaultTimeout = 500 * time.Millisecond

// Bounds of the default heartbeat interval (Timeout/10).
const (
	minInterval = 5 * time.Millisecond
	maxInterval = 200 * time.Millisecond
)

// Config is a Machine's configuration. New and Reconfigure copy it; the caller may reuse it.
type Config struct {
	// Device is this device's name (for example "lb1"): 1 to 64 bytes of printable ASCII,
	// no space. It breaks ties, so the two devices must have different names. Reconfigure
	// cannot change it.
	Device string
	// Listen are our unicast addresses with the heartbeat port (1026). Each is bound on its
	// own; a bind that fails (the address is not there yet) is retried until it works, and
	// the wait for a peer starts when the first one is bound. With none, the device runs
	// standalone: it sends nothing and goes Active after one Timeout.
	Listen []netip.AddrPort
	// Peers are the peer's unicast addresses with its heartbeat port. Heartbeats go to each
	// of them. When Peers is not empty only datagrams whose source address is one of them
	// are accepted (the port is not checked); when it is empty any sender is accepted and
	// heartbeats go back to the address the peer was last heard from.
	Peers []netip.AddrPort
	// Timeout is failover.nettimeout: a peer silent this long is failed. Zero means
	// DefaultTimeout. Fractions of a second work.
	Timeout time.Duration
	// Interval is the heartbeat interval. Zero means Timeout/10 clamped to [5ms, 200ms].
	// It must be shorter than Timeout.
	Interval time.Duration
	// PacerProcess, if set, is an executable that runs RunPacerProcess when its first argument
	// is PacerArg (the daemon's own): heartbeats a starved daemon is late with then go out
	// from a real-time process of their own rather than a real-time thread of this one. It
	// is read when Run starts.
	PacerProcess string
	// Payload, if set, returns opaque bytes (at most 1024) carried in each heartbeat; the
	// peer's latest are in Status.PeerPayload. It is called from Run's goroutine once per
	// heartbeat round and must return quickly; the machine does not keep or modify the slice
	// after the call.
	Payload func() []byte
	// PeerHeard, if set, is called from Run's goroutine when the peer is heard after not
	// being heard: its first heartbeat, the first after a silence of Timeout, and the
	// first from a restarted peer (a new boot id). It must return quickly. The daemon
	// redials the mirror stream then: a restarted peer already listens for it.
	PeerHeard func()
}

// withDefaults returns c with its zero fields defaulted and its slices copied.
func (c Config) withDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Interval == 0 {
		c.Interval = min(max(c.Timeout/10, minInterval), maxInterval)
	}
	c.Listen = slices.Clone(c.Listen)
	c.Peers = slices.Clone(c.Peers)
	for i, a := range c.Listen {
		c.Listen[i] = unmap(a)
	}
	for i, a := range c.Peers {
		c.Peers[i] = unmap(a)
	}
	return c
}

// validate checks a defaulted config; every error wraps ErrInvalidConfig.
func (c Config) validate() error {
	if err := validName(c.Device); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("%w: timeout %s is not positive", ErrInvalidConfig, c.Timeout)
	}
	if c.Interval <= 0 || c.Interval >= c.Timeout {
		return fmt.Errorf("%w: interval %s must be positive and shorter than the timeout %s", ErrInvalidConfig, c.Interval, c.Timeout)
	}
	// No listen address is a device not yet given a unicast address: it runs standalone
	// (no heartbeats; Active once the initial wait is over) until Reconfigure gives it one.
	for i, a := range c.Listen {
		if !a.IsValid() || a.Port() == 0 || a.Addr().IsUnspecified() {
			return fmt.Errorf("%w: listen address %q must be a unicast address and a port", ErrInvalidConfig, a)
		}
		if slices.Contains(c.Listen[:i], a) {
			return fmt.Errorf("%w: listen address %s given twice", ErrInvalidConfig, a)
		}
	}
	for _, p := range c.Peers {
		if !p.IsValid() || p.Port() == 0 || p.Addr().IsUnspecified() {
			return fmt.Errorf("%w: peer address %q must be a unicast address and a port", ErrInvalidConfig, p)
		}
		if slices.Contains(c.Listen, p) {
			return fmt.Errorf("%w: peer address %s is one of our listen addresses", ErrInvalidConfig, p)
		}
	}
	return nil
}

// ParseNetTimeout parses a failover.nettimeout value: seconds as a decimal number, such as
// "3" or "0.2". The result is positive and at most one hour.
func ParseNetTimeout(s string) (time.Duration, error) {
	whole, frac, hasDot := strings.Cut(s, ".")
	if !allDigits(whole) || hasDot && !allDigits(frac) {
		return 0, fmt.Errorf("failover.nettimeout %q: not a number of seconds", s)
	}
	// Only digits and one dot: "0.2"+"s" is exact decimal arithmetic in ParseDuration,
	// with no float rounding.
	d, err := time.ParseDuration(s + "s")
	if err != nil {
		return 0, fmt.Errorf("failover.nettimeout %q: %w", s, err)
	}
	if d <= 0 || d > time.Hour {
		return 0, fmt.Errorf("failover.nettimeout %q: must be more than 0 and at most 3600 seconds", s)
	}
	return d, nil
}

// allDigits reports whether s is one or more ASCII digits.
func allDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
