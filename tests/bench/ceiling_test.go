package bench

import (
	"testing"
)

func TestParseCeiling(t *testing.T) {
	for _, tc := range []struct {
		name    string
		out     string
		want    []ceilingFig
		wantErr bool
	}{
		{
			name: "two modes, two runs",
			out: `goos: linux
BenchmarkStandbyFullSync/alone-2         	 1000000	      4370 ns/op	      5023 cpu-ns/flow	    228833 flows/s	         4.370 s/1M-flows
BenchmarkStandbyFullSync/alone-2         	 1000000	      4253 ns/op	      4901 cpu-ns/flow	    235127 flows/s	         4.253 s/1M-flows
BenchmarkStandbyFullSync/listener-elsewhere-2         	 1000000	      6804 ns/op	      7166 cpu-ns/flow	    146971 flows/s	         6.804 s/1M-flows
PASS
`,
			want: []ceilingFig{{"alone", 4370, 5023}, {"alone", 4253, 4901}, {"listener-elsewhere", 6804, 7166}},
		},
		{name: "no benchmark lines", out: "FAIL\n"},
		{name: "a failed run prints no figures", out: "--- FAIL: BenchmarkStandbyFullSync/alone\n    fullsync_test.go:88: receiver holds 0 flows\n"},
		{name: "garbled figure", out: "BenchmarkStandbyFullSync/alone-2 1000000 x ns/op\n", wantErr: true},
		{name: "no ns/op", out: "BenchmarkStandbyFullSync/alone-2 1000000 5 cpu-ns/flow\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCeiling([]byte(tc.out))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("figure %d: got %+v, want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func FuzzParseCeiling(f *testing.F) {
	f.Add([]byte("BenchmarkStandbyFullSync/alone-2 1000000 4370 ns/op 5023 cpu-ns/flow\n"))
	f.Add([]byte("BenchmarkStandbyFullSync/-2 1 1 ns/op"))
	f.Fuzz(func(t *testing.T, out []byte) {
		figs, _ := parseCeiling(out)
		for _, fig := range figs {
			if fig.nsPerOp == 0 {
				t.Errorf("figure without ns/op: %+v", fig)
			}
		}
	})
}
