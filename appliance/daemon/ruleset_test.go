package daemon

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/openappliance/appliance/appliance/config"
	"github.com/openappliance/appliance/kernel/conntrack"
	"github.com/openappliance/appliance/kernel/nft"
)

func TestBuildRuleset(t *testing.T) {
	c := config.New("lb1")
	c.Shared.Pools = []config.Pool{{Name: "/Common/p", Members: []config.PoolMember{
		{Address: netip.MustParseAddrPort("10.1.0.100:3306")},
		{Address: netip.MustParseAddrPort("10.1.0.101:3306"), Disabled: true},
	}}}
	c.Shared.SNATPools = []config.SNATPool{{Name: "/Common/s", Members: []netip.Addr{netip.MustParseAddr("10.1.0.10")}}}
	c.Shared.Virtuals = []config.Virtual{
		{Name: "/Common/vs", Destination: netip.MustParseAddrPort("10.0.0.10:3306"), IPProtocol: "tcp",
			Source: netip.MustParsePrefix("0.0.0.0/0"), Pool: "/Common/p", SNATType: "snat", SNATPool: "/Common/s"},
		{Name: "/Common/dns", Destination: netip.MustParseAddrPort("10.0.0.10:53"), IPProtocol: "udp", Pool: "/Common/p", VSIndex: 2},
		{Name: "/Common/off", Destination: netip.MustParseAddrPort("10.0.0.11:80"), IPProtocol: "tcp", Disabled: true, VSIndex: 3},
	}
	got := buildRuleset(&c)
	want := nft.Ruleset{Virtuals: []nft.Virtual{
		{Name: "/Common/vs", Proto: 6, Dest: netip.MustParseAddrPort("10.0.0.10:3306"), Source: netip.MustParsePrefix("0.0.0.0/0"),
			Members: []netip.AddrPort{netip.MustParseAddrPort("10.1.0.100:3306")}, SNAT: []netip.Addr{netip.MustParseAddr("10.1.0.10")}},
		{Name: "/Common/dns", Proto: 17, Dest: netip.MustParseAddrPort("10.0.0.10:53"),
			Members: []netip.AddrPort{netip.MustParseAddrPort("10.1.0.100:3306")}},
	}, NotrackMark: tickleMark}
	if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.Addr{}, netip.AddrPort{}, netip.Prefix{})); diff != "" {
		t.Errorf("buildRuleset (-want +got):\n%s", diff)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}

func TestVirtualIndex(t *testing.T) {
	c := config.New("lb1")
	c.Shared.Virtuals = []config.Virtual{
		{Name: "/Common/vs", Destination: netip.MustParseAddrPort("10.0.0.10:3306"), IPProtocol: "tcp", Mirror: true},
		{Name: "/Common/any", Destination: netip.MustParseAddrPort("10.0.0.20:0"), IPProtocol: "udp"},
	}
	idx := newVirtualIndex(&c)
	tests := []struct {
		proto uint8
		dst   string
		want  string
	}{
		{6, "10.0.0.10:3306", "/Common/vs"},
		{17, "10.0.0.10:3306", ""},
		{6, "10.0.0.10:80", ""},
		{17, "10.0.0.20:53", "/Common/any"},
	}
	for _, tt := range tests {
		got := ""
		if v := idx.lookup(tt.proto, netip.MustParseAddrPort(tt.dst)); v != nil {
			got = v.Name
		}
		if got != tt.want {
			t.Errorf("lookup(%d, %s) = %q, want %q", tt.proto, tt.dst, got, tt.want)
		}
	}
}

func TestIdleSeconds(t *testing.T) {
	tests := []struct {
		name            string
		state, unacked  uint32
		proto           uint8
		remaining, want uint32
	}{
		{"established, quiet", 432000, 300, 6, 431990, 10},
		{"established, data in flight", 432000, 300, 6, 299, 1},
		{"time wait", 120, 300, 6, 115, 5},
		{"udp", 120, 300, 17, 100, 20},
		{"refreshed beyond the default", 120, 300, 6, 130, 0},
	}
	for _, tt := range tests {
		got := idleSeconds(tt.state, tt.unacked, conntrack.Flow{Proto: tt.proto, Timeout: tt.remaining})
		if got != tt.want {
			t.Errorf("%s: idle = %d, want %d", tt.name, got, tt.want)
		}
	}
}
