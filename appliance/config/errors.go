package config

import (
	"errors"
	"fmt"
)

// Sentinel errors, for errors.Is; the *Error values below wrap them.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrInvalid  = errors.New("invalid configuration")
	ErrInUse    = errors.New("in use")
	ErrDenied   = errors.New("access denied")
)

// Error is a configuration error worded and numbered as BIG-IP's mcpd words it, so that
// people who grep their logs for BIG-IP's codes find ours.
type Error struct {
	Code string // such as "01020036:3"
	Msg  string
	Kind error // one of the sentinels
}

func (e *Error) Error() string { return e.Code + ": " + e.Msg }

// Unwrap lets errors.Is see the sentinel.
func (e *Error) Unwrap() error { return e.Kind }

// NotFound is BIG-IP's "The requested pool (/Common/nope) was not found."
func NotFound(kind, name string) error {
	return &Error{Code: "01020036:3", Msg: fmt.Sprintf("The requested %s (%s) was not found.", kind, name), Kind: ErrNotFound}
}

// Exists is BIG-IP's "The requested pool (/Common/p1) already exists in partition Common."
func Exists(kind, name, partition string) error {
	return &Error{Code: "01020066:3", Msg: fmt.Sprintf("The requested %s (%s) already exists in partition %s.", kind, name, partition), Kind: ErrExists}
}

// Invalid is a configuration error about one object.
func Invalid(format string, args ...any) error {
	return &Error{Code: "01070734:3", Msg: "Configuration error: " + fmt.Sprintf(format, args...), Kind: ErrInvalid}
}

// InUse is BIG-IP's "The Pool (/RPC/p) cannot be deleted because it is in use by a Virtual Server (/RPC/vs)."
func InUse(kind, name, userKind, user string) error {
	return &Error{Code: "01070265:3", Msg: fmt.Sprintf("The %s (%s) cannot be deleted because it is in use by a %s (%s).", kind, name, userKind, user), Kind: ErrInUse}
}

// AccessDenied is the refusal of a command that the user's role does not allow, in the
// words of BIG-IP's "01070822:3: Access Denied: User (alice) may not ...".
func AccessDenied(user string, role Role, command string) error {
	return &Error{Code: "01070822:3", Msg: fmt.Sprintf("Access Denied: User (%s) with role (%s) may not run (%s)", user, role, command), Kind: ErrDenied}
}
