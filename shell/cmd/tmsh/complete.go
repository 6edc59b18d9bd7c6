package main

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/openappliance/appliance/appliance/api"
)

// askFunc asks the daemon what may come next at byte pos of line.
type askFunc func(line string, pos int) (api.CompleteResponse, error)

// completer is readline's AutoCompleter: Tab completes from the daemon's command table and
// live object names.
type completer struct {
	ask askFunc
}

// Do returns the candidates' remainders after the word under the cursor, and that word's
// length in runes, as readline wants them. A single candidate gets a trailing space so
// that the next Tab moves on to the next word, as tmsh does.
func (c completer) Do(line []rune, pos int) ([][]rune, int) {
	pos = max(0, min(pos, len(line)))
	text := string(line)
	bytePos := len(string(line[:pos]))
	resp, err := c.ask(text, bytePos)
	if err != nil || resp.Start < 0 || resp.Start > bytePos {
		return nil, 0
	}
	typed := text[resp.Start:bytePos]
	var out [][]rune
	for _, cand := range resp.Candidates {
		if cand.Hint || !strings.HasPrefix(cand.Word, typed) {
			continue
		}
		out = append(out, []rune(cand.Word[len(typed):]))
	}
	if len(out) == 1 {
		out[0] = append(out[0], ' ')
	}
	return out, utf8.RuneCountInString(typed)
}

// helpKey is readline's Listener for '?': typed outside a quoted string it is not inserted;
// it lists what may come next with a line of help each and redisplays the line, as tmsh
// does.
type helpKey struct {
	ask    askFunc
	out    func() io.Writer // readline's Stdout, which redraws the line after writing
	prompt func() string    // the current prompt, to echo the line as typed
}

// OnChange implements readline.Listener; readline has inserted the '?' when it calls it.
func (h helpKey) OnChange(line []rune, pos int, key rune) ([]rune, int, bool) {
	if key != '?' || pos <= 0 || pos > len(line) || line[pos-1] != '?' || inQuotes(string(line[:pos-1])) {
		return nil, 0, false
	}
	rest := append(append([]rune(nil), line[:pos-1]...), line[pos:]...)
	text := string(rest)
	resp, err := h.ask(text, len(string(rest[:pos-1])))
	var b strings.Builder
	fmt.Fprintf(&b, "%s%s?\n", h.prompt(), text)
	if err != nil {
		fmt.Fprintf(&b, "%v\n", err)
	} else {
		b.WriteString(formatHelp(resp.Candidates))
	}
	io.WriteString(h.out(), b.String())
	return rest, pos - 1, true
}

// inQuotes reports whether text ends inside a quoted string, where '?' is just a character.
func inQuotes(text string) bool {
	quoted := false
	for i := 0; i < len(text); i++ {
		switch {
		case quoted && text[i] == '\\':
			i++
		case text[i] == '"':
			quoted = !quoted
		}
	}
	return quoted
}

// groupTitles are the headings of the ? listing, as tmsh titles them.
var groupTitles = map[string]string{
	"command": "Commands", "module": "Modules", "component": "Components", "object": "Objects",
	"property": "Properties", "option": "Options", "value": "Values", "folder": "Folders",
}

// formatHelp lays the candidates out under their group's heading, in the order the groups
// first appear, with a line of help each.
func formatHelp(cands []api.Candidate) string {
	if len(cands) == 0 {
		return "No completions: nothing may follow here, or the line has an error.\n"
	}
	width := 0
	var order []string
	byGroup := map[string][]api.Candidate{}
	for _, c := range cands {
		width = max(width, utf8.RuneCountInString(c.Word))
		if _, ok := byGroup[c.Group]; !ok {
			order = append(order, c.Group)
		}
		byGroup[c.Group] = append(byGroup[c.Group], c)
	}
	width = min(width, 32)
	var b strings.Builder
	for _, g := range order {
		title := groupTitles[g]
		if title == "" {
			title = g
		}
		fmt.Fprintf(&b, "%s:\n", title)
		for _, c := range byGroup[g] {
			fmt.Fprintf(&b, "  %-*s  %s\n", width, c.Word, c.Help)
		}
	}
	return b.String()
}
