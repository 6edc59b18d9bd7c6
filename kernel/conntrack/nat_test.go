package conntrack

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/openappliance/appliance/kernel/internal/nstest"
	"golang.org/x/sys/unix"
)

// routerRuleset sends every new flow to the virtual address to a pool member that does
// not exist (10.1.0.200): only the injected entry's own NAT binding can reach the server.
// An entry whose NAT is set up is not run through the NAT chains again (nf_nat_inet_fn).
const routerRuleset = `table ip ctlb {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.0.0.10 udp dport 5353 dnat to 10.1.0.200
	}
	chain post { type nat hook postrouting priority srcnat; policy accept; }
}
`

// TestInjectedFlowIsNATed proves with real packets that the kernel NATs by an injected
// entry. Router R sits between client C (10.0.0.0/24) and server S (10.1.0.0/24,
// 10.1.0.100). R holds 10.0.0.10 (the virtual address) and 10.1.0.10 (the SNAT address),
// forwards, has tcp_loose=0 and a NAT rule that sends new flows to a missing member. With
// the injected entry a datagram from C to 10.0.0.10 reaches S from 10.1.0.10, and S's
// reply reaches C from 10.0.0.10; from a port without an entry, nothing reaches S.
func TestInjectedFlowIsNATed(t *testing.T) {
	c := nstest.New(t, "ctpc")
	r := nstest.New(t, "ctpr")
	s := nstest.New(t, "ctps")
	loadRuleset(t, r, routerRuleset)

	// Interface names are per namespace; create each pair in R and move one end out.
	r.MustRun("ip", "link", "add", "rc", "type", "veth", "peer", "name", "c0")
	r.MustRun("ip", "link", "set", "c0", "netns", c.Name)
	r.MustRun("ip", "link", "add", "rs", "type", "veth", "peer", "name", "s0")
	r.MustRun("ip", "link", "set", "s0", "netns", s.Name)
	r.MustRun("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.netfilter.nf_conntrack_tcp_loose=0",
		"net.ipv4.conf.all.rp_filter=0")
	for _, cmd := range [][]string{
		{"ip", "addr", "add", "10.0.0.254/24", "dev", "rc"},
		{"ip", "addr", "add", "10.0.0.10/24", "dev", "rc"},
		{"ip", "addr", "add", "10.1.0.254/24", "dev", "rs"},
		{"ip", "addr", "add", "10.1.0.10/24", "dev", "rs"},
		{"ip", "link", "set", "rc", "up"},
		{"ip", "link", "set", "rs", "up"},
	} {
		r.MustRun(cmd...)
	}
	c.MustRun("ip", "addr", "add", "10.0.0.1/24", "dev", "c0")
	c.MustRun("ip", "link", "set", "c0", "up")
	s.MustRun("ip", "addr", "add", "10.1.0.100/24", "dev", "s0")
	s.MustRun("ip", "link", "set", "s0", "up")

	tbl := openTable(t, r)
	events, _ := listen(t, r, 0)
	f := Flow{
		Proto: unix.IPPROTO_UDP, Timeout: 120,
		Orig:  tup("10.0.0.1:40000", "10.0.0.10:5353"),
		Reply: tup("10.1.0.100:5353", "10.1.0.10:40000"),
	}
	if err := tbl.Inject(f); err != nil {
		t.Fatal(err)
	}

	client := udpIn(t, c, f.Orig.Src)
	server := udpIn(t, s, ap("10.1.0.100:5353"))

	send(t, client, []byte("ping"), f.Orig.Dst)
	msg, from := recv(t, server, 2*time.Second)
	if string(msg) != "ping" || from != f.Reply.Dst {
		t.Fatalf("server got %q from %v, want \"ping\" from the SNAT address %v", msg, from, f.Reply.Dst)
	}
	send(t, server, []byte("pong"), from)
	msg, from = recv(t, client, 5*time.Second)
	if string(msg) != "pong" || from != f.Orig.Dst {
		t.Fatalf("client got %q from %v, want \"pong\" from the virtual address %v", msg, from, f.Orig.Dst)
	}

	// The kernel saw the reply on the injected entry: an update made by packets, which
	// carries no netlink port id, after the new event of our own inject.
	got := expectEvents(t, events, Event{Type: EventNew, Flow: f}, Event{Type: EventUpdate, Flow: f})
	if len(got) >= 2 && (got[0].PortID != tbl.PortID() || got[1].PortID != 0) {
		t.Errorf("event port ids %d, %d; want the table's %d, then 0", got[0].PortID, got[1].PortID, tbl.PortID())
	}
	if len(got) >= 2 && got[1].Flow.Status&StatusSeenReply == 0 {
		t.Errorf("update event status %#x lacks SEEN_REPLY", got[1].Flow.Status)
	}
	// Control: from a port without an injected entry, nothing reaches the server.
	other := udpIn(t, c, ap("10.0.0.1:40001"))
	send(t, other, []byte("stray"), f.Orig.Dst)
	if msg, from := recv(t, server, 300*time.Millisecond); msg != nil {
		t.Fatalf("server got %q from %v without an injected entry", msg, from)
	}
}

// udpIn opens a UDP socket bound to addr inside ns, closed at cleanup.
func udpIn(t *testing.T, ns *nstest.NS, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	ns.MustDo(func() (err error) {
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	})
	t.Cleanup(func() { conn.Close() })
	return conn
}

func send(t *testing.T, conn *net.UDPConn, b []byte, to netip.AddrPort) {
	t.Helper()
	if _, err := conn.WriteToUDPAddrPort(b, to); err != nil {
		t.Fatal(err)
	}
}

// recv returns one datagram and its source, or nil if none arrives within d.
func recv(t *testing.T, conn *net.UDPConn, d time.Duration) ([]byte, netip.AddrPort) {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(d)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	n, from, err := conn.ReadFromUDPAddrPort(buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, netip.AddrPort{}
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}
