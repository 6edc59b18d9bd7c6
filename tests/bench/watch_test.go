package bench

import (
	"net/netip"
	"testing"
	"time"
)

func TestParseWatchLine(t *testing.T) {
	for _, tc := range []struct {
		line        string
		src         string
		nanos       int64
		overrun, ok bool
	}{
		{"10.0.0.1:40000 1700000000123456789", "10.0.0.1:40000", 1700000000123456789, false, true},
		{"[fd00::1]:5000 42", "[fd00::1]:5000", 42, false, true},
		{"overrun", "", 0, true, true},
		{"10.0.0.1:40000", "", 0, false, false},
		{"10.0.0.1 5", "", 0, false, false},
		{"10.0.0.1:1 x", "", 0, false, false},
		{"", "", 0, false, false},
	} {
		src, at, overrun, ok := parseWatchLine(tc.line)
		if ok != tc.ok || overrun != tc.overrun {
			t.Errorf("%q: ok %v overrun %v, want %v %v", tc.line, ok, overrun, tc.ok, tc.overrun)
			continue
		}
		if ok && !overrun && (src != netip.MustParseAddrPort(tc.src) || !at.Equal(time.Unix(0, tc.nanos))) {
			t.Errorf("%q: %v %v", tc.line, src, at)
		}
	}
}

func FuzzParseWatchLine(f *testing.F) {
	f.Add("10.0.0.1:40000 1700000000123456789")
	f.Add("overrun")
	f.Fuzz(func(t *testing.T, s string) {
		src, _, overrun, ok := parseWatchLine(s)
		if ok && !overrun && !src.IsValid() {
			t.Fatalf("%q: ok with an invalid source", s)
		}
	})
}
