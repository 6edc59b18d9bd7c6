// Package api is the control API between tmsh and applianced: HTTP over the daemon's unix
// socket. It holds only the wire types; shell/ imports it and nothing else of the daemon.
//
// POST /v1/exec with an ExecRequest runs tmsh commands. The response body is the commands'
// output, streamed as it is produced (a million-row show does not wait for the last row);
// the outcome comes in HTTP trailers, because an error can happen after output has begun.
//
// POST /v1/complete with a CompleteRequest returns a CompleteResponse: what may come next at
// the cursor, for Tab completion and the ? listing, from the same command table the
// interpreter parses with; object names are the daemon's live ones.
//
// GET /v1/status returns a Status, for the shell's prompt.
package api

// Paths of the control API.
const (
	PathExec     = "/v1/exec"
	PathStatus   = "/v1/status"
	PathComplete = "/v1/complete"
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

// CompleteRequest asks what may come next at byte Pos of Line (a UTF-8 string), in the
// session state the shell keeps.
type CompleteRequest struct {
	Line      string `json:"line"`
	Pos       int    `json:"pos"`
	Partition string `json:"partition,omitempty"`
	Module    string `json:"module,omitempty"`
}

// CompleteResponse holds the candidates for the word that begins at byte Start of the line
// and ends at the cursor.
type CompleteResponse struct {
	Start      int         `json:"start"`
	Candidates []Candidate `json:"candidates"`
}

// Candidate is a word that may come next, with a line of help. Group says what it is
// (command, module, component, object, property, option, value, folder). A Hint is a
// description of a free value, such as <ip-address:port>, to show but not to insert.
type Candidate struct {
	Word  string `json:"word"`
	Help  string `json:"help"`
	Group string `json:"group"`
	Hint  bool   `json:"hint,omitempty"`
}
