package tmsh

import (
	"strings"

	"github.com/openappliance/appliance/appliance/config"
)

// permission is what a command needs of the caller's role.
type permission int

const (
	permSession  permission = iota // help and leaving the shell
	permRead                       // list, show and moving about the shell
	permFailover                   // run sys failover
	permWrite                      // everything else: any change, save, load, config sync
)

// sessionVerbs touch no configuration; readVerbs read it. Every other verb needs a write
// permission, so that a verb added later is refused to guests until it is classified here.
var (
	sessionVerbs = map[string]bool{"help": true, "quit": true, "exit": true}
	readVerbs    = map[string]bool{"list": true, "show": true, "cd": true}
)

// needs classifies a command by its verb and words (after cd's implied module).
func needs(verb string, args []Node) permission {
	switch {
	case sessionVerbs[verb]:
		return permSession
	case readVerbs[verb]:
		return permRead
	case verb == "run" && len(args) >= 2 && isWords(args[:2], "sys", "failover"):
		return permFailover
	}
	return permWrite
}

// allows reports whether role may run a command that needs p: admin everything, operator
// reads and failover, guest reads, no-access (and any role this code does not know) help
// and quit.
func allows(role config.Role, p permission) bool {
	switch role {
	case config.RoleAdmin:
		return true
	case config.RoleOperator:
		return p <= permFailover
	case config.RoleGuest:
		return p <= permRead
	}
	return p == permSession
}

// authorize refuses cmd when the session's role does not allow it; it runs before the
// command touches anything, so a refused command changes nothing.
func authorize(s *Session, verb string, args []Node, cmd string) error {
	if s.Role == "" || allows(s.Role, needs(verb, args)) {
		return nil
	}
	return config.AccessDenied(s.User, s.Role, strings.TrimSpace(cmd))
}

// Role returns the role the running configuration gives user, and false when it gives
// none (see config.Config.Role).
func (in *Interpreter) Role(user string) (config.Role, bool) {
	cfg := in.core.Config()
	return cfg.Role(user)
}
