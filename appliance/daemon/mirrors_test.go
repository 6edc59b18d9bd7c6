package daemon

import (
	"net/netip"
	"testing"

	"github.com/openappliance/appliance/appliance/config"
	"github.com/openappliance/appliance/kernel/conntrack"
	"golang.org/x/sys/unix"
)

// TestMirrors: what the active mirrors, the same rule as the kernel filter of its events:
// entries of mirror-enabled virtuals, TCP ones only once assured.
func TestMirrors(t *testing.T) {
	var c config.Config
	c.Shared.Virtuals = []config.Virtual{
		{Name: "/Common/galera", IPProtocol: "tcp", Destination: netip.MustParseAddrPort("10.0.0.10:3306"), Mirror: true},
		{Name: "/Common/web", IPProtocol: "tcp", Destination: netip.MustParseAddrPort("10.0.0.10:80")},
		{Name: "/Common/dns", IPProtocol: "udp", Destination: netip.MustParseAddrPort("10.0.0.10:53"), Mirror: true},
	}
	idx := newVirtualIndex(&c)
	flow := func(proto uint8, dst string, status uint32) conntrack.Flow {
		return conntrack.Flow{Proto: proto, Status: status, Orig: conntrack.Tuple{
			Src: netip.MustParseAddrPort("10.0.0.1:40000"), Dst: netip.MustParseAddrPort(dst)}}
	}
	const assured = conntrack.StatusAssured | conntrack.StatusSeenReply | conntrack.StatusConfirmed
	for _, tc := range []struct {
		name string
		flow conntrack.Flow
		want bool
	}{
		{"established TCP", flow(unix.IPPROTO_TCP, "10.0.0.10:3306", assured), true},
		{"TCP handshake", flow(unix.IPPROTO_TCP, "10.0.0.10:3306", conntrack.StatusConfirmed), false},
		{"TCP, status not reported", flow(unix.IPPROTO_TCP, "10.0.0.10:3306", 0), true},
		{"mirror disabled", flow(unix.IPPROTO_TCP, "10.0.0.10:80", assured), false},
		{"no virtual", flow(unix.IPPROTO_TCP, "10.0.0.11:3306", assured), false},
		{"UDP unreplied", flow(unix.IPPROTO_UDP, "10.0.0.10:53", conntrack.StatusConfirmed), true},
		{"UDP to the TCP virtual", flow(unix.IPPROTO_UDP, "10.0.0.10:3306", assured), false},
	} {
		if got := idx.mirrors(tc.flow); got != tc.want {
			t.Errorf("%s: mirrors = %v, want %v", tc.name, got, tc.want)
		}
	}
}
