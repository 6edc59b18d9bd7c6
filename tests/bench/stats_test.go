package bench

import (
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []float64
		want Summary
	}{
		{"empty", nil, Summary{}},
		{"one", []float64{7}, Summary{N: 1, Median: 7, Min: 7, Max: 7}},
		{"odd, unsorted", []float64{5, 1, 3}, Summary{N: 3, Median: 3, Min: 1, Max: 5}},
		{"even: mean of the middle two", []float64{4, 1, 3, 2}, Summary{N: 4, Median: 2.5, Min: 1, Max: 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]float64(nil), tc.in...)
			if diff := cmp.Diff(tc.want, Summarize(tc.in)); diff != "" {
				t.Errorf("Summarize(%v) (-want +got):\n%s", tc.in, diff)
			}
			if !cmp.Equal(in, tc.in) {
				t.Errorf("Summarize changed its input: %v, was %v", tc.in, in)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	xs := []float64{10, 1, 9, 2, 8, 3, 7, 4, 6, 5} // 1..10
	for _, tc := range []struct {
		p, want float64
	}{
		{0, 1}, {100, 10}, {50, 5.5}, {90, 9.1}, {99, 9.91}, {-5, 1}, {150, 10},
	} {
		if got := Percentile(xs, tc.p); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("Percentile(1..10, %v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := Percentile(nil, 50); !math.IsNaN(got) {
		t.Errorf("Percentile(nil) = %v, want NaN", got)
	}
}

func TestArrivalsFromCounter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	created := []time.Time{at(0), at(1), at(2), at(50)}
	samples := []counterSample{{at(20), 1}, {at(40), 3}, {at(60), 3}}
	got := ArrivalsFromCounter(created, samples)
	// Entry 0 arrived by the first reading, entries 1 and 2 by the second, entry 3 never.
	want := []time.Duration{20 * time.Millisecond, 39 * time.Millisecond, 38 * time.Millisecond}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ArrivalsFromCounter (-want +got):\n%s", diff)
	}
}

func TestFormatNumber(t *testing.T) {
	for v, want := range map[float64]string{
		3052.4: "3052", 152.6: "153", 15.24: "15.2", 1.524: "1.52", 0.1524: "0.152",
		0: "0", 1000000: "1000000", 5: "5", 0.00123: "0.0012", -2.5: "-2.50",
	} {
		if got := FormatNumber(v); got != want {
			t.Errorf("FormatNumber(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestFormatTable(t *testing.T) {
	rows := []Row{
		{Heading: "1. Failover"},
		{Metric: "first UDP reply", Unit: "ms", Better: Lower,
			Ours:   Figure{Values: []float64{110, 100, 120}},
			Theirs: Figure{Values: []float64{300, 280, 290}, Note: "VIP before commit"}},
		{Metric: "kept", Unit: "conns", Better: Higher,
			Ours:   Figure{Values: []float64{1000}},
			Theirs: Figure{Values: []float64{990}, Fails: 1}},
		{Metric: "ours only", Unit: "ms", Ours: Figure{Values: []float64{2}}},
		{Metric: "failed", Unit: "s", Ours: Figure{Fails: 2}, Theirs: Figure{Values: []float64{1, 1}}},
	}
	got := FormatTable("title", rows)
	want := `title
metric          | ours              | theirs                      | ours/theirs
--------------------------------------------------------------------------------------
` + "\n1. Failover\n" +
		`first UDP reply | 110 ms [100–120]  | 290 ms [280–300]            | 0.379× ours better
    note: theirs: VIP before commit
kept            | 1000 conns        | 990 conns (1/2 runs failed) | 1.01× ≈
ours only       | 2 ms              | n/a                         |
failed          | failed (2/2 runs) | 1 s [1–1]                   |
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("FormatTable (-want +got):\n%s", diff)
	}
}

func TestParseProcStatCPU(t *testing.T) {
	// A command name with a space and a parenthesis: fields are counted from the last ')'.
	stat := "4242 (weird) name) S 1 4242 4242 0 -1 4194560 1200 0 3 0 250 75 0 0 20 0 9 0 123 456789 1000 18446744073709551615"
	ut, st, err := ParseProcStatCPU(stat)
	if err != nil || ut != 250 || st != 75 {
		t.Errorf("ParseProcStatCPU = %d, %d, %v; want 250 utime, 75 stime", ut, st, err)
	}
	if _, _, err := ParseProcStatCPU("4242 (x) S 1 2"); err == nil {
		t.Error("ParseProcStatCPU of a short line: no error")
	}
}

func TestParseStatusKB(t *testing.T) {
	status := "Name:\tapplianced\nVmPeak:\t 1300000 kB\nVmHWM:\t   90000 kB\nVmRSS:\t   45112 kB\nThreads:\t9\n"
	if got, err := ParseStatusKB(status, "VmRSS"); err != nil || got != 45112 {
		t.Errorf("VmRSS = %d, %v; want 45112", got, err)
	}
	if got, err := ParseStatusKB(status, "VmHWM"); err != nil || got != 90000 {
		t.Errorf("VmHWM = %d, %v; want 90000", got, err)
	}
	if _, err := ParseStatusKB(status, "VmSwap"); err == nil {
		t.Error("missing key: no error")
	}
}

// conntrackdStats is `conntrackd -s` of conntrack-tools 1.4.7.
const conntrackdStats = `cache internal:
current active connections:	      100003
connections created:		      100010	failed:	           0
connections updated:		          12	failed:	           0
connections destroyed:		           7	failed:	           0

cache external:
current active connections:	        2994
connections created:		        2998	failed:	           0
connections updated:		        8811	failed:	           0
connections destroyed:		           4	failed:	           0

traffic processed:
                   0 Bytes                         0 Pckts

UDP traffic (active device=ha):
             4163556 Bytes sent                  5600 Bytes recv
`

func TestParseConntrackdStats(t *testing.T) {
	got, err := ParseConntrackdStats(conntrackdStats)
	if err != nil {
		t.Fatal(err)
	}
	want := ConntrackdStats{
		Internal: CacheStats{Active: 100003, Created: 100010, Updated: 12, Destroyed: 7},
		External: CacheStats{Active: 2994, Created: 2998, Updated: 8811, Destroyed: 4},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParseConntrackdStats (-want +got):\n%s", diff)
	}
	if _, err := ParseConntrackdStats("connect: No such file or directory"); err == nil {
		t.Error("no cache sections: no error")
	}
}

func TestParseTmsh(t *testing.T) {
	failover := "----------------------\nCM::Failover Status\n----------------------\nColor    green\nStatus   ACTIVE\nSummary  1/1 active\n"
	if got := ParseFailoverStatus(failover); got != "ACTIVE" {
		t.Errorf("ParseFailoverStatus = %q, want ACTIVE", got)
	}
	if got := ParseFailoverStatus("nothing"); got != "" {
		t.Errorf("ParseFailoverStatus(nothing) = %q, want empty", got)
	}
	mirror := "--------------------------------------\nSys::Mirror\n--------------------------------------\nRole                 receiver\nPeer                 lb1 (192.168.77.2:50108)\nConnected            yes\nMirrored Flows       8\n"
	rows := ParseRows(mirror)
	for k, want := range map[string]string{"Role": "receiver", "Connected": "yes", "Mirrored Flows": "8", "Peer": "lb1 (192.168.77.2:50108)"} {
		if rows[k] != want {
			t.Errorf("ParseRows[%q] = %q, want %q", k, rows[k], want)
		}
	}
	if got := ParseTotalRecords("Sys::Connections\nrow\nTotal records returned: 1000000\n"); got != 1000000 {
		t.Errorf("ParseTotalRecords = %d", got)
	}
	if got := ParseTotalRecords("no total"); got != -1 {
		t.Errorf("ParseTotalRecords(no total) = %d, want -1", got)
	}
}

func TestParseConntrackList(t *testing.T) {
	out := strings.Join([]string{
		// conntrack -L
		"tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.10 sport=40000 dport=3306 src=10.1.0.100 dst=10.1.0.10 sport=3306 dport=40000 [ASSURED] mark=0 use=1",
		"udp      17 29 src=192.168.77.2 dst=192.168.77.3 sport=37107 dport=3780 [UNREPLIED] src=192.168.77.3 dst=192.168.77.2 sport=3780 dport=37107 mark=0 use=1",
		// conntrackd -e (with the layer-3 columns)
		"ipv4     2 udp      17 src=10.0.0.1 dst=10.0.0.10 sport=5000 dport=3307 src=10.1.0.101 dst=10.1.0.10 sport=3307 dport=5000 [ASSURED] mark=0 [active since 2s]",
		"ipv4     2 tcp      6 ESTABLISHED src=10.0.0.1 dst=10.0.0.10 sport=40001 dport=3306 src=10.1.0.102 dst=10.1.0.10 sport=3306 dport=40001 [ASSURED] mark=0 [active since 5s]",
		"garbage",
	}, "\n")
	got := ParseConntrackList(out, "10.0.0.10")
	want := map[TupleKey]bool{
		{6, netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.0.10:3306")}: true,
		{17, netip.MustParseAddrPort("10.0.0.1:5000"), netip.MustParseAddrPort("10.0.0.10:3307")}: true,
		{6, netip.MustParseAddrPort("10.0.0.1:40001"), netip.MustParseAddrPort("10.0.0.10:3306")}: true,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParseConntrackList (-want +got):\n%s", diff)
	}
}

func TestSyntheticFlowsDistinct(t *testing.T) {
	const n = 200000
	orig := map[netip.AddrPort]bool{}
	reply := map[[2]netip.AddrPort]bool{}
	for i := 0; i < n; i++ {
		f := syntheticFlow(i)
		if orig[f.Orig.Src] {
			t.Fatalf("flow %d: original source %v repeats", i, f.Orig.Src)
		}
		orig[f.Orig.Src] = true
		k := [2]netip.AddrPort{f.Reply.Src, f.Reply.Dst}
		if reply[k] {
			t.Fatalf("flow %d: reply tuple %v repeats", i, k)
		}
		reply[k] = true
		if f.Orig.Dst.String() != "10.0.0.10:3306" || f.Reply.Dst.Addr().String() != "10.1.0.10" {
			t.Fatalf("flow %d = %v: not an entry of the TCP virtual with SNAT", i, f)
		}
	}
}

func TestMakePlan(t *testing.T) {
	p := MakePlan(Config{Runs: 5})
	if p.FailoverRuns != 5 || p.RateRuns != 3 || p.SyncRuns[1] != 2 || p.KeptN[1] != 10000 || p.SyncN[1] != 1000000 {
		t.Errorf("default plan = %+v", p)
	}
	q := MakePlan(Config{Runs: 5, Quick: true})
	if q.FailoverRuns != 2 || q.KeptRuns != 1 || q.SyncN[1] != 100000 {
		t.Errorf("quick plan = %+v", q)
	}
	if got := keptInterval(10000); got != time.Second {
		t.Errorf("keptInterval(10000) = %v, want 1s", got)
	}
	if got := keptInterval(500); got != 100*time.Millisecond {
		t.Errorf("keptInterval(500) = %v, want 100ms", got)
	}
}

func TestWorstWindows(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	type entry struct {
		created time.Duration // after t0
		lag     time.Duration // -1: never arrived
	}
	for _, tc := range []struct {
		name    string
		entries []entry
		want    []LagWindow
	}{
		{"none", nil, nil},
		{"all fast", []entry{{0, ms(1)}, {ms(600), ms(2)}}, nil},
		{
			"one slow span among fast ones; a lost entry counts in none",
			[]entry{{ms(10), ms(1)}, {ms(510), ms(40)}, {ms(990), ms(20)}, {ms(700), -1}, {ms(1200), ms(3)}},
			[]LagWindow{{From: t0.Add(ms(500)), N: 2, P50: ms(30), P99: ms(40) - ms(20)*1/100, Max: ms(40)}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			created, arrived := map[TupleKey]time.Time{}, map[TupleKey]time.Time{}
			for i, e := range tc.entries {
				k := TupleKey{Proto: 6, Src: netip.AddrPortFrom(netip.MustParseAddr("10.2.0.1"), uint16(1024+i))}
				created[k] = t0.Add(e.created)
				if e.lag >= 0 {
					arrived[k] = t0.Add(e.created + e.lag)
				}
			}
			got := worstWindows(created, arrived)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("worstWindows (-want +got):\n%s", diff)
			}
		})
	}
}
