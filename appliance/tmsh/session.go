package tmsh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/openappliance/appliance/appliance/config"
)

// Session is one shell's state: the folder it has cd'ed to, and who runs it.
type Session struct {
	User string
	// Role limits the commands the session may run (see authorize). Empty runs every
	// command: for in-process callers; the control server always sets it from the peer.
	Role      config.Role
	Partition string // "" means /Common
	Module    string // "" or a module such as "ltm"
}

// ErrQuit is returned by Exec for quit and exit.
var ErrQuit = errors.New("quit")

// Interpreter runs tmsh commands against a Core. It is safe for concurrent use.
type Interpreter struct {
	core Core
}

// New returns an interpreter over core.
func New(core Core) *Interpreter { return &Interpreter{core: core} }

// Exec runs every command of line (commands split at ';' and newlines), writing their
// output to w. It stops at the first failing command and returns its error; the commands
// before it have taken effect, as with tmsh -c.
func (in *Interpreter) Exec(ctx context.Context, s *Session, line string, w io.Writer) error {
	cmds, err := SplitCommands(line)
	if err != nil {
		return err
	}
	for _, c := range cmds {
		if err := in.execOne(ctx, s, c, w); err != nil {
			return err
		}
	}
	return nil
}

func (in *Interpreter) execOne(ctx context.Context, s *Session, cmd string, w io.Writer) error {
	nodes, err := Parse(cmd)
	if err != nil {
		return err
	}
	if len(nodes) == 0 {
		return nil
	}
	if nodes[0].IsBlock {
		return syntaxf("%q unexpected", nodes[0].String())
	}
	verb := nodes[0].Word
	args := nodes[1:]
	// A module given after cd (cd ltm) is implied.
	if s.Module != "" && len(args) > 0 && !args[0].IsBlock && findModule(strings.TrimPrefix(args[0].Word, "/")) == "" {
		args = append([]Node{{Word: s.Module}}, args...)
	}
	if err := authorize(s, verb, args, cmd); err != nil {
		return err
	}
	switch verb {
	case "list":
		return in.list(ctx, s, args, w)
	case "create", "modify", "delete":
		return in.mutate(ctx, s, verb, args)
	case "show":
		return in.show(ctx, s, args, w)
	case "run":
		return in.run(ctx, s, args, w)
	case "save":
		if !isWords(args, "sys", "config") {
			return syntaxf("save: expected \"sys config\"")
		}
		if err := in.core.Save(ctx); err != nil {
			return err
		}
		_, err := io.WriteString(w, "Saving running configuration...\n")
		return err
	case "load":
		if !isWords(args, "sys", "config") {
			return syntaxf("load: expected \"sys config\"")
		}
		if err := in.core.Load(ctx); err != nil {
			return err
		}
		_, err := io.WriteString(w, "Loading configuration...\n")
		return err
	case "cd":
		return cd(s, args, in.core.Config())
	case "help":
		return help(w)
	case "quit", "exit":
		return ErrQuit
	}
	return syntaxf("%q unknown command", verb)
}

func isWords(nodes []Node, want ...string) bool {
	if len(nodes) != len(want) {
		return false
	}
	for i, n := range nodes {
		if n.IsBlock || strings.TrimPrefix(n.Word, "/") != want[i] {
			return false
		}
	}
	return true
}

func syntaxf(format string, args ...any) error {
	return fmt.Errorf("Syntax Error: "+format, args...)
}

func cd(s *Session, args []Node, cfg config.Config) error {
	if len(args) != 1 || args[0].IsBlock {
		return syntaxf("cd: expected one folder or module")
	}
	target := args[0].Word
	switch {
	case target == "/" || target == "~":
		s.Partition, s.Module = "", ""
	case target == "..":
		if s.Module != "" {
			s.Module = ""
		} else {
			s.Partition = ""
		}
	case findModule(target) != "":
		s.Module = target
	default:
		name := strings.Trim(target, "/")
		if _, i := cfg.Shared.FindPartition(name); i < 0 {
			return config.NotFound("folder", "/"+name)
		}
		if name == config.CommonPartition {
			name = ""
		}
		s.Partition, s.Module = name, ""
	}
	return nil
}

func help(w io.Writer) error {
	var b strings.Builder
	b.WriteString("Commands:\n")
	for _, c := range commandHelp {
		fmt.Fprintf(&b, "  %-60s %s\n", c[0], c[1])
	}
	_, err := io.WriteString(w, b.String())
	return err
}

var commandHelp = [][2]string{
	{"list [MODULE [COMPONENT [NAME|GLOB...]]] [PROPERTY...] [one-line|all-properties]", "print configuration"},
	{"create MODULE COMPONENT NAME PROPERTIES", "create an object"},
	{"modify MODULE COMPONENT NAME PROPERTIES", "change an object"},
	{"delete MODULE COMPONENT NAME...", "delete objects"},
	{"show sys connection [type mirror|any] [FILTER VALUE...]", "print the connection table"},
	{"show cm failover-status | show sys failover | show cm sync-status", "print HA state"},
	{"run sys failover standby", "make this Active device Standby"},
	{"run cm config-sync to-group GROUP", "push the shared configuration to the group"},
	{"save sys config | load sys config", "write or re-read the configuration files"},
	{"cd FOLDER|MODULE|..|/", "change the current folder or module"},
	{"quit | exit", "leave the shell"},
}
