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
	Partition string // "" means /Common; RootFolder is the root (cd /)
	Module    string // "" or a module such as "ltm"
}

// RootFolder is Session.Partition at the root folder, which holds the partitions: there
// list shows objects only with recursive, and a relative name still resolves in /Common
// (no object lives in / itself).
const RootFolder = "/"

// folder is the partition relative names resolve in: "" for /Common.
func (s *Session) folder() string {
	if s.Partition == RootFolder {
		return ""
	}
	return s.Partition
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
	// A module given after cd (cd ltm) is implied, except where a folder or a command is named.
	if s.Module != "" && verb != "cd" && verb != "help" && len(args) > 0 && !args[0].IsBlock && findModule(strings.TrimPrefix(args[0].Word, "/")) == "" {
		args = append([]Node{{Word: s.Module}}, args...)
	}
	// Authorized first: a verb no role lists (an unknown one too) is refused to all but admin.
	if err := authorize(s, verb, args, cmd); err != nil {
		return err
	}
	v := findVerb(verb)
	if v == nil {
		return syntaxf("%q unknown command", verb)
	}
	return v.run(in, ctx, s, args, w)
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
	case target == "/":
		s.Partition, s.Module = RootFolder, ""
	case target == "~":
		s.Partition, s.Module = "", ""
	case target == "..":
		if s.Module != "" {
			s.Module = ""
		} else {
			s.Partition = RootFolder
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
