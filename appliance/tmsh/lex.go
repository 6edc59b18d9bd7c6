package tmsh

import (
	"fmt"
	"strings"
)

// Node is one element of a parsed command: a word, or a brace block of nodes.
type Node struct {
	Word    string
	Block   []Node
	IsBlock bool
}

func (n Node) String() string {
	if !n.IsBlock {
		return n.Word
	}
	parts := make([]string, len(n.Block))
	for i, c := range n.Block {
		parts[i] = c.String()
	}
	if len(parts) == 0 {
		return "{ }"
	}
	return "{ " + strings.Join(parts, " ") + " }"
}

// SplitCommands splits a line into commands at ';' and newlines outside braces and quotes,
// as tmsh -c does. Empty commands and '#' comments are dropped.
func SplitCommands(line string) ([]string, error) {
	var cmds []string
	var cur strings.Builder
	depth, quoted, comment := 0, false, false
	flush := func() {
		if s := strings.TrimSpace(cur.String()); s != "" {
			cmds = append(cmds, s)
		}
		cur.Reset()
	}
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case comment:
			if c == '\n' {
				comment = false
				if depth == 0 {
					flush()
				}
			}
			continue
		case quoted:
			if c == '\\' && i+1 < len(line) {
				cur.WriteByte(c)
				i++
				c = line[i]
			} else if c == '"' {
				quoted = false
			}
		case c == '"':
			quoted = true
		case c == '#' && (cur.Len() == 0 || isSpace(line[i-1])):
			comment = true
			continue
		case c == '{':
			depth++
		case c == '}':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("Syntax Error: unexpected \"}\"")
			}
		case (c == ';' || c == '\n') && depth == 0:
			flush()
			continue
		}
		cur.WriteByte(c)
	}
	if quoted {
		return nil, fmt.Errorf("Syntax Error: missing closing quote")
	}
	if depth > 0 {
		return nil, fmt.Errorf("Syntax Error: missing \"}\"")
	}
	flush()
	return cmds, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// Parse turns one command into nodes: words, with brace blocks nested.
func Parse(cmd string) ([]Node, error) {
	toks, err := tokenize(cmd)
	if err != nil {
		return nil, err
	}
	nodes, rest, err := parseNodes(toks, 0)
	if err != nil {
		return nil, err
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("Syntax Error: unexpected \"}\"")
	}
	return nodes, nil
}

type token struct {
	text  string
	brace byte // '{' or '}' for braces, 0 for words
}

func tokenize(s string) ([]token, error) {
	var toks []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case isSpace(c):
			i++
		case c == '{' || c == '}':
			toks = append(toks, token{text: string(c), brace: c})
			i++
		case c == '"':
			var b strings.Builder
			i++
			closed := false
			for i < len(s) {
				if s[i] == '\\' && i+1 < len(s) {
					b.WriteByte(s[i+1])
					i += 2
					continue
				}
				if s[i] == '"' {
					closed = true
					i++
					break
				}
				b.WriteByte(s[i])
				i++
			}
			if !closed {
				return nil, fmt.Errorf("Syntax Error: missing closing quote")
			}
			toks = append(toks, token{text: b.String()})
		default:
			j := i
			for j < len(s) && !isSpace(s[j]) && s[j] != '{' && s[j] != '}' && s[j] != '"' {
				j++
			}
			toks = append(toks, token{text: s[i:j]})
			i = j
		}
	}
	return toks, nil
}

func parseNodes(toks []token, depth int) ([]Node, []token, error) {
	if depth > 32 {
		return nil, nil, fmt.Errorf("Syntax Error: braces nested too deeply")
	}
	var nodes []Node
	for len(toks) > 0 {
		t := toks[0]
		switch t.brace {
		case '{':
			block, rest, err := parseNodes(toks[1:], depth+1)
			if err != nil {
				return nil, nil, err
			}
			if len(rest) == 0 {
				return nil, nil, fmt.Errorf("Syntax Error: missing \"}\"")
			}
			nodes = append(nodes, Node{IsBlock: true, Block: block})
			toks = rest[1:]
		case '}':
			if depth == 0 {
				return nil, nil, fmt.Errorf("Syntax Error: unexpected \"}\"")
			}
			return nodes, toks, nil
		default:
			nodes = append(nodes, Node{Word: t.text})
			toks = toks[1:]
		}
	}
	if depth > 0 {
		return nil, nil, fmt.Errorf("Syntax Error: missing \"}\"")
	}
	return nodes, nil, nil
}
