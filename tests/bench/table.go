package bench

import (
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// Better says which way a metric improves, for the verdict beside the ratio.
type Better int

// Directions of Better.
const (
	Lower Better = iota
	Higher
)

// Row is one line of the results table: a metric measured on ours and on theirs.
type Row struct {
	// Heading, when set, makes the row a section title; the other fields are ignored.
	Heading string
	Metric  string
	Unit    string // printed after the median: "ms", "conns", "/s", "µs", "B"
	Better  Better
	Ours    Figure
	Theirs  Figure
	Note    string // printed under the row
}

// FormatTable renders rows as an aligned plain-text table: each figure as
// "median unit [min–max]" over its runs, and the ratio ours/theirs of the medians with a
// verdict. Notes go on their own lines under their row.
func FormatTable(title string, rows []Row) string {
	header := []string{"metric", "ours", "theirs", "ours/theirs"}
	type line struct {
		cells []string
		notes []string
		head  string
	}
	var lines []line
	widths := make([]int, len(header))
	for i, h := range header {
		widths[i] = utf8.RuneCountInString(h)
	}
	for _, r := range rows {
		if r.Heading != "" {
			lines = append(lines, line{head: r.Heading})
			continue
		}
		cells := []string{r.Metric, formatCell(r.Ours, r.Unit), formatCell(r.Theirs, r.Unit), formatRatio(r)}
		for i, c := range cells {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
		var notes []string
		for _, n := range []string{r.Note, labelled("ours", r.Ours.Note), labelled("theirs", r.Theirs.Note)} {
			if n != "" {
				notes = append(notes, n)
			}
		}
		lines = append(lines, line{cells: cells, notes: notes})
	}
	var b strings.Builder
	total := len(widths)*3 - 3
	for _, w := range widths {
		total += w
	}
	if title != "" {
		b.WriteString(title + "\n")
	}
	writeCells(&b, header, widths)
	b.WriteString(strings.Repeat("-", total) + "\n")
	for _, l := range lines {
		if l.head != "" {
			b.WriteString("\n" + l.head + "\n")
			continue
		}
		writeCells(&b, l.cells, widths)
		for _, n := range l.notes {
			b.WriteString("    note: " + n + "\n")
		}
	}
	return b.String()
}

func labelled(who, note string) string {
	if note == "" {
		return ""
	}
	return who + ": " + note
}

func writeCells(b *strings.Builder, cells []string, widths []int) {
	var line strings.Builder
	for i, c := range cells {
		if i > 0 {
			line.WriteString(" | ")
		}
		line.WriteString(c)
		if i < len(cells)-1 {
			line.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)))
		}
	}
	b.WriteString(strings.TrimRight(line.String(), " ") + "\n")
}

// formatCell prints a figure: "n/a" when it was not measured, "failed (n runs)" when no run
// gave a value, else the median with its unit, then the spread over the runs.
func formatCell(f Figure, unit string) string {
	s := Summarize(f.Values)
	switch {
	case s.N == 0 && f.Fails == 0:
		return "n/a"
	case s.N == 0:
		return fmt.Sprintf("failed (%d/%d runs)", f.Fails, f.Fails)
	}
	out := FormatNumber(s.Median)
	if unit != "" {
		out += " " + unit
	}
	if s.N > 1 {
		out += " [" + FormatNumber(s.Min) + "–" + FormatNumber(s.Max) + "]"
	}
	if f.Fails > 0 {
		out += fmt.Sprintf(" (%d/%d runs failed)", f.Fails, f.Fails+s.N)
	}
	return out
}

// formatRatio is ours' median over theirs', with which side is better; "" when either side
// has no value.
func formatRatio(r Row) string {
	a, b := Summarize(r.Ours.Values), Summarize(r.Theirs.Values)
	if a.N == 0 || b.N == 0 {
		return ""
	}
	if b.Median == 0 {
		if a.Median == 0 {
			return "= (both 0)"
		}
		return "∞ (theirs 0)"
	}
	ratio := a.Median / b.Median
	verdict := ""
	switch {
	case math.Abs(ratio-1) < 0.05:
		verdict = "≈"
	case (ratio < 1) == (r.Better == Lower):
		verdict = "ours better"
	default:
		verdict = "theirs better"
	}
	return FormatNumber(ratio) + "× " + verdict
}

// FormatNumber prints v with about three significant digits and no exponent: 3052, 152,
// 15.2, 1.52, 0.152.
func FormatNumber(v float64) string {
	a := math.Abs(v)
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return fmt.Sprint(v)
	case a >= 100 || v == math.Trunc(v) && a >= 1:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	case a == 0:
		return "0"
	case a >= 0.01:
		return fmt.Sprintf("%.3f", v)
	default:
		return fmt.Sprintf("%.2g", v)
	}
}
