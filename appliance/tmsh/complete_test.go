package tmsh

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/openappliance/appliance/appliance/config"
)

func candidateWords(c Completion) []string {
	var out []string
	for _, cand := range c.Candidates {
		out = append(out, cand.Word)
	}
	return out
}

// TestComplete: what Tab and ? offer at the end of a line.
func TestComplete(t *testing.T) {
	in, _ := newTestInterpreter(t)
	for _, tc := range []struct {
		session Session
		line    string
		want    []string
		start   int // -1: the end of the line
	}{
		{line: "", want: []string{"cd", "create", "delete", "exit", "help", "list", "load", "modify", "mv", "quit", "reset-stats", "run", "save", "show"}},
		{line: "sh", want: []string{"show"}, start: 0},
		{line: "list ", want: []string{"auth", "cm", "ltm", "net", "sys"}},
		{line: "show c", want: []string{"cm"}, start: 5},
		{line: "show cm ", want: []string{"failover-status", "sync-status", "traffic-group"}},
		{line: "mv ltm ", want: []string{"pool", "snatpool", "virtual"}},
		{line: "list ltm virtual /RPC/", want: []string{"/RPC/RPC_VS_GALERA"}, start: 17},
		{line: "list net vlan /Common/e", want: []string{"/Common/external"}, start: 14},
		{line: "list net vlan ", want: []string{"external", "internal", "all-properties", "description", "interfaces", "non-default-properties", "one-line", "recursive"}},
		{session: Session{Partition: "RPC"}, line: "modify ltm pool ", want: []string{"RPC_POOL_GALERA"}},
		{line: "modify ltm virtual /RPC/RPC_VS_GALERA mi", want: []string{"mirror"}, start: 38},
		{line: "modify ltm virtual /RPC/RPC_VS_GALERA mirror ", want: []string{"disabled", "enabled"}},
		{line: "modify ltm virtual /RPC/RPC_VS_GALERA ip-protocol ", want: []string{"tcp", "udp"}},
		{line: "modify ltm pool /RPC/RPC_POOL_GALERA load-balancing-mode ", want: []string{"round-robin"}},
		{line: "modify ltm virtual /RPC/RPC_VS_GALERA pool ", want: []string{"none", "/RPC/RPC_POOL_GALERA"}},
		{session: Session{Partition: "RPC"}, line: "modify ltm virtual RPC_VS_GALERA pool ", want: []string{"none", "RPC_POOL_GALERA"}},
		{line: "modify ltm virtual /RPC/RPC_VS_GALERA destination ", want: []string{"<ip-address:port>"}},
		{line: "modify ltm pool /RPC/RPC_POOL_GALERA members ", want: []string{"add", "delete", "modify", "none", "replace-all-with", "{"}},
		{line: "modify ltm pool /RPC/RPC_POOL_GALERA members add ", want: []string{"{"}},
		{line: "modify ltm virtual /RPC/RPC_VS_GALERA source-address-translation { type snat ", want: []string{"pool"}},
		{line: "modify ltm virtual /RPC/RPC_VS_GALERA source-address-translation { pool ", want: []string{"none", "/RPC/RPC_SNATPOOL"}},
		{line: "modify ltm virtual /RPC/RPC_VS_GALERA profiles add { ", want: []string{"fastL4", "}"}},
		{line: "create ltm pool ", want: []string{"<name>"}},
		{line: "create ltm pool p1 members add { 10.1.0.1:80 } sl", want: []string{"slow-ramp-time"}, start: 47},
		{line: "show sys connection pro", want: []string{"protocol"}, start: 20},
		{line: "show sys connection protocol ", want: []string{"tcp", "udp"}},
		{line: "show sys connection virtual-server ", want: []string{"/RPC/RPC_VS_GALERA"}},
		{line: "delete sys connection ss-", want: []string{"ss-client-addr", "ss-client-port", "ss-server-addr", "ss-server-port"}, start: 22},
		{line: "show ltm pool /RPC/RPC_POOL_GALERA ", want: []string{"/RPC/RPC_POOL_GALERA", "all-properties", "field-fmt", "members"}},
		{line: "run cm config-sync ", want: []string{"to-group"}},
		{line: "run cm config-sync to-group ", want: []string{"dg1"}},
		{line: "save ", want: []string{"sys"}},
		{line: "save sys ", want: []string{"config"}},
		{line: "cd /R", want: []string{"/RPC"}, start: 3},
		{session: Session{Module: "ltm"}, line: "list ", want: []string{"pool", "snatpool", "virtual"}},
		{line: "list ltm virtual /RPC/RPC_VS_GALERA one-line ", want: []string{"all-properties", "description"}},
		{line: `modify ltm virtual vs_no_pool description "a b`, want: nil, start: -1},
		{line: "show ltm virtual; list ltm sn", want: []string{"snatpool"}, start: 27},
		{line: "bogus ", want: nil},
		{line: "list cm failover-status ", want: nil},
	} {
		t.Run(tc.line, func(t *testing.T) {
			s := tc.session
			got := in.Complete(&s, tc.line, len(tc.line))
			gotWords := candidateWords(got)
			if strings.HasPrefix(tc.line, "list ltm virtual /RPC/RPC_VS_GALERA one-line") {
				gotWords = gotWords[:min(2, len(gotWords))]
			}
			if diff := cmp.Diff(tc.want, gotWords); diff != "" {
				t.Errorf("candidates (-want +got):\n%s", diff)
			}
			wantStart := len(tc.line)
			if tc.line != "" && !strings.HasSuffix(tc.line, " ") && tc.start >= 0 {
				wantStart = tc.start
			}
			if got.Start != wantStart {
				t.Errorf("start %d, want %d", got.Start, wantStart)
			}
			for _, c := range got.Candidates {
				if c.Help == "" {
					t.Errorf("%q has no help", c.Word)
				}
			}
		})
	}
}

// TestCompleteMidLine: the cursor need not be at the end.
func TestCompleteMidLine(t *testing.T) {
	in, _ := newTestInterpreter(t)
	line := "list ltm vi one-line"
	got := in.Complete(&Session{}, line, len("list ltm vi"))
	if diff := cmp.Diff([]string{"virtual"}, candidateWords(got)); diff != "" || got.Start != 9 {
		t.Errorf("start %d, candidates (-want +got):\n%s", got.Start, diff)
	}
}

// TestEveryPropertyHasHelp: the table gives each property of each kind a line of help.
func TestEveryPropertyHasHelp(t *testing.T) {
	for _, k := range kinds {
		if len(k.specs) == 0 {
			t.Errorf("%s: properties without specs (help and values)", k.title())
		}
		for _, p := range k.specsOf() {
			if p.help == "" {
				t.Errorf("%s %s: no help", k.title(), p.name)
			}
		}
	}
}

// examples are representative commands for each verb and component that help offers.
var examples = map[string]string{
	"create auth partition":   "create auth partition P2 description test",
	"create auth user":        "create auth user alice partition-access add { all-partitions { role guest } }",
	"delete auth user":        "create auth user bob partition-access add { all-partitions { role operator } }; delete auth user bob",
	"list auth user":          "create auth user carol partition-access add { all-partitions { role guest } }; list auth user carol",
	"modify auth user":        "create auth user dave partition-access add { all-partitions { role guest } }; modify auth user dave description ops",
	"create cm device":        "create cm device lb3 mirror-ip 192.168.77.4",
	"create cm device-group":  "create cm device-group dg2 type sync-only",
	"create ltm pool":         "create ltm pool p2 members add { 10.1.0.200:80 }",
	"create ltm snatpool":     "create ltm snatpool s2 members add { 10.1.0.11 }",
	"create ltm virtual":      "create ltm virtual v2 destination 10.0.0.30:80 pool /RPC/RPC_POOL_GALERA",
	"create net self":         "create net self s3 address 10.2.0.2/24 vlan internal",
	"create net vlan":         "create net vlan v3 interfaces add { eth9 }",
	"delete auth partition":   "create auth partition P3; delete auth partition P3",
	"delete cm device":        "create cm device lb9; delete cm device lb9",
	"delete cm device-group":  "create cm device-group dg9; delete cm device-group dg9",
	"delete ltm pool":         "create ltm pool p9; delete ltm pool p9",
	"delete ltm snatpool":     "create ltm snatpool s9 members add { 10.1.0.19 }; delete ltm snatpool s9",
	"delete ltm virtual":      "create ltm virtual v9 destination 10.0.0.39:80; delete ltm virtual v9",
	"delete net self":         "delete net self self_int",
	"delete net vlan":         "create net vlan v9; delete net vlan v9",
	"delete sys connection":   "delete sys connection cs-client-addr 10.0.0.1 protocol tcp",
	"list auth partition":     "list auth partition RPC",
	"list cm device":          "list cm device lb1 mirror-ip",
	"list cm device-group":    "list cm device-group dg1 all-properties",
	"list ltm pool":           "list ltm pool /RPC/* one-line",
	"list ltm snatpool":       "list ltm snatpool /RPC/RPC_SNATPOOL members",
	"list ltm virtual":        "list ltm virtual /RPC/RPC_VS_GALERA non-default-properties",
	"list net self":           "list net self self_ext address",
	"list net vlan":           "list net vlan external",
	"list sys db":             "list sys db failover.nettimeout",
	"modify auth partition":   "modify auth partition RPC description rpc",
	"modify cm device":        "modify cm device lb2 description peer",
	"modify cm device-group":  "modify cm device-group dg1 auto-sync enabled",
	"modify ltm pool":         "modify ltm pool /RPC/RPC_POOL_GALERA slow-ramp-time 5",
	"modify ltm snatpool":     "modify ltm snatpool /RPC/RPC_SNATPOOL members add { 10.1.0.12 }",
	"modify ltm virtual":      "modify ltm virtual /RPC/RPC_VS_GALERA mirror disabled",
	"modify net self":         "modify net self self_ext description ext",
	"modify net vlan":         "modify net vlan external description ext",
	"modify sys db":           "modify sys db failover.nettimeout value 1",
	"mv ltm pool":             "create ltm pool p8; mv ltm pool p8 to p7",
	"mv ltm snatpool":         "mv ltm snatpool /RPC/RPC_SNATPOOL to /RPC/S2",
	"mv ltm virtual":          "mv ltm virtual /RPC/RPC_VS_GALERA to /RPC/VS2",
	"reset-stats ltm pool":    "reset-stats ltm pool /RPC/RPC_POOL_GALERA",
	"reset-stats ltm virtual": "reset-stats ltm virtual /RPC/RPC_VS_GALERA",
	"run cm config-sync":      "run cm config-sync to-group dg1",
	"run sys failover":        "run sys failover standby",
	"run util ping":           "run util ping -c 2 10.1.0.100",
	"show cm failover-status": "show cm failover-status",
	"show cm sync-status":     "show cm sync-status",
	"show cm traffic-group":   "show cm traffic-group all-properties",
	"show ltm pool":           "show ltm pool /RPC/RPC_POOL_GALERA members",
	"show ltm virtual":        "show ltm virtual /RPC/RPC_VS_GALERA",
	"show sys connection":     "show sys connection type mirror cs-server-port 3306",
	"show sys failover":       "show sys failover",
	"show sys ha-status":      "show sys ha-status all-properties",
	"show sys mirror":         "show sys mirror",
	"cd":                      "cd /RPC",
	"exit":                    "exit",
	"quit":                    "quit",
	"help":                    "help show",
	"save":                    "save sys config",
	"load":                    "load sys config",
}

// TestEveryCommandHelpOffersRuns walks the command table: for each verb and each
// component that completion offers, a representative command runs without a syntax error.
func TestEveryCommandHelpOffersRuns(t *testing.T) {
	probe, _ := newTestInterpreter(t)
	var keys []string
	for _, v := range probe.Complete(&Session{}, "", 0).Candidates {
		if len(findVerb(v.Word).targets) == 0 {
			keys = append(keys, v.Word)
			continue
		}
		for _, m := range probe.Complete(&Session{}, v.Word+" ", len(v.Word)+1).Candidates {
			line := v.Word + " " + m.Word + " "
			for _, c := range probe.Complete(&Session{}, line, len(line)).Candidates {
				keys = append(keys, line+c.Word)
			}
		}
	}
	for _, key := range keys {
		t.Run(key, func(t *testing.T) {
			cmd, ok := examples[key]
			if !ok {
				t.Fatalf("no example command for %q: add one", key)
			}
			in, _ := newTestInterpreter(t)
			var out bytes.Buffer
			err := in.Exec(context.Background(), &Session{User: "admin"}, cmd, &out)
			if err != nil && (strings.Contains(err.Error(), "Syntax Error") || strings.Contains(err.Error(), "unknown command")) {
				t.Fatalf("%s: %v", cmd, err)
			}
			// run sys failover standby is refused by the test core (it is not Active there);
			// anything else must succeed.
			if err != nil && key != "run sys failover" && err != ErrQuit {
				t.Fatalf("%s: %v", cmd, err)
			}
		})
	}
	if len(keys) < 40 {
		t.Errorf("only %d commands offered: %v", len(keys), keys)
	}
}

// FuzzComplete: any line, any cursor, completion never panics and its start is within
// the line, before the cursor.
func FuzzComplete(f *testing.F) {
	f.Add("modify ltm virtual /RPC/RPC_VS_GALERA source-address-translation { type snat ", 10)
	f.Add(`create ltm pool "x { } ; list`, 3)
	f.Add("list ltm virtual }}} {{ ", 100)
	f.Add("\xff\xfe modify", 2)
	f.Add("cd ltm; list virt", -4)
	in, _ := newFuzzInterpreter(f)
	f.Fuzz(func(t *testing.T, line string, pos int) {
		for _, s := range []*Session{{}, {Partition: "RPC"}, {Module: "ltm"}, {Module: "sys", Partition: "RPC"}} {
			c := in.Complete(s, line, pos)
			if c.Start < 0 || c.Start > len(line) || (pos >= 0 && pos <= len(line) && c.Start > pos) {
				t.Fatalf("Complete(%q, %d): start %d", line, pos, c.Start)
			}
		}
	})
}

func newFuzzInterpreter(f *testing.F) (*Interpreter, *fakeCore) {
	core := &fakeCore{cfg: config.New("lb1")}
	in := New(core)
	if err := in.Exec(context.Background(), &Session{}, setup, &bytes.Buffer{}); err != nil {
		f.Fatal(fmt.Errorf("setup: %w", err))
	}
	return in, core
}
