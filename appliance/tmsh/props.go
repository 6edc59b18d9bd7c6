package tmsh

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/openappliance/appliance/appliance/config"
)

// cursor walks the property words of a create or modify command.
type cursor struct {
	nodes []Node
	i     int
	specs []prop // the properties the command may name; nil: any
}

func (c *cursor) done() bool { return c.i >= len(c.nodes) }

// key returns the next property name.
func (c *cursor) key() (string, error) {
	n := c.nodes[c.i]
	c.i++
	if n.IsBlock {
		return "", syntaxf("%q unexpected", n.String())
	}
	if c.specs != nil {
		if _, ok := findProp(c.specs, n.Word); !ok {
			return "", unknownProp("", n.Word)
		}
	}
	return n.Word, nil
}

// word returns the value of prop, which must be a single word.
func (c *cursor) word(prop string) (string, error) {
	if c.done() {
		return "", syntaxf("%q requires a value", prop)
	}
	n := c.nodes[c.i]
	c.i++
	if n.IsBlock {
		return "", syntaxf("%q requires a single value, not %s", prop, n.String())
	}
	return n.Word, nil
}

// text returns a word value where BIG-IP's "none" means empty, such as a description.
func (c *cursor) text(prop string) (string, error) {
	w, err := c.word(prop)
	return noneEmpty(w), err
}

// oneOf returns the value of prop, which must be one of allowed.
func (c *cursor) oneOf(prop string, allowed []string) (string, error) {
	w, err := c.word(prop)
	if err != nil {
		return "", err
	}
	return parseOneOf(prop, w, allowed)
}

// enabled returns the value of prop, which must be enabled or disabled.
func (c *cursor) enabled(prop string) (bool, error) {
	w, err := c.word(prop)
	if err != nil {
		return false, err
	}
	return parseEnabled(prop, w)
}

// block returns the value of prop, which must be a brace block.
func (c *cursor) block(prop string) ([]Node, error) {
	if c.done() || !c.nodes[c.i].IsBlock {
		return nil, syntaxf("%q requires a value in braces", prop)
	}
	n := c.nodes[c.i]
	c.i++
	return n.Block, nil
}

// listOp reads a list property: "{ a b }", "add { a }", "delete { a }",
// "replace-all-with { a }", "modify { a }" or "none".
func (c *cursor) listOp(prop string) (op string, items []Node, err error) {
	if c.done() {
		return "", nil, syntaxf("%q requires a value", prop)
	}
	n := c.nodes[c.i]
	if n.IsBlock {
		c.i++
		return "replace-all-with", n.Block, nil
	}
	switch n.Word {
	case "none":
		c.i++
		return "replace-all-with", nil, nil
	case "add", "delete", "replace-all-with", "modify":
		c.i++
		items, err := c.block(prop + " " + n.Word)
		return n.Word, items, err
	}
	return "", nil, syntaxf("%q requires a value in braces, or add, delete, replace-all-with or none", prop)
}

// listItems splits a list block into items: a word, optionally followed by its own block
// of settings ("ext { untagged }", "10.1.0.100:3306 { address 10.1.0.100 }").
type listItem struct {
	name     string
	settings []Node
}

func listItems(prop string, nodes []Node) ([]listItem, error) {
	var out []listItem
	for i := 0; i < len(nodes); i++ {
		n := nodes[i]
		if n.IsBlock {
			// An anonymous item, such as unicast-address { { ip 192.168.77.2 } }.
			out = append(out, listItem{settings: n.Block})
			continue
		}
		it := listItem{name: n.Word}
		if i+1 < len(nodes) && nodes[i+1].IsBlock {
			it.settings = nodes[i+1].Block
			i++
		}
		out = append(out, it)
	}
	return out, nil
}

// editList reads a list property (see listOp), parses its items and applies the operation
// to current, matching items by key.
func editList[T any](cur *cursor, prop string, current []T, parse func(listItem) (T, error), key func(T) string) ([]T, error) {
	op, nodes, err := cur.listOp(prop)
	if err != nil {
		return nil, err
	}
	items, err := listItems(prop, nodes)
	if err != nil {
		return nil, err
	}
	parsed := make([]T, 0, len(items))
	for _, it := range items {
		v, err := parse(it)
		if err != nil {
			return nil, err
		}
		parsed = append(parsed, v)
	}
	return applyList(prop, op, current, parsed, key)
}

// itemName parses a list item that is just a name, such as an interface.
func itemName(it listItem) (string, error) { return it.name, nil }

// itemShortName parses a list item that may be given with its folder, such as /Common/lb1.
func itemShortName(it listItem) (string, error) {
	_, n := config.SplitPath(it.name)
	return n, nil
}

func identity(s string) string { return s }

// applyList applies a list operation to current, matching items by key.
func applyList[T any](prop, op string, current []T, items []T, key func(T) string) ([]T, error) {
	switch op {
	case "replace-all-with":
		seen := map[string]bool{}
		for _, it := range items {
			if seen[key(it)] {
				return nil, syntaxf("%s: %q given twice", prop, key(it))
			}
			seen[key(it)] = true
		}
		return items, nil
	case "add":
		out := append([]T(nil), current...)
		for _, it := range items {
			for _, c := range out {
				if key(c) == key(it) {
					return nil, syntaxf("%s: %q is already there", prop, key(it))
				}
			}
			out = append(out, it)
		}
		return out, nil
	case "delete":
		out := append([]T(nil), current...)
		for _, it := range items {
			found := false
			for j, c := range out {
				if key(c) == key(it) {
					out = append(out[:j], out[j+1:]...)
					found = true
					break
				}
			}
			if !found {
				return nil, syntaxf("%s: %q is not there", prop, key(it))
			}
		}
		return out, nil
	case "modify":
		out := append([]T(nil), current...)
		for _, it := range items {
			found := false
			for j, c := range out {
				if key(c) == key(it) {
					out[j] = it
					found = true
				}
			}
			if !found {
				return nil, syntaxf("%s: %q is not there", prop, key(it))
			}
		}
		return out, nil
	}
	return nil, syntaxf("%s: unknown list operation %q", prop, op)
}

func parseAddr(prop, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, syntaxf("%s: %q is not an IP address", prop, s)
	}
	return a, nil
}

// parseAddrPort reads BIG-IP's forms: 10.0.0.10:3306, /RPC/10.0.0.10:3306, 10.0.0.10:any,
// and for IPv6 2001:db8::1.3306. The partition prefix, if any, is returned apart.
func parseAddrPort(prop, s string) (netip.AddrPort, string, error) {
	partition := ""
	if strings.HasPrefix(s, "/") {
		partition, s = config.SplitPath(s)
	}
	bad := syntaxf("%s: %q is not an address and port (such as 10.0.0.10:3306)", prop, s)
	var host, port string
	if i := strings.LastIndex(s, ":"); i > 0 && strings.Count(s, ":") == 1 {
		host, port = s[:i], s[i+1:]
	} else if i := strings.LastIndex(s, "."); i > 0 && strings.Contains(s, ":") {
		host, port = s[:i], s[i+1:]
	} else if strings.HasPrefix(s, "[") {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.AddrPort{}, "", bad
		}
		return ap, partition, nil
	} else {
		return netip.AddrPort{}, "", bad
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, "", bad
	}
	p, err := parsePort(port)
	if err != nil {
		return netip.AddrPort{}, "", bad
	}
	return netip.AddrPortFrom(a, p), partition, nil
}

func parsePort(s string) (uint16, error) {
	if s == "any" || s == "*" {
		return 0, nil
	}
	if p, ok := services[s]; ok {
		return p, nil
	}
	n, err := strconv.ParseUint(s, 10, 16)
	return uint16(n), err
}

// services are the service names BIG-IP prints for well-known ports.
var services = map[string]uint16{"mysql": 3306, "http": 80, "https": 443, "ssh": 22, "domain": 53, "ldap": 389, "amqp": 5672}

// formatAddrPort prints an address and port as BIG-IP does (IPv6 with a dot before the port).
func formatAddrPort(ap netip.AddrPort) string {
	port := strconv.Itoa(int(ap.Port()))
	if ap.Port() == 0 {
		port = "any"
	}
	if ap.Addr().Is6() {
		return ap.Addr().String() + "." + port
	}
	return ap.Addr().String() + ":" + port
}

func parseEnabled(prop, s string) (bool, error) {
	switch s {
	case "enabled":
		return true, nil
	case "disabled":
		return false, nil
	}
	return false, syntaxf("%s: %q must be enabled or disabled", prop, s)
}

func enabledWord(b bool) string {
	if b {
		return "enabled"
	}
	return "disabled"
}

func parseOneOf(prop, s string, allowed []string) (string, error) {
	for _, a := range allowed {
		if a == s {
			return s, nil
		}
	}
	return "", syntaxf("%s: %q must be one of %s", prop, s, strings.Join(allowed, ", "))
}

func unknownProp(kind, prop string) error {
	return fmt.Errorf("Syntax Error: %q unknown property", prop)
}
