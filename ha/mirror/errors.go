package mirror

import "errors"

// Errors returned (wrapped) by this package; check them with errors.Is.
var (
	// ErrInvalidFlow: a flow whose addresses are invalid or of mixed families cannot be mirrored.
	ErrInvalidFlow = errors.New("invalid flow")
	// ErrMalformed: the peer sent bytes that are not a valid frame.
	ErrMalformed = errors.New("malformed frame")
	// ErrVersion: the peer speaks a protocol version we do not.
	ErrVersion = errors.New("unsupported mirror protocol version")
	// ErrProtocol: a valid frame arrived out of sequence (no Hello first, a SyncEnd that does not
	// match its SyncBegin, ...).
	ErrProtocol = errors.New("mirror protocol violation")
)

// errRestartSync aborts a full sync that must start over (the queue overflowed or a resync was
// requested while the snapshot was being sent). It never leaves the Sender.
var errRestartSync = errors.New("full sync restarted")
