package tmsh

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// verb is one command of the language: its word, usage line, help, the components it acts on
// and its handler. The interpreter dispatches from this table, help prints it and completion
// walks it, so what help offers is what the parser takes (Delve's pkg/terminal command table).
type verb struct {
	name, usage, help string
	mode              verbMode
	targets           []target // the module/component pairs it takes (nil: words instead)
	words             []prop   // for verbs without targets: the words that may follow
	run               func(in *Interpreter, ctx context.Context, s *Session, args []Node, w io.Writer) error
}

// verbMode says what follows a verb's component: it drives completion.
type verbMode int

const (
	modeWords  verbMode = iota // fixed words (save sys config)
	modeList                   // names or globs, then properties and options
	modeCreate                 // a new name, then properties
	modeModify                 // a name, then properties
	modeDelete                 // names (or connection filters)
	modeMove                   // a name, "to", a new name
	modeNames                  // names, then options (show, reset-stats)
)

// target is a component that a verb acts on.
type target struct {
	module, component, help string
	kind                    *kind  // object names (and properties) come from this kind; nil: none
	opts                    []prop // options and filters after the names
}

func (t target) title() string { return t.module + " " + t.component }

// listOptionSpecs are the options of list.
var listOptionSpecs = []prop{
	flagProp("one-line", "print each object on one line"),
	flagProp("all-properties", "print every property, defaults included"),
	flagProp("non-default-properties", "print only properties that differ from their defaults (the default)"),
	flagProp("recursive", "include the objects of sub-folders"),
}

// verbs is the command table, built once by init and never changed.
var verbs []*verb

func findVerb(name string) *verb {
	for _, v := range verbs {
		if v.name == name {
			return v
		}
	}
	return nil
}

func kindTargets(keep func(*kind) bool, opts func(*kind) []prop) []target {
	var out []target
	for _, k := range kinds {
		if keep(k) {
			t := target{module: k.module, component: k.component, help: k.help, kind: k}
			if opts != nil {
				t.opts = opts(k)
			}
			out = append(out, t)
		}
	}
	return out
}

func findTarget(ts []target, module, component string) (target, bool) {
	for _, t := range ts {
		if t.module == module && t.component == component {
			return t, true
		}
	}
	return target{}, false
}

func buildVerbs() {
	all := func(*kind) bool { return true }
	listOpts := func(k *kind) []prop {
		var out []prop
		for _, p := range k.specsOf() {
			out = append(out, flagProp(p.name, "print only "+p.name+": "+p.help))
		}
		return append(out, listOptionSpecs...)
	}
	deleteTargets := append(kindTargets(func(k *kind) bool { return k.remove != nil }, nil),
		target{module: "sys", component: "connection", help: "delete connections from the kernel's table", opts: connFilterOnly()})
	mutate := func(verb string) func(in *Interpreter, ctx context.Context, s *Session, args []Node, w io.Writer) error {
		return func(in *Interpreter, ctx context.Context, s *Session, args []Node, w io.Writer) error {
			return in.mutate(ctx, s, verb, args, w)
		}
	}
	verbs = []*verb{
		{name: "cd", usage: "cd FOLDER|MODULE|..|/", help: "change the current folder or module",
			run: func(in *Interpreter, _ context.Context, s *Session, args []Node, _ io.Writer) error {
				return cd(s, args, in.core.Config())
			}},
		{name: "create", usage: "create MODULE COMPONENT NAME PROPERTIES", help: "create an object", mode: modeCreate,
			targets: kindTargets(func(k *kind) bool { return k.create != nil }, nil), run: mutate("create")},
		{name: "delete", usage: "delete MODULE COMPONENT NAME... | delete sys connection FILTERS", help: "delete objects, or connections from the kernel's table", mode: modeDelete,
			targets: deleteTargets, run: mutate("delete")},
		{name: "exit", usage: "exit", help: "leave the shell", run: quit},
		{name: "help", usage: "help [COMMAND]", help: "print the commands, or one command's components",
			run: func(_ *Interpreter, _ context.Context, _ *Session, args []Node, w io.Writer) error {
				return help(w, args)
			}},
		{name: "list", usage: "list [MODULE [COMPONENT [NAME|GLOB...]]] [PROPERTY...] [one-line|all-properties|non-default-properties]", help: "print configuration", mode: modeList,
			targets: kindTargets(all, listOpts), run: (*Interpreter).listCmd},
		{name: "load", usage: "load sys config", help: "re-read the configuration files", words: []prop{{name: "sys config", help: "the configuration files"}}, run: (*Interpreter).load},
		{name: "modify", usage: "modify MODULE COMPONENT NAME PROPERTIES", help: "change an object", mode: modeModify,
			targets: kindTargets(func(k *kind) bool { return k.modify != nil }, nil), run: mutate("modify")},
		{name: "mv", usage: "mv MODULE COMPONENT NAME to NEW-NAME", help: "rename an object and every reference to it", mode: modeMove,
			targets: kindTargets(func(k *kind) bool { return k.rename != nil }, nil), run: (*Interpreter).move},
		{name: "quit", usage: "quit", help: "leave the shell", run: quit},
		{name: "reset-stats", usage: "reset-stats MODULE COMPONENT [NAME...]", help: "zero the statistics of objects", mode: modeNames,
			targets: statsTargets(), run: (*Interpreter).resetStats},
		{name: "run", usage: "run sys failover standby | run cm config-sync to-group GROUP | run util ping [-c COUNT] ADDRESS", help: "make this device Standby, push the configuration to a group, or ping from the device", mode: modeWords,
			targets: runTargets, run: (*Interpreter).run},
		{name: "save", usage: "save sys config", help: "write the configuration files", words: []prop{{name: "sys config", help: "the configuration files"}}, run: (*Interpreter).save},
		{name: "show", usage: "show MODULE COMPONENT [NAME...] [OPTIONS]", help: "print status and statistics", mode: modeNames,
			targets: showTargetList(), run: (*Interpreter).show},
	}
}

func quit(*Interpreter, context.Context, *Session, []Node, io.Writer) error { return ErrQuit }

// runTargets are what run takes; their options are the words after the component.
var runTargets = []target{
	{module: "cm", component: "config-sync", help: "push the shared configuration to a device group",
		opts: []prop{{name: "to-group", help: "the device group to push to", ref: "cm device-group"}}},
	{module: "sys", component: "failover", help: "change this device's failover state",
		opts: []prop{flagProp("standby", "make this Active device Standby")}},
	{module: "util", component: "ping", help: "send ICMP echo requests from this device: run util ping [-c COUNT] ADDRESS",
		opts: []prop{freeProp("-c", "how many echo requests (1 to 100; 4 if not given)", "<count>")}},
}

func (in *Interpreter) save(ctx context.Context, _ *Session, args []Node, w io.Writer) error {
	if !isWords(args, "sys", "config") {
		return syntaxf("save: expected \"sys config\"")
	}
	if err := in.core.Save(ctx); err != nil {
		return err
	}
	_, err := io.WriteString(w, "Saving running configuration...\n")
	return err
}

func (in *Interpreter) load(ctx context.Context, _ *Session, args []Node, w io.Writer) error {
	if !isWords(args, "sys", "config") {
		return syntaxf("load: expected \"sys config\"")
	}
	if err := in.core.Load(ctx); err != nil {
		return err
	}
	_, err := io.WriteString(w, "Loading configuration...\n")
	return err
}

// help prints the command table, or with a verb the components it takes.
func help(w io.Writer, args []Node) error {
	var b strings.Builder
	if len(args) == 1 && !args[0].IsBlock {
		v := findVerb(args[0].Word)
		if v == nil {
			return syntaxf("%q unknown command", args[0].Word)
		}
		fmt.Fprintf(&b, "%s\n    %s\n", v.usage, v.help)
		if len(v.targets) > 0 {
			b.WriteString("Components:\n")
		}
		for _, t := range v.targets {
			fmt.Fprintf(&b, "    %-24s %s\n", t.title(), t.help)
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	if len(args) > 0 {
		return syntaxf("help: expected at most one command")
	}
	b.WriteString("Commands:\n")
	for _, v := range verbs {
		fmt.Fprintf(&b, "    %-12s %s\n", v.name, v.help)
	}
	b.WriteString("Modules:\n")
	for _, m := range modules {
		fmt.Fprintf(&b, "    %-12s %s\n", m[0], m[1])
	}
	b.WriteString("Type \"help COMMAND\" for a command's components, or \"?\" while typing for what may come next.\n")
	_, err := io.WriteString(w, b.String())
	return err
}
