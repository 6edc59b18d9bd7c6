// Package api is the control API between tmsh and applianced: HTTP over the daemon's unix
// socket. It holds only the wire types; shell/ imports it and nothing else of the daemon.
//
// POST /v1/exec with an ExecRequest runs tmsh commands. The response body is the commands'
// output, streamed as it is produced (a million-row show does not wait for the last row);
// the outcome comes in HTTP trailers, because an error can happen after output has begun.
//
// GET /v1/status returns a Status, for the shell's prompt.
package api

// Paths of the control API.
const (
	PathExec   = "/v1/exec"
	PathStatus = "/v1/status"
)

// Trailers of an exec response.
const (
	TrailerError     = "Tmsh-Error"     // empty on success, else the failing command's error
	TrailerPartition = "Tmsh-Partition" // the session's folder after the commands (cd)
	TrailerModule    = "Tmsh-Module"    // the session's module after the commands
	TrailerQuit      = "Tmsh-Quit"      // "1" when a command was quit or exit
)

// DefaultSocket is the control socket of a daemon started without --socket, and the one
// tmsh dials without --socket or $APPLIANCE_SOCKET. Its folder is the systemd unit's
// RuntimeDirectory (etc/systemd/system/applianced.service).
const DefaultSocket = "/run/applianced/control.sock"

// SocketEnv names the environment variable that overrides the socket path.
const SocketEnv = "APPLIANCE_SOCKET"

// ExecRequest runs Command (one or more commands split at ';' or newlines) in the session
// state the shell keeps between requests.
type ExecRequest struct {
	Command   string `json:"command"`
	Partition string `json:"partition,omitempty"`
	Module    string `json:"module,omitempty"`
}

// Status is what the prompt shows: [user@host:Active:In Sync] ~ #
type Status struct {
	User          string `json:"user"`
	Host          string `json:"host"`
	FailoverState string `json:"failover_state"`
	SyncStatus    string `json:"sync_status"`
}
