package tmsh

import "slices"

// prop describes one property (or option) a command takes: its name, a line of help, and
// the value it takes. The same description serves the parser (a name that is not here is
// an unknown property), help and completion, so they cannot drift apart.
type prop struct {
	name   string
	help   string
	values []string // the words the value may be, such as enabled and disabled; nil: free
	hint   string   // what a free value looks like, such as "<ip-address:port>"
	flag   bool     // takes no value (enabled, disabled, one-line)
	list   bool     // a list, edited with add, delete, replace-all-with or none
	ref    string   // names of this kind ("ltm pool") are the values it takes
	sub    []prop   // the properties of its brace block, such as source-address-translation
}

// takesValue reports whether the word after the property is its value.
func (p prop) takesValue() bool { return !p.flag }

func findProp(specs []prop, name string) (prop, bool) {
	for _, p := range specs {
		if p.name == name {
			return p, true
		}
	}
	return prop{}, false
}

func propNames(specs []prop) []string {
	out := make([]string, len(specs))
	for i, p := range specs {
		out[i] = p.name
	}
	return out
}

// Shorthands for the table.
func enumProp(name, help string, values ...string) prop {
	return prop{name: name, help: help, values: values}
}

func enabledProp(name, help string) prop {
	return enumProp(name, help, "enabled", "disabled")
}

func freeProp(name, help, hint string) prop { return prop{name: name, help: help, hint: hint} }

func flagProp(name, help string) prop { return prop{name: name, help: help, flag: true} }

func listProp(name, help, hint string) prop {
	return prop{name: name, help: help, hint: hint, list: true}
}

func refProp(name, help, kind string) prop {
	return prop{name: name, help: help, ref: kind, values: []string{"none"}}
}

var descriptionProp = freeProp("description", "a note for people: none clears it", "<text>")

// listOps are the words a list property takes before its block.
var listOps = []prop{
	{name: "add", help: "add these items to the list"},
	{name: "delete", help: "remove these items from the list"},
	{name: "replace-all-with", help: "make the list exactly these items"},
	{name: "modify", help: "change the settings of these items"},
	{name: "none", help: "empty the list"},
}

// valueHelp is the help line of a value word of p.
func valueHelp(p prop, v string) string {
	switch v {
	case "enabled":
		return "turn " + p.name + " on"
	case "disabled":
		return "turn " + p.name + " off"
	case "none":
		if p.ref != "" {
			return "no " + p.ref
		}
	}
	return p.name + " " + v
}

// specsOf returns the property descriptions of k: its own, or bare names with a generic
// help line for a kind that lists only names.
func (k *kind) specsOf() []prop {
	if len(k.specs) > 0 {
		return k.specs
	}
	out := make([]prop, 0, len(k.props))
	for _, n := range k.props {
		out = append(out, freeProp(n, "the "+n+" of the "+k.component, "<value>"))
	}
	return out
}

// hasProp reports whether name is one of k's properties.
func (k *kind) hasProp(name string) bool { return slices.Contains(k.props, name) }
