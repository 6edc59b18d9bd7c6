package tmsh

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/openappliance/appliance/appliance/config"
)

var update = flag.Bool("update", false, "rewrite golden files")

// fakeCore keeps the configuration in memory; the language is tested here, the kernel elsewhere.
type fakeCore struct {
	cfg   config.Config
	conns []Connection
	saved int
}

func (f *fakeCore) Config() config.Config { return f.cfg.Clone() }
func (f *fakeCore) Update(_ context.Context, change func(*config.Config) error) error {
	next := f.cfg.Clone()
	if err := change(&next); err != nil {
		return err
	}
	if err := next.Validate(); err != nil {
		return err
	}
	f.cfg = next
	return nil
}
func (f *fakeCore) Save(context.Context) error { f.saved++; return nil }
func (f *fakeCore) Load(context.Context) error { return nil }
func (f *fakeCore) Connections(_ context.Context, flt ConnFilter, fn func(Connection) error) error {
	for _, c := range f.conns {
		if flt.Match(c) {
			if err := fn(c); err != nil {
				return err
			}
		}
	}
	return nil
}
func (f *fakeCore) DeleteConnections(_ context.Context, flt ConnFilter) (int, error) {
	kept := f.conns[:0:0]
	n := 0
	for _, c := range f.conns {
		if flt.Match(c) {
			n++
			continue
		}
		kept = append(kept, c)
	}
	f.conns = kept
	return n, nil
}
func (f *fakeCore) Failover() FailoverStatus {
	return FailoverStatus{Device: "lb1", State: "Active", Since: time.Date(2026, 11, 23, 19, 0, 0, 0, time.UTC), Reason: "peer lb2 heartbeat lost",
		Peer: "lb2", PeerState: "Standby", PeerAlive: true, LocalAddress: "192.168.77.2:1026", PeerAddress: "192.168.77.3:1026",
		SyncStatus: "In Sync", SyncSummary: "All devices in the device group are in sync", Group: "dg1", NetTimeout: 500 * time.Millisecond,
		HeartbeatsSent: 7200, HeartbeatsRecv: 7190, HeartbeatsLost: 4, GARPsSent: 12,
		Failovers: 3, FailoverCauses: []CauseCount{{"no_peer", 1}, {"peer_lost", 1}, {"forced", 1}},
		Mirror: MirrorStatus{Role: "sender", Peer: "192.168.77.3:1028", Connected: true, FlowsSent: 1200, DeletesSent: 200, Syncs: 1,
			DigestsSent: 30, LagLast: 1234567 * time.Nanosecond, LagMax: 4 * time.Millisecond,
			Entries:   []EntryCount{{"tcp", "ESTABLISHED", 990}, {"tcp", "TIME_WAIT", 10}, {"udp", "", 7}},
			EntriesAt: time.Date(2026, 11, 23, 19, 5, 0, 0, time.UTC)}}
}
func (f *fakeCore) ForceStandby(context.Context) error               { return fmt.Errorf("not active") }
func (f *fakeCore) ConfigSync(_ context.Context, group string) error { return nil }

// Ping answers from 10.1.0.100 to 10.1.0.103 and from nowhere else, as ping prints it.
func (f *fakeCore) Ping(_ context.Context, host netip.Addr, count int, w io.Writer) error {
	fmt.Fprintf(w, "PING %s (%s) 56(84) bytes of data.\n", host, host)
	replied := netip.MustParsePrefix("10.1.0.100/30").Contains(host)
	for i := 1; replied && i <= count; i++ {
		fmt.Fprintf(w, "64 bytes from %s: icmp_seq=%d ttl=64 time=0.050 ms\n", host, i)
	}
	got := 0
	if replied {
		got = count
	}
	fmt.Fprintf(w, "\n--- %s ping statistics ---\n%d packets transmitted, %d received\n", host, count, got)
	if !replied {
		return fmt.Errorf("run util ping: no reply from %s", host)
	}
	return nil
}

// setup is the walk-through on lb1.
const setup = `modify cm device lb1 unicast-address { 192.168.77.2 } mirror-ip 192.168.77.2 configsync-ip 192.168.77.2
create cm device lb2 unicast-address { 192.168.77.3 } mirror-ip 192.168.77.3 configsync-ip 192.168.77.3
create cm device-group dg1 type sync-failover devices add { lb1 lb2 } network-failover enabled
create net vlan external interfaces add { ext }
create net vlan internal interfaces add { int }
create net self self_ext address 10.0.0.2/24 vlan external
create net self self_int address 10.1.0.2/24 vlan internal
create auth partition RPC
create ltm pool /RPC/RPC_POOL_GALERA members add { 10.1.0.100:3306 10.1.0.101:3306 10.1.0.102:3306 10.1.0.103:3306 }
create ltm snatpool /RPC/RPC_SNATPOOL members add { 10.1.0.10 }
create ltm virtual /RPC/RPC_VS_GALERA destination /RPC/10.0.0.10:3306 ip-protocol tcp mask 255.255.255.255 pool /RPC/RPC_POOL_GALERA profiles add { fastL4 } source-address-translation { pool /RPC/RPC_SNATPOOL type snat }
modify ltm virtual /RPC/RPC_VS_GALERA mirror enabled
modify ltm pool /RPC/RPC_POOL_GALERA service-down-action reselect
modify ltm pool /RPC/RPC_POOL_GALERA slow-ramp-time 0
modify sys db failover.nettimeout value 0.5`

func newTestInterpreter(t *testing.T) (*Interpreter, *fakeCore) {
	t.Helper()
	core := &fakeCore{cfg: config.New("lb1")}
	in := New(core)
	var out bytes.Buffer
	if err := in.Exec(context.Background(), &Session{User: "admin"}, setup, &out); err != nil {
		t.Fatalf("setup: %v", err)
	}
	core.conns = []Connection{
		{Protocol: 6, CSClient: netip.MustParseAddrPort("10.0.0.1:38996"), CSServer: netip.MustParseAddrPort("10.0.0.10:3306"),
			SSClient: netip.MustParseAddrPort("10.1.0.10:38996"), SSServer: netip.MustParseAddrPort("10.1.0.100:3306"),
			Idle: 20, Offload: "none", Mirrored: true, Virtual: "/RPC/RPC_VS_GALERA", State: "ESTABLISHED"},
		{Protocol: 6, CSClient: netip.MustParseAddrPort("10.0.0.1:49812"), CSServer: netip.MustParseAddrPort("10.0.0.10:3306"),
			SSClient: netip.MustParseAddrPort("10.1.0.10:49812"), SSServer: netip.MustParseAddrPort("10.1.0.101:3306"),
			Idle: 257, Offload: "none", Mirrored: true, Virtual: "/RPC/RPC_VS_GALERA", State: "ESTABLISHED"},
		{Protocol: 17, CSClient: netip.MustParseAddrPort("10.0.0.1:5353"), CSServer: netip.MustParseAddrPort("10.0.0.20:53"),
			SSClient: netip.MustParseAddrPort("10.0.0.1:5353"), SSServer: netip.MustParseAddrPort("10.1.0.100:53"),
			Idle: 3, Offload: "none", State: ""},
	}
	return in, core
}

// TestGolden runs each command of testdata/commands.txt and compares the transcript with
// testdata/transcript.golden.
func TestGolden(t *testing.T) {
	in, _ := newTestInterpreter(t)
	cmds, err := os.ReadFile("testdata/commands.txt")
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	s := &Session{User: "admin"}
	for _, line := range strings.Split(strings.TrimSpace(string(cmds)), "\n") {
		fmt.Fprintf(&got, "# %s\n", line)
		err := in.Exec(context.Background(), s, line, &got)
		if err != nil {
			fmt.Fprintf(&got, "error: %v\n", err)
		}
	}
	golden := filepath.Join("testdata", "transcript.golden")
	if *update {
		if err := os.WriteFile(golden, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), got.String()); diff != "" {
		t.Errorf("transcript (-want +got):\n%s", diff)
	}
}

// TestRefusedCommandChangesNothing: a failing command leaves the configuration as it was.
func TestRefusedCommandChangesNothing(t *testing.T) {
	in, core := newTestInterpreter(t)
	before := config.Digest(core.cfg.Shared)
	for _, cmd := range []string{
		"create ltm virtual /RPC/bad destination 10.0.0.11:80 pool /RPC/nope",
		"modify ltm virtual /RPC/RPC_VS_GALERA pool /RPC/nope",
		"delete ltm pool /RPC/RPC_POOL_GALERA",
		"modify ltm pool /RPC/RPC_POOL_GALERA members add { 10.1.0.100:3306 }",
		"create ltm virtual /RPC/bad2 destination 10.0.0.12:80 profiles add { http }",
		"delete auth partition RPC",
		"mv ltm pool /RPC/RPC_POOL_GALERA to /Nope/p",
		"mv ltm pool /RPC/RPC_POOL_GALERA to bad!name",
		"mv ltm snatpool /RPC/RPC_SNATPOOL /RPC/RPC_SNATPOOL",
		"mv ltm virtual /RPC/nope to /RPC/x",
		"modify ltm virtual /RPC/RPC_VS_GALERA mirror disabled allow-service all",
		"modify ltm pool /RPC/RPC_POOL_GALERA slow-ramp-time 5 members add { 10.1.0.100:3306 }",
		"reset-stats ltm pool /RPC/nope",
	} {
		if err := in.Exec(context.Background(), &Session{}, cmd, &bytes.Buffer{}); err == nil {
			t.Errorf("%s: succeeded, want an error", cmd)
		}
		if config.Digest(core.cfg.Shared) != before {
			t.Fatalf("%s: changed the configuration", cmd)
		}
	}
}

// TestListRoundTrip: what list prints can be pasted back with create.
func TestListRoundTrip(t *testing.T) {
	in, core := newTestInterpreter(t)
	// Properties beyond the walk-through's, and objects renamed with mv.
	const more = `modify ltm pool /RPC/RPC_POOL_GALERA description "Galera nodes" members modify { 10.1.0.103:3306 { session user-disabled description "node 4" } }
modify ltm virtual /RPC/RPC_VS_GALERA description "Galera VIP" disabled
create ltm pool /RPC/P2 members add { 10.1.0.200:53 } load-balancing-mode round-robin monitor none
mv ltm pool /RPC/P2 to /RPC/P3
create ltm snatpool /RPC/S2 members add { 10.1.0.11 10.1.0.12 }
create ltm virtual /RPC/VS_UDP destination /RPC/10.0.0.11:53 ip-protocol udp pool /RPC/P3 source 10.0.0.0/8 source-address-translation { type snat pool /RPC/S2 }
mv ltm snatpool /RPC/S2 to /RPC/S3
mv ltm virtual /RPC/VS_UDP to /RPC/VS_DNS`
	if err := in.Exec(context.Background(), &Session{}, more, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := in.Exec(context.Background(), &Session{}, "list ltm pool /RPC/* one-line; list ltm snatpool /RPC/* one-line; list ltm virtual /RPC/* one-line", &out); err != nil {
		t.Fatal(err)
	}
	want := config.Digest(core.cfg.Shared)
	fresh := &fakeCore{cfg: config.New("lb1")}
	fresh.cfg.Shared.Partitions = append(fresh.cfg.Shared.Partitions, config.Partition{Name: "RPC"})
	in2 := New(fresh)
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if err := in2.Exec(context.Background(), &Session{}, "create "+line, &bytes.Buffer{}); err != nil {
			t.Fatalf("create %s: %v", line, err)
		}
	}
	if got := config.Digest(fresh.cfg.Shared); got != want {
		a, _ := config.EncodeShared(core.cfg.Shared)
		b, _ := config.EncodeShared(fresh.cfg.Shared)
		t.Errorf("round trip differs:\n%s", cmp.Diff(string(a), string(b)))
	}
}

func FuzzParse(f *testing.F) {
	f.Add(setup)
	f.Add(`create ltm virtual x destination "a b" { { } } ; list`)
	f.Fuzz(func(t *testing.T, line string) {
		cmds, err := SplitCommands(line)
		if err != nil {
			return
		}
		for _, c := range cmds {
			_, _ = Parse(c)
		}
	})
}

func FuzzExec(f *testing.F) {
	f.Add("create ltm pool p members add { 10.0.0.1:80 }")
	f.Add("list ltm virtual /RPC/* one-line")
	f.Add("modify ltm virtual /RPC/RPC_VS_GALERA source-address-translation { type none }")
	f.Fuzz(func(t *testing.T, line string) {
		core := &fakeCore{cfg: config.New("lb1")}
		in := New(core)
		_ = in.Exec(context.Background(), &Session{}, setup, &bytes.Buffer{})
		before := config.Digest(core.cfg.Shared)
		if err := in.Exec(context.Background(), &Session{}, line, &bytes.Buffer{}); err != nil && !strings.Contains(line, ";") && !strings.Contains(line, "\n") {
			if config.Digest(core.cfg.Shared) != before {
				t.Fatalf("failed command %q changed the configuration", line)
			}
		}
	})
}
