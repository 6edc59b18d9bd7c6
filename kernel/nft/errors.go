package nft

import "errors"

// Sentinel errors, checked with errors.Is.
var (
	// ErrInvalid is wrapped by every error of Ruleset.Validate (and so of Apply when
	// the ruleset is refused), so callers can tell a bad config from a kernel failure.
	ErrInvalid = errors.New("invalid ruleset")

	// ErrClosed is returned by Apply and Remove on a Table after Close.
	ErrClosed = errors.New("nft table closed")
)
