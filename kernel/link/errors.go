package link

import "errors"

var (
	// ErrNoInterface is wrapped by the errors of AddAddress, DeleteAddress, Addresses and
	// Announce when the named interface does not exist in the caller's namespace.
	ErrNoInterface = errors.New("no such interface")

	// ErrInvalidArgument is wrapped by the errors returned for a bad argument (an invalid
	// prefix or address, a bad sysctl name, a negative repeat count), before anything
	// touches the kernel.
	ErrInvalidArgument = errors.New("invalid argument")

	// ErrPrefixConflict is wrapped by AddAddress when the kernel refuses the prefix because
	// the address is already on the interface with another prefix length (IPv6 keys an
	// address by the address alone). It also wraps unix.EEXIST.
	ErrPrefixConflict = errors.New("address present with another prefix length")
)
