package bench

import (
	"math"
	"slices"
)

// Figure is one measured quantity over several runs: the values of the runs that gave one,
// and how many runs failed to (a timeout, a lost connection, a daemon that did not come up).
type Figure struct {
	Values []float64
	Fails  int
	// Note qualifies the figure, such as "generator-limited" or "timeout 300 s".
	Note string
}

// Add records one run's value.
func (f *Figure) Add(v float64) { f.Values = append(f.Values, v) }

// Fail records one run that gave no value.
func (f *Figure) Fail() { f.Fails++ }

// Summary of a Figure: median and spread of its values.
type Summary struct {
	N                int // values summarised
	Median, Min, Max float64
}

// Summarize returns the median, min and max of xs; N is 0 when xs is empty.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	s := sorted(xs)
	return Summary{N: len(s), Median: quantile(s, 0.5), Min: s[0], Max: s[len(s)-1]}
}

// Percentile returns the p-th percentile (0..100) of xs, interpolating linearly between the
// two nearest ranks (numpy's default, so p50 of an even count is the mean of the middle
// two). It returns NaN for an empty xs.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	return quantile(sorted(xs), p/100)
}

func sorted(xs []float64) []float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s
}

// quantile of an ascending slice, q in [0, 1].
func quantile(s []float64, q float64) float64 {
	q = min(max(q, 0), 1)
	pos := q * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	if lo == hi {
		return s[lo]
	}
	frac := pos - float64(lo)
	return s[lo] + (s[hi]-s[lo])*frac
}
