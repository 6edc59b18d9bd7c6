package tmsh

import (
	"io"
	"sort"
	"strings"
)

// Prop is one property of an object as tmsh prints it: a value, or a block of props.
type Prop struct {
	Key     string
	Value   string
	Block   []Prop
	IsBlock bool
	Default bool // equal to the default: printed only with all-properties
	Raw     bool // Value is printed as is (already quoted)
}

// Object is a configuration object as tmsh prints it.
type Object struct {
	Kind  string // "ltm virtual"
	Name  string // as displayed
	Props []Prop
}

// val is a scalar property.
func val(key, value string) Prop { return Prop{Key: key, Value: value} }

// def is a scalar property that is at its default when value == dflt.
func def(key, value, dflt string) Prop { return Prop{Key: key, Value: value, Default: value == dflt} }

// block is a block property.
func block(key string, props ...Prop) Prop { return Prop{Key: key, Block: props, IsBlock: true} }

// words is a block of bare words, such as "interfaces { ext }".
func words(key string, items []string) Prop {
	p := Prop{Key: key, IsBlock: true, Default: len(items) == 0}
	for _, it := range items {
		p.Block = append(p.Block, Prop{Key: it})
	}
	return p
}

// renderOptions select what list prints.
type renderOptions struct {
	oneLine bool
	all     bool     // all-properties
	only    []string // named properties only
}

func (o renderOptions) keep(p Prop) bool {
	if len(o.only) > 0 {
		for _, k := range o.only {
			if k == p.Key {
				return true
			}
		}
		return false
	}
	return o.all || !p.Default
}

func sortProps(props []Prop) []Prop {
	out := append([]Prop(nil), props...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// writeObject prints an object in tmsh's list syntax.
func writeObject(w io.Writer, obj Object, opt renderOptions) error {
	var b strings.Builder
	var props []Prop
	for _, p := range sortProps(obj.Props) {
		if opt.keep(p) {
			props = append(props, p)
		}
	}
	head := obj.Kind + " " + obj.Name
	if opt.oneLine {
		b.WriteString(head)
		b.WriteString(" {")
		for _, p := range props {
			b.WriteByte(' ')
			oneLine(&b, p)
		}
		b.WriteString(" }\n")
	} else {
		b.WriteString(head)
		if len(props) == 0 {
			b.WriteString(" { }\n")
		} else {
			b.WriteString(" {\n")
			for _, p := range props {
				multiLine(&b, p, 1)
			}
			b.WriteString("}\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func oneLine(b *strings.Builder, p Prop) {
	if p.Key != "" {
		b.WriteString(p.Key)
	}
	if !p.IsBlock {
		if p.Value != "" {
			b.WriteByte(' ')
			b.WriteString(p.quoted())
		}
		return
	}
	if p.Key != "" {
		b.WriteByte(' ')
	}
	b.WriteByte('{')
	for _, c := range p.Block {
		b.WriteByte(' ')
		oneLine(b, c)
	}
	b.WriteString(" }")
}

func multiLine(b *strings.Builder, p Prop, depth int) {
	indent := strings.Repeat("    ", depth)
	b.WriteString(indent)
	b.WriteString(p.Key)
	if !p.IsBlock {
		if p.Value != "" {
			b.WriteByte(' ')
			b.WriteString(p.quoted())
		}
		b.WriteByte('\n')
		return
	}
	if p.Key != "" {
		b.WriteByte(' ')
	}
	if len(p.Block) == 0 {
		b.WriteString("{ }\n")
		return
	}
	// A block of bare words (interfaces { ext }) prints its words one per line, as tmsh does.
	b.WriteString("{\n")
	for _, c := range p.Block {
		multiLine(b, c, depth+1)
	}
	b.WriteString(indent)
	b.WriteString("}\n")
}

// quote quotes a value that would not parse back as one word.
func quote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n{}\";#") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func (p Prop) quoted() string {
	if p.Raw {
		return p.Value
	}
	return quote(p.Value)
}
