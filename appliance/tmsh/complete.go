package tmsh

import (
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/openappliance/appliance/appliance/config"
)

// Candidate is one thing that may come next at the cursor, with a line of help.
type Candidate struct {
	Word string // the word to insert; for a Hint, a description such as <ip-address:port>
	Help string
	// Group is what the word is, for the ? listing: command, module, component, object,
	// property, option, value.
	Group string
	// Hint marks a description of a free value rather than a word to insert.
	Hint bool
}

// Completion is what may come next at a cursor: the candidates that start with the word
// under the cursor, which begins at byte Start of the line.
type Completion struct {
	Start      int
	Candidates []Candidate
}

// Complete returns what may come next at byte pos of line, in session s, from the same
// command table the interpreter parses with; object names are read from the running
// configuration. It never fails: a line it cannot make sense of has no candidates.
func (in *Interpreter) Complete(s *Session, line string, pos int) Completion {
	pos = max(0, min(pos, len(line)))
	for pos > 0 && pos < len(line) && !utf8.RuneStart(line[pos]) {
		pos--
	}
	text := line[:pos]
	sc := scanForCompletion(text)
	if sc.quoted {
		return Completion{Start: pos} // inside a quoted value: free text
	}
	cfg := in.core.Config()
	c := completer{s: s, cfg: &cfg, partial: sc.partial}
	var cands []Candidate
	if len(sc.levels) > 1 {
		cands = c.inBlock(sc.levels)
	} else {
		cands = c.words(sc.levels[0], s)
	}
	out := Completion{Start: sc.start}
	seen := map[string]bool{}
	for _, cand := range cands {
		if seen[cand.Word] {
			continue
		}
		if cand.Hint || strings.HasPrefix(cand.Word, sc.partial) {
			seen[cand.Word] = true
			out.Candidates = append(out.Candidates, cand)
		}
	}
	// Groups keep the order the grammar gives them (objects before options); within a
	// group, words sort and descriptions of free values come last.
	rank := map[string]int{}
	for _, cand := range out.Candidates {
		if _, ok := rank[cand.Group]; !ok {
			rank[cand.Group] = len(rank)
		}
	}
	sort.SliceStable(out.Candidates, func(i, j int) bool {
		a, b := out.Candidates[i], out.Candidates[j]
		if rank[a.Group] != rank[b.Group] {
			return rank[a.Group] < rank[b.Group]
		}
		if a.Hint != b.Hint {
			return !a.Hint
		}
		return a.Word < b.Word
	})
	return out
}

// scan is the line up to the cursor, read as the lexer reads it.
type scan struct {
	levels  [][]Node // the words of each open brace level, outermost first
	partial string   // the word under the cursor, up to the cursor
	start   int      // where it begins
	quoted  bool     // the cursor is inside a quoted string
}

// scanForCompletion reads the last command of text (after the last ';' or newline outside
// braces and quotes) into words and open blocks.
func scanForCompletion(text string) scan {
	sc := scan{levels: [][]Node{nil}}
	wordStart := -1
	endWord := func(i int) {
		if wordStart >= 0 {
			top := len(sc.levels) - 1
			sc.levels[top] = append(sc.levels[top], Node{Word: unquote(text[wordStart:i])})
			wordStart = -1
		}
	}
	quoted := false
	for i := 0; i < len(text); i++ {
		ch := text[i]
		if quoted {
			if ch == '\\' {
				i++
			} else if ch == '"' {
				quoted = false
			}
			continue
		}
		switch {
		case ch == '"':
			if wordStart < 0 {
				wordStart = i
			}
			quoted = true
		case ch == ';' || ch == '\n':
			if len(sc.levels) == 1 {
				wordStart = -1
				sc.levels = [][]Node{nil}
			}
		case isSpace(ch):
			endWord(i)
		case ch == '{':
			endWord(i)
			sc.levels = append(sc.levels, nil)
		case ch == '}':
			endWord(i)
			if len(sc.levels) > 1 {
				inner := sc.levels[len(sc.levels)-1]
				sc.levels = sc.levels[:len(sc.levels)-1]
				top := len(sc.levels) - 1
				sc.levels[top] = append(sc.levels[top], Node{IsBlock: true, Block: inner})
			}
		default:
			if wordStart < 0 {
				wordStart = i
			}
		}
	}
	sc.quoted = quoted
	sc.start = len(text)
	if wordStart >= 0 {
		sc.start = wordStart
		sc.partial = text[wordStart:]
	}
	return sc
}

func unquote(w string) string {
	if len(w) >= 2 && w[0] == '"' && w[len(w)-1] == '"' {
		return strings.ReplaceAll(w[1:len(w)-1], `\"`, `"`)
	}
	return w
}

type completer struct {
	s       *Session
	cfg     *config.Config
	partial string // the word under the cursor
}

// words completes at the outermost level: a verb, then what the verb takes.
func (c completer) words(words []Node, s *Session) []Candidate {
	if len(words) == 0 {
		out := make([]Candidate, 0, len(verbs))
		for _, v := range verbs {
			out = append(out, Candidate{Word: v.name, Help: v.help, Group: "command"})
		}
		return out
	}
	if words[0].IsBlock {
		return nil
	}
	v := findVerb(words[0].Word)
	if v == nil {
		return nil
	}
	args := words[1:]
	// A module given after cd (cd ltm) is implied, as execOne implies it.
	if s.Module != "" && v.targets != nil && (len(args) == 0 || !args[0].IsBlock && findModule(strings.TrimPrefix(args[0].Word, "/")) == "") {
		args = append([]Node{{Word: s.Module}}, args...)
	}
	switch {
	case v.name == "cd":
		if len(args) > 0 {
			return nil
		}
		return c.cdCandidates()
	case v.name == "help":
		if len(args) > 0 {
			return nil
		}
		out := make([]Candidate, 0, len(verbs))
		for _, v := range verbs {
			out = append(out, Candidate{Word: v.name, Help: v.help, Group: "command"})
		}
		return out
	case v.targets == nil:
		return c.fixedWords(v.words, args)
	}
	if len(args) == 0 {
		var out []Candidate
		for _, t := range v.targets {
			out = append(out, Candidate{Word: t.module, Help: moduleHelp(t.module), Group: "module"})
		}
		return out
	}
	module := strings.TrimPrefix(args[0].Word, "/")
	if len(args) == 1 {
		var out []Candidate
		for _, t := range v.targets {
			if t.module == module {
				out = append(out, Candidate{Word: t.component, Help: t.help, Group: "component"})
			}
		}
		return out
	}
	t, ok := findTarget(v.targets, module, args[1].Word)
	if !ok {
		return nil
	}
	return c.afterTarget(v, t, args[2:])
}

func moduleHelp(name string) string {
	for _, m := range modules {
		if m[0] == name {
			return m[1]
		}
	}
	return ""
}

// fixedWords completes verbs that take fixed words (save sys config).
func (c completer) fixedWords(specs []prop, args []Node) []Candidate {
	var out []Candidate
	for _, p := range specs {
		parts := strings.Fields(p.name)
		if len(args) >= len(parts) {
			continue
		}
		match := true
		for i, a := range args {
			if a.IsBlock || a.Word != parts[i] {
				match = false
			}
		}
		if match {
			out = append(out, Candidate{Word: parts[len(args)], Help: p.help, Group: "option"})
		}
	}
	return out
}

func (c completer) cdCandidates() []Candidate {
	out := []Candidate{
		{Word: "/", Help: "the top folder, /Common", Group: "folder"},
		{Word: "..", Help: "up one level", Group: "folder"},
	}
	for _, p := range c.cfg.Shared.Partitions {
		out = append(out, Candidate{Word: "/" + p.Name, Help: "folder " + p.Name, Group: "folder"})
	}
	for _, m := range modules {
		out = append(out, Candidate{Word: m[0], Help: m[1], Group: "module"})
	}
	return out
}

// afterTarget completes what follows MODULE COMPONENT.
func (c completer) afterTarget(v *verb, t target, rest []Node) []Candidate {
	switch v.mode {
	case modeCreate:
		if len(rest) == 0 {
			return []Candidate{{Word: "<name>", Help: "the new " + t.component + "'s name", Group: "object", Hint: true}}
		}
		return c.props(t.kind.specsOf(), rest[1:], false)
	case modeModify:
		if len(rest) == 0 {
			return c.names(t.kind)
		}
		return c.props(t.kind.specsOf(), rest[1:], false)
	case modeMove:
		switch len(rest) {
		case 0:
			return c.names(t.kind)
		case 1:
			return []Candidate{
				{Word: "to", Help: "the new name follows", Group: "option"},
				{Word: "<new-name>", Help: "the " + t.component + "'s new name", Group: "object", Hint: true},
			}
		case 2:
			if !rest[1].IsBlock && rest[1].Word == "to" {
				return []Candidate{{Word: "<new-name>", Help: "the " + t.component + "'s new name", Group: "object", Hint: true}}
			}
		}
		return nil
	case modeWords:
		return c.props(t.opts, rest, true)
	}
	// list, delete, show, reset-stats: names, then options.
	out := c.props(t.opts, rest, true)
	if named, _ := walkProps(t.opts, rest); t.kind != nil && len(named) == 0 {
		out = append(c.names(t.kind), out...)
	}
	return out
}

// names are the kind's objects, as typed in the session's folder: short names of the
// folder's objects, full paths of the others, and full paths of all once the word under
// the cursor starts with '/'.
func (c completer) names(k *kind) []Candidate {
	if k == nil {
		return nil
	}
	part := c.s.folder()
	if part == "" {
		part = config.CommonPartition
	}
	var out []Candidate
	for _, n := range k.names(c.cfg) {
		word := n
		switch {
		case strings.HasPrefix(c.partial, "/"):
			word = displayFull(k, n)
		case k.partitioned:
			if p, short := config.SplitPath(n); p == part {
				word = short
			}
		}
		out = append(out, Candidate{Word: word, Help: k.component + " " + displayFull(k, n), Group: "object"})
	}
	return out
}

// walkProps reads property words and their values; it returns the properties named and,
// when the last one still waits for its value (or a list operation's block), that one.
func walkProps(specs []prop, words []Node) (named []string, pending *prop) {
	for i := 0; i < len(words); i++ {
		w := words[i]
		if w.IsBlock {
			continue
		}
		p, ok := findProp(specs, w.Word)
		if !ok {
			continue
		}
		named = append(named, p.name)
		if !p.takesValue() {
			continue
		}
		if i+1 >= len(words) {
			return named, &p
		}
		i++
		if p.list && !words[i].IsBlock && words[i].Word != "none" {
			if i+1 >= len(words) {
				op := p
				op.name = words[i].Word
				op.list, op.values, op.hint = false, nil, "{"
				op.help = p.help
				return named, &op
			}
			i++
		}
	}
	return named, nil
}

// props completes properties (or options) and their values. With once, a property already
// named is not offered again.
func (c completer) props(specs []prop, words []Node, once bool) []Candidate {
	named, pending := walkProps(specs, words)
	if pending != nil {
		return c.values(*pending)
	}
	var out []Candidate
	for _, p := range specs {
		if once && slices.Contains(named, p.name) {
			continue
		}
		group := "property"
		if once {
			group = "option"
		}
		out = append(out, Candidate{Word: p.name, Help: p.help, Group: group})
	}
	return out
}

// values are what may follow property p.
func (c completer) values(p prop) []Candidate {
	if p.hint == "{" {
		return []Candidate{{Word: "{", Help: "the items of " + p.help, Group: "value"}}
	}
	var out []Candidate
	if p.list {
		for _, op := range listOps {
			out = append(out, Candidate{Word: op.name, Help: op.help, Group: "value"})
		}
		return append(out, Candidate{Word: "{", Help: "the list's items in braces", Group: "value"})
	}
	if len(p.sub) > 0 {
		return []Candidate{{Word: "{", Help: "the " + p.name + " settings in braces", Group: "value"}}
	}
	for _, v := range p.values {
		out = append(out, Candidate{Word: v, Help: valueHelp(p, v), Group: "value"})
	}
	if p.ref != "" {
		if m, comp, ok := strings.Cut(p.ref, " "); ok {
			if k := findKind(m, comp); k != nil {
				out = append(out, c.names(k)...)
			}
		}
	}
	if p.hint != "" {
		out = append(out, Candidate{Word: p.hint, Help: p.help, Group: "value", Hint: true})
	}
	return out
}

// inBlock completes inside braces: the settings of a block property (source-address-
// translation { type snat pool ... }), or a list's items.
func (c completer) inBlock(levels [][]Node) []Candidate {
	outer := levels[0]
	if len(outer) < 3 || outer[0].IsBlock {
		return nil
	}
	v := findVerb(outer[0].Word)
	if v == nil || (v.mode != modeCreate && v.mode != modeModify) {
		return nil
	}
	args := outer[1:]
	if c.s.Module != "" && findModule(strings.TrimPrefix(args[0].Word, "/")) == "" {
		args = append([]Node{{Word: c.s.Module}}, args...)
	}
	if len(args) < 3 {
		return nil
	}
	t, ok := findTarget(v.targets, strings.TrimPrefix(args[0].Word, "/"), args[1].Word)
	if !ok || t.kind == nil {
		return nil
	}
	// The property that owns the innermost block is the last one named before it at the
	// outer level (past a list operation such as add).
	specs := t.kind.specsOf()
	var owner *prop
	for i := len(args) - 1; i >= 3 && owner == nil; i-- {
		if args[i].IsBlock {
			continue
		}
		if p, ok := findProp(specs, args[i].Word); ok {
			owner = &p
		}
	}
	// A block typed as the whole property list (create ... NAME { props }) holds properties.
	if owner == nil {
		if len(levels) == 2 {
			return c.props(specs, levels[1], false)
		}
		return nil
	}
	inner := levels[len(levels)-1]
	switch {
	case len(owner.sub) > 0 && len(levels) == 2:
		return c.props(owner.sub, inner, true)
	case owner.list:
		out := []Candidate{{Word: "}", Help: "end of the list", Group: "value"}}
		for _, v := range owner.values {
			out = append(out, Candidate{Word: v, Help: owner.name + " " + v, Group: "value"})
		}
		if owner.hint != "" {
			out = append(out, Candidate{Word: owner.hint, Help: "an item of " + owner.name, Group: "value", Hint: true})
		}
		return out
	}
	return nil
}
