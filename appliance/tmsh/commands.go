package tmsh

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/openappliance/appliance/appliance/config"
)

func (in *Interpreter) listCmd(ctx context.Context, s *Session, args []Node, w io.Writer) error {
	cfg := in.core.Config()
	var selected []*kind
	if len(args) == 0 || isOption(args[0]) {
		selected = kinds
	} else {
		module := strings.TrimPrefix(args[0].Word, "/")
		if findModule(module) == "" {
			return syntaxf("%q unexpected argument", args[0].String())
		}
		args = args[1:]
		if len(args) == 0 || isOption(args[0]) {
			for _, k := range kinds {
				if k.module == module {
					selected = append(selected, k)
				}
			}
		} else {
			k := findKind(module, args[0].Word)
			if k == nil {
				return syntaxf("%q unexpected argument", args[0].String())
			}
			selected = []*kind{k}
			args = args[1:]
		}
	}
	var opt renderOptions
	var patterns []string
	recursive := false
	for _, a := range args {
		if a.IsBlock {
			return syntaxf("%q unexpected argument", a.String())
		}
		switch a.Word {
		case "one-line":
			opt.oneLine = true
			continue
		case "all-properties":
			opt.all = true
			continue
		case "recursive":
			recursive = true
			continue
		case "non-default-properties":
			continue
		}
		if len(selected) == 1 && slices.Contains(selected[0].props, a.Word) && !slices.Contains(selected[0].names(&cfg), in.resolveName(s, selected[0], a.Word)) {
			opt.only = append(opt.only, a.Word)
			continue
		}
		if len(selected) != 1 {
			return syntaxf("%q unexpected argument", a.Word)
		}
		patterns = append(patterns, a.Word)
	}
	for _, k := range selected {
		names, err := in.match(s, &cfg, k, patterns)
		if err != nil {
			return err
		}
		if recursive && len(patterns) == 0 && k.partitioned && s.Partition == RootFolder {
			names = k.names(&cfg) // the root's sub-folders are every partition
		}
		for _, name := range names {
			if err := writeObject(w, k.render(&cfg, name), opt); err != nil {
				return err
			}
		}
	}
	return nil
}

// isOption reports whether n is one of list's options (listOptionSpecs).
func isOption(n Node) bool {
	if n.IsBlock {
		return false
	}
	_, ok := findProp(listOptionSpecs, n.Word)
	return ok
}

// resolveName turns a name as typed into the kind's stored name.
func (in *Interpreter) resolveName(s *Session, k *kind, name string) string {
	if k.partitioned {
		return config.FullPath(name, s.folder())
	}
	return strings.TrimPrefix(name, "/Common/")
}

// match returns the names of k's objects that the patterns select: all objects of the
// current partition when there is no pattern; an exact name that does not exist is an error.
func (in *Interpreter) match(s *Session, cfg *config.Config, k *kind, patterns []string) ([]string, error) {
	all := k.names(cfg)
	if len(patterns) == 0 {
		if !k.partitioned {
			return all, nil
		}
		if s.Partition == RootFolder {
			return nil, nil // objects live in partitions: list them with recursive
		}
		part := s.Partition
		if part == "" {
			part = config.CommonPartition
		}
		var out []string
		for _, n := range all {
			if p, _ := config.SplitPath(n); p == part {
				out = append(out, n)
			}
		}
		return out, nil
	}
	var out []string
	for _, p := range patterns {
		full := in.resolveName(s, k, p)
		if !strings.ContainsAny(p, "*?[") {
			if !slices.Contains(all, full) {
				return nil, config.NotFound(k.component, displayFull(k, full))
			}
			out = append(out, full)
			continue
		}
		for _, n := range all {
			if ok, _ := path.Match(full, n); ok && !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out, nil
}

func displayFull(k *kind, name string) string {
	if k.partitioned || strings.HasPrefix(name, "/") {
		return name
	}
	return "/Common/" + name
}

func (in *Interpreter) mutate(ctx context.Context, s *Session, verb string, args []Node, w io.Writer) error {
	if len(args) < 2 || args[0].IsBlock || args[1].IsBlock {
		return syntaxf("%s: expected MODULE COMPONENT NAME", verb)
	}
	module := strings.TrimPrefix(args[0].Word, "/")
	if findModule(module) == "" {
		return syntaxf("%q unexpected argument", args[0].Word)
	}
	if verb == "delete" && module == "sys" && args[1].Word == "connection" {
		return in.deleteConnections(ctx, s, args[2:])
	}
	k := findKind(module, args[1].Word)
	if k == nil {
		return syntaxf("%q unexpected argument", args[1].Word)
	}
	args = args[2:]
	if len(args) == 0 || args[0].IsBlock {
		return syntaxf("%s %s: a name is required", verb, k.title())
	}
	// tmsh takes the properties bare or wrapped in one block, the form list prints.
	if verb != "delete" && len(args) == 2 && args[1].IsBlock {
		args = append([]Node{args[0]}, args[1].Block...)
	}
	switch verb {
	case "create":
		if k.create == nil {
			return syntaxf("%s objects cannot be created", k.title())
		}
		name := in.resolveName(s, k, args[0].Word)
		return in.core.Update(ctx, func(c *config.Config) error {
			if slices.Contains(k.names(c), name) {
				part, _ := config.SplitPath(name)
				return config.Exists(k.component, displayFull(k, name), part)
			}
			if _, short := config.SplitPath(name); !config.ValidName(short) {
				return config.Invalid("%s %s: %q is not a valid name", k.title(), name, short)
			}
			props, err := takePartition(k, name, args[1:])
			if err != nil {
				return err
			}
			return k.create(c, name, &cursor{nodes: props, specs: k.specsOf()})
		})
	case "modify":
		return in.core.Update(ctx, func(c *config.Config) error {
			names, err := in.match(s, c, k, []string{args[0].Word})
			if err != nil {
				return err
			}
			if k.modify == nil {
				return syntaxf("%s objects cannot be modified", k.title())
			}
			for _, name := range names {
				props, err := takePartition(k, name, args[1:])
				if err != nil {
					return err
				}
				if err := k.modify(c, name, &cursor{nodes: props, specs: k.specsOf()}); err != nil {
					return err
				}
			}
			return nil
		})
	default:
		if k.remove == nil {
			return syntaxf("%s objects cannot be deleted", k.title())
		}
		var patterns []string
		for _, a := range args {
			if a.IsBlock {
				return syntaxf("%q unexpected argument", a.String())
			}
			patterns = append(patterns, a.Word)
		}
		return in.core.Update(ctx, func(c *config.Config) error {
			names, err := in.match(s, c, k, patterns)
			if err != nil {
				return err
			}
			for _, name := range names {
				if err := k.remove(c, name); err != nil {
					return err
				}
			}
			return nil
		})
	}
}

func (in *Interpreter) run(ctx context.Context, s *Session, args []Node, w io.Writer) error {
	switch {
	case isWords(args, "sys", "failover", "standby"):
		return in.core.ForceStandby(ctx)
	case len(args) == 4 && isWords(args[:3], "cm", "config-sync", "to-group") && !args[3].IsBlock:
		return in.core.ConfigSync(ctx, args[3].Word)
	case len(args) >= 2 && isWords(args[:2], "cm", "config-sync"):
		return syntaxf("run cm config-sync: expected \"to-group GROUP\"")
	case len(args) >= 2 && isWords(args[:2], "util", "ping"):
		host, count, err := pingArgs(args[2:])
		if err != nil {
			return err
		}
		return in.core.Ping(ctx, host, count, w)
	}
	return syntaxf("run: expected \"sys failover standby\", \"cm config-sync to-group GROUP\" or \"util ping [-c COUNT] ADDRESS\"")
}

// pingArgs reads BIG-IP's "run util ping" arguments: an address and, before or after it,
// -c COUNT. Only these: the daemon runs ping itself, so nothing else may reach its command line.
func pingArgs(args []Node) (netip.Addr, int, error) {
	var host netip.Addr
	count := 4
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a.IsBlock:
			return host, 0, syntaxf("%q unexpected", a.String())
		case a.Word == "-c":
			if i+1 >= len(args) || args[i+1].IsBlock {
				return host, 0, syntaxf("run util ping: -c needs a count")
			}
			i++
			n, err := strconv.Atoi(args[i].Word)
			if err != nil || n < 1 || n > 100 {
				return host, 0, config.Invalid("run util ping: count %q must be a number from 1 to 100", args[i].Word)
			}
			count = n
		case host.IsValid():
			return host, 0, syntaxf("%q unexpected argument", a.Word)
		default:
			h, err := netip.ParseAddr(a.Word)
			if err != nil || h.Zone() != "" {
				return host, 0, config.Invalid("run util ping: %q is not an IP address", a.Word)
			}
			host = h
		}
	}
	if !host.IsValid() {
		return host, 0, syntaxf("run util ping: expected an address")
	}
	return host, count, nil
}

func wrapf(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}

// takePartition removes a "partition NAME" property, which list prints for objects outside
// /Common; it must agree with the object's path.
func takePartition(k *kind, name string, props []Node) ([]Node, error) {
	out := make([]Node, 0, len(props))
	for i := 0; i < len(props); i++ {
		if !k.partitioned || props[i].IsBlock || props[i].Word != "partition" || i+1 >= len(props) {
			out = append(out, props[i])
			continue
		}
		part, _ := config.SplitPath(name)
		if props[i+1].Word != part {
			return nil, config.Invalid("%s %s: partition %s does not match the object's path", k.title(), name, props[i+1].Word)
		}
		i++
	}
	return out, nil
}
