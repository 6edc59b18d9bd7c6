package tmsh

import (
	"context"
	"io"
	"slices"
	"strings"

	"github.com/openappliance/appliance/appliance/config"
)

// connFilterOnly are the filters of delete sys connection: those of show, less its options.
func connFilterOnly() []prop {
	var out []prop
	for _, p := range connFilterSpecs {
		if p.takesValue() {
			out = append(out, p)
		}
	}
	return out
}

// deleteConnections is delete sys connection: it removes the matching entries from the
// kernel's table. As on BIG-IP, no filter means every connection, and nothing is printed.
func (in *Interpreter) deleteConnections(ctx context.Context, s *Session, args []Node) error {
	for _, a := range args {
		if !a.IsBlock && a.Word == "all-properties" {
			return syntaxf("%q unexpected argument", a.Word)
		}
	}
	f, _, err := parseConnFilter(args, s.folder())
	if err != nil {
		return err
	}
	_, err = in.core.DeleteConnections(ctx, f)
	return wrapf(err, "delete sys connection")
}

// statsTargets are the components whose statistics reset-stats zeroes.
func statsTargets() []target {
	var out []target
	for _, name := range []string{"pool", "virtual"} {
		k := findKind("ltm", name)
		out = append(out, target{module: k.module, component: k.component, help: k.help, kind: k})
	}
	return out
}

// resetStats is reset-stats: it checks that the objects exist. Their only statistic is the
// current connection count, read live from the kernel's table: a gauge that a reset leaves
// as it is, as BIG-IP leaves its current-connection figures.
func (in *Interpreter) resetStats(_ context.Context, s *Session, args []Node, _ io.Writer) error {
	k, rest, err := targetOf(findVerb("reset-stats"), args)
	if err != nil {
		return err
	}
	var patterns []string
	for _, a := range rest {
		if a.IsBlock {
			return syntaxf("%q unexpected argument", a.String())
		}
		patterns = append(patterns, a.Word)
	}
	cfg := in.core.Config()
	_, err = in.match(s, &cfg, k.kind, patterns)
	return err
}

// targetOf reads MODULE COMPONENT from args against the verb's targets.
func targetOf(v *verb, args []Node) (target, []Node, error) {
	if len(args) == 0 || args[0].IsBlock {
		return target{}, nil, syntaxf("%s: expected MODULE COMPONENT", v.name)
	}
	module := strings.TrimPrefix(args[0].Word, "/")
	if findModule(module) == "" {
		return target{}, nil, syntaxf("%q unexpected argument", args[0].Word)
	}
	if len(args) < 2 || args[1].IsBlock {
		return target{}, nil, syntaxf("%s %s: expected a component", v.name, module)
	}
	t, ok := findTarget(v.targets, module, args[1].Word)
	if !ok {
		return target{}, nil, syntaxf("%q unexpected argument", args[1].Word)
	}
	return t, args[2:], nil
}

// move is mv: it renames an object and updates every reference to it, in one change, so
// that a refused rename changes nothing. BIG-IP's forms: mv ltm pool a to b, mv ltm pool a b.
func (in *Interpreter) move(ctx context.Context, s *Session, args []Node, _ io.Writer) error {
	t, rest, err := targetOf(findVerb("mv"), args)
	if err != nil {
		return err
	}
	if len(rest) == 3 && !rest[1].IsBlock && rest[1].Word == "to" {
		rest = []Node{rest[0], rest[2]}
	}
	if len(rest) != 2 || rest[0].IsBlock || rest[1].IsBlock {
		return syntaxf("mv %s: expected NAME to NEW-NAME", t.title())
	}
	k := t.kind
	from := in.resolveName(s, k, rest[0].Word)
	to := rest[1].Word
	if !strings.HasPrefix(to, "/") {
		part, _ := config.SplitPath(from)
		to = config.FullPath(to, part)
	}
	return in.core.Update(ctx, func(c *config.Config) error {
		names := k.names(c)
		if !slices.Contains(names, from) {
			return config.NotFound(k.component, displayFull(k, from))
		}
		if slices.Contains(names, to) {
			part, _ := config.SplitPath(to)
			return config.Exists(k.component, displayFull(k, to), part)
		}
		part, short := config.SplitPath(to)
		if !config.ValidName(short) {
			return config.Invalid("%s %s: %q is not a valid name", k.title(), to, short)
		}
		if _, i := c.Shared.FindPartition(part); i < 0 {
			return config.NotFound("folder", "/"+part)
		}
		return k.rename(c, from, to)
	})
}
