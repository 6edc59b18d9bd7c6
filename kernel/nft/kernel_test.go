package nft

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/openappliance/appliance/kernel/internal/nstest"
	"golang.org/x/sys/unix"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// newTableIn opens the appliance table inside ns, closed when the test ends.
func newTableIn(t testing.TB, ns *nstest.NS) *Table {
	t.Helper()
	var tbl *Table
	ns.MustDo(func() (err error) { tbl, err = New("appliance"); return err })
	t.Cleanup(func() {
		if err := tbl.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tbl
}

// listTable is what an operator sees: `nft list table inet appliance`.
func listTable(t *testing.T, ns *nstest.NS) string {
	t.Helper()
	return ns.MustRun("nft", "list", "table", "inet", "appliance")
}

// golden compares got with testdata/NAME, or rewrites it under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("nft list table inet appliance vs %s (-want +got):\n%s", path, diff)
	}
}

// mixed has one virtual of every shape the builder knows.
func mixed() Ruleset {
	return Ruleset{Virtuals: []Virtual{
		{Name: "/Common/vs_web", Proto: unix.IPPROTO_TCP, Dest: ap("10.0.0.20:80"), Source: pfx("10.0.0.0/23"),
			Members: []netip.AddrPort{ap("10.1.0.100:8080"), ap("10.1.0.101:0")},
			SNAT:    []netip.Addr{ip("10.1.0.10"), ip("10.1.0.11")}},
		{Name: "/Common/vs_any", Proto: unix.IPPROTO_TCP, Dest: ap("10.0.0.20:0"),
			Members: []netip.AddrPort{ap("10.1.0.100:0"), ap("10.1.0.101:0")}},
		{Name: "/Common/vs_dns", Proto: unix.IPPROTO_UDP, Dest: ap("10.0.0.21:53"), Source: pfx("10.0.0.1/32"),
			Members: []netip.AddrPort{ap("10.1.0.100:5353")}, SNAT: []netip.Addr{ip("10.1.0.10")}},
		{Name: "/Common/vs_down_tcp", Proto: unix.IPPROTO_TCP, Dest: ap("10.0.0.22:443")},
		{Name: "/Common/vs_down_udp", Proto: unix.IPPROTO_UDP, Dest: ap("10.0.0.22:443")},
		{Name: "/Common/vs_web6", Proto: unix.IPPROTO_TCP, Dest: ap("[fd00::20]:80"), Source: pfx("fd00::/48"),
			Members: []netip.AddrPort{ap("[fd01::100]:80"), ap("[fd01::101]:8080")},
			SNAT:    []netip.Addr{ip("fd01::10")}},
		{Name: "/Common/vs_down6", Proto: unix.IPPROTO_UDP, Dest: ap("[fd00::22]:53")},
	}, NotrackMark: 0x7e1c}
}

// TestKernelGolden is the differential test: what Apply programs, read back by nft,
// must equal the golden text, through re-applies, replacement, refusal and removal.
func TestKernelGolden(t *testing.T) {
	ns := nstest.New(t, "nftA")
	// Another table in the namespace, and one of the same name in another family:
	// the appliance owns neither and must leave both alone.
	ns.MustRun("nft", "add table inet other; add chain inet other c { type filter hook input priority 0; }; add rule inet other c counter")
	ns.MustRun("nft", "add table ip appliance")
	others := ns.MustRun("nft", "list", "table", "inet", "other") + ns.MustRun("nft", "list", "table", "ip", "appliance")
	tbl := newTableIn(t, ns)

	if err := tbl.Remove(); err != nil {
		t.Fatalf("Remove before any Apply: %v", err)
	}
	if err := tbl.Apply(galera()); err != nil {
		t.Fatalf("Apply(galera): %v", err)
	}
	golden(t, "galera.nft", listTable(t, ns))

	if err := tbl.Apply(galera()); err != nil {
		t.Fatalf("Apply(galera) again: %v", err)
	}
	golden(t, "galera.nft", listTable(t, ns))

	if err := tbl.Apply(mixed()); err != nil {
		t.Fatalf("Apply(mixed): %v", err)
	}
	got := listTable(t, ns)
	golden(t, "mixed.nft", got)
	if strings.Contains(got, "RPC_VS_GALERA") || strings.Contains(got, "10.0.0.10") {
		t.Errorf("galera rules left behind after applying another ruleset:\n%s", got)
	}

	bad := mixed()
	bad.Virtuals = append(bad.Virtuals, Virtual{Name: "/Common/bad", Proto: unix.IPPROTO_TCP,
		Dest: ap("10.0.0.30:80"), Members: []netip.AddrPort{ap("[fd01::1]:80")}})
	if err := tbl.Apply(bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("Apply(invalid) = %v, want ErrInvalid", err)
	}
	golden(t, "mixed.nft", listTable(t, ns))

	if err := tbl.Apply(Ruleset{}); err != nil {
		t.Fatalf("Apply(empty): %v", err)
	}
	golden(t, "empty.nft", listTable(t, ns))

	if err := tbl.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if out, err := ns.Run("nft", "list", "table", "inet", "appliance"); err == nil {
		t.Errorf("table still there after Remove:\n%s", out)
	}
	if err := tbl.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if got := ns.MustRun("nft", "list", "table", "inet", "other") + ns.MustRun("nft", "list", "table", "ip", "appliance"); got != others {
		t.Errorf("tables the appliance does not own changed:\n%s\nwant:\n%s", got, others)
	}
}

// TestKernelStates replays desired states in random order (after Tailscale's
// TestRouterStates): whatever came before, the table must read back as the golden
// text of the state just applied.
func TestKernelStates(t *testing.T) {
	states := []struct {
		golden string
		rs     Ruleset
	}{
		{"galera.nft", galera()},
		{"mixed.nft", mixed()},
		{"empty.nft", Ruleset{}},
		{"", Ruleset{}}, // "" = Remove
	}
	ns := nstest.New(t, "nftT")
	tbl := newTableIn(t, ns)
	seed := rand.Uint64()
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("seed %d", seed)
	for step := range 24 {
		st := states[rng.IntN(len(states))]
		if st.golden == "" {
			if err := tbl.Remove(); err != nil {
				t.Fatalf("step %d: Remove: %v", step, err)
			}
			if out, err := ns.Run("nft", "list", "table", "inet", "appliance"); err == nil {
				t.Fatalf("step %d: table still there after Remove:\n%s", step, out)
			}
			continue
		}
		if err := tbl.Apply(st.rs); err != nil {
			t.Fatalf("step %d: Apply(%s): %v", step, st.golden, err)
		}
		golden(t, st.golden, listTable(t, ns))
		if t.Failed() {
			t.Fatalf("step %d (%s) failed", step, st.golden)
		}
	}
}

// manyVirtuals is n virtuals of four members and one SNAT address each.
func manyVirtuals(n int) Ruleset {
	var rs Ruleset
	for i := range n {
		vip := netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})
		v := Virtual{Name: fmt.Sprintf("/Common/vs_%d", i), Proto: unix.IPPROTO_TCP,
			Dest: netip.AddrPortFrom(vip, 443), SNAT: []netip.Addr{ip("10.1.0.10")}}
		for m := range 4 {
			v.Members = append(v.Members, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 3, byte(i >> 8), byte(i)}), uint16(8000+m)))
		}
		rs.Virtuals = append(rs.Virtuals, v)
	}
	return rs
}

// TestKernelLarge: a thousand virtuals go in one batch (several thousand messages,
// each acknowledged) without the acks overrunning the socket.
func TestKernelLarge(t *testing.T) {
	ns := nstest.New(t, "nftL")
	tbl := newTableIn(t, ns)
	rs := manyVirtuals(1000)
	for range 2 {
		if err := tbl.Apply(rs); err != nil {
			t.Fatalf("Apply(1000 virtuals): %v", err)
		}
	}
	out := listTable(t, ns)
	if n := strings.Count(out, "dnat ip to numgen inc mod 4 map @pool"); n != 1000 {
		t.Errorf("%d dnat rules in the kernel, want 1000", n)
	}
	if n := strings.Count(out, "snat ip to 10.1.0.10"); n != 1000 {
		t.Errorf("%d snat rules in the kernel, want 1000", n)
	}
}

func BenchmarkApply(b *testing.B) {
	ns := nstest.New(b, "nftB")
	tbl := newTableIn(b, ns)
	rs := manyVirtuals(1000)
	b.ResetTimer()
	for b.Loop() {
		if err := tbl.Apply(rs); err != nil {
			b.Fatal(err)
		}
	}
}
