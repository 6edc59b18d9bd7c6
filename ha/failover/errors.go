package failover

import "errors"

var (
	// ErrInvalidConfig is wrapped by every error that New and Reconfigure return for a bad
	// Config.
	ErrInvalidConfig = errors.New("invalid failover config")

	// ErrNotActive is wrapped by ForceStandby when this device is not Active (or is already
	// changing state).
	ErrNotActive = errors.New("device is not active")

	// ErrNoPeer is wrapped by ForceStandby when no peer could take over: never heard,
	// silent for Timeout, or Offline. Like BIG-IP, which only moves a traffic group to an
	// available device, the machine refuses rather than leave the pair with no Active device.
	ErrNoPeer = errors.New("no peer device is available to take over")

	// ErrNotRunning is returned by ForceStandby when Run is not running.
	ErrNotRunning = errors.New("failover machine is not running")

	// ErrAlreadyStarted is returned by a second call of Run on the same Machine.
	ErrAlreadyStarted = errors.New("failover machine already started")

	// ErrBadHeartbeat is wrapped by every heartbeat decoding error.
	ErrBadHeartbeat = errors.New("bad heartbeat")
)
