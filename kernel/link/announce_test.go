package link

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv6"
)

const staleMAC = "02:00:00:00:00:99"

// TestAnnounceMovesNeighbour is the GARP proof on a real kernel: B holds a stale neighbour
// entry for 10.9.0.50 pointing elsewhere; A takes 10.9.0.50 and announces it; B's entry
// must then carry A's MAC. Linux updates an existing entry from a gratuitous ARP but only
// creates one with arp_accept=1, hence the stale entry first. Before Announce, B's entry
// is checked to be unchanged, so the update is Announce's doing (adding an address sends
// nothing by itself).
func TestAnnounceMovesNeighbour(t *testing.T) {
	for _, tc := range []struct {
		name string
		add  []string // A's IPv4 addresses on vA
	}{
		{name: "floating address added", add: []string{"10.9.0.1/24", "10.9.0.50/32"}},
		// arp.Dial refuses an interface without an IPv4 address; Announce needs none.
		{name: "no IPv4 address on the interface", add: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := vethPair(t)
			b.MustRun("ip", "addr", "add", "10.9.0.2/24", "dev", "vB")
			b.MustRun("ip", "neigh", "replace", "10.9.0.50", "lladdr", staleMAC, "dev", "vB", "nud", "stale")
			macA := mac(t, a, "vA")
			a.MustDo(func() error {
				for _, p := range tc.add {
					if err := AddAddress("vA", netip.MustParsePrefix(p)); err != nil {
						return err
					}
				}
				return nil
			})
			time.Sleep(200 * time.Millisecond)
			if got, line := neighLladdr(t, b, "10.9.0.50", "vB"); got != staleMAC {
				t.Fatalf("before Announce, B's entry changed already: %s", line)
			}

			an := NewAnnouncer(nil)
			var n int
			a.MustDo(func() error {
				var err error
				n, err = an.Announce(t.Context(), "vA", []netip.Addr{netip.MustParseAddr("10.9.0.50")}, 2, 50*time.Millisecond)
				return err
			})
			if want := 2 * 3; n != want || an.Sent() != uint64(want) {
				t.Errorf("Announce sent %d (Sent() %d), want %d: request and reply, 3 rounds", n, an.Sent(), want)
			}
			waitFor(t, "B's neighbour entry for 10.9.0.50 follows A", func() (bool, string) {
				got, line := neighLladdr(t, b, "10.9.0.50", "vB")
				return got == macA, line + " (want lladdr " + macA + ")"
			})
		})
	}
}

// TestAnnounceIPv6MovesNeighbour is the same proof for IPv6 with an unsolicited
// neighbour advertisement: the kernel must accept it (hop limit 255, right checksum,
// well-formed option) and override the stale entry. Adding the address (without DAD, and
// with ndisc_notify off) sends no advertisement by itself: that is checked first.
func TestAnnounceIPv6MovesNeighbour(t *testing.T) {
	a, b := vethPair(t)
	b.MustRun("ip", "addr", "add", "2001:db8:9::2/64", "dev", "vB", "nodad")
	b.MustRun("ip", "-6", "neigh", "replace", "2001:db8:9::50", "lladdr", staleMAC, "dev", "vB", "nud", "stale")
	macA := mac(t, a, "vA")
	floating := netip.MustParsePrefix("2001:db8:9::50/64")

	a.MustDo(func() error { return AddAddress("vA", floating) })
	time.Sleep(200 * time.Millisecond)
	if got, line := neighLladdr(t, b, "2001:db8:9::50", "vB"); got != staleMAC {
		t.Fatalf("before Announce, B's entry changed already: %s", line)
	}

	an := NewAnnouncer(nil)
	var n int
	a.MustDo(func() error {
		var err error
		n, err = an.Announce(t.Context(), "vA", []netip.Addr{floating.Addr()}, 1, 50*time.Millisecond)
		return err
	})
	if n != 2 {
		t.Errorf("Announce sent %d, want 2 (one advertisement, 2 rounds)", n)
	}
	waitFor(t, "B's neighbour entry for 2001:db8:9::50 follows A", func() (bool, string) {
		got, line := neighLladdr(t, b, "2001:db8:9::50", "vB")
		return got == macA, line + " (want lladdr " + macA + ")"
	})
}

// fakeConn records what is written to it: the transport is faked, the code under test is
// the real one.
type fakeConn struct {
	mu     sync.Mutex
	writes [][]byte
	to     []net.Addr
	err    error
}

func (c *fakeConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	c.writes = append(c.writes, append([]byte(nil), b...))
	c.to = append(c.to, addr)
	return len(b), nil
}
func (c *fakeConn) ReadFrom([]byte) (int, net.Addr, error) { return 0, nil, errors.New("not read") }
func (c *fakeConn) Close() error                           { return nil }
func (c *fakeConn) LocalAddr() net.Addr                    { return nil }
func (c *fakeConn) SetDeadline(time.Time) error            { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error        { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error       { return nil }

var testHW = net.HardwareAddr{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}

// TestAnnounceFrames checks every frame of a run: for each IPv4 address a broadcast ARP
// request (target MAC zero) then a reply (target MAC = sender MAC), sender IP = target IP;
// for each IPv6 address one neighbour advertisement with Override set and our MAC in the
// target link-layer option; repeat+1 rounds; duplicates and mapped addresses folded.
func TestAnnounceFrames(t *testing.T) {
	arpc, ndc := &fakeConn{}, &fakeConn{}
	ndDst := &net.IPAddr{IP: net.IPv6linklocalallnodes, Zone: "7"}
	tx := &transport{hw: testHW, arp: arpc, nd: ndc, ndDst: ndDst, router: true}
	v4a, v4b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	v6 := netip.MustParseAddr("2001:db8::1")
	in := []netip.Addr{v4a, netip.MustParseAddr("::ffff:10.0.0.2"), v6, v4a}
	v4, v6s, err := splitAddrs(in)
	if err != nil {
		t.Fatal(err)
	}
	an := NewAnnouncer(nil)
	n, err := an.announce(t.Context(), tx, "eth9", append(v4, v6s...), 2, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3 * (2*2 + 1); n != want || an.Sent() != uint64(want) {
		t.Fatalf("sent %d (Sent() %d), want %d", n, an.Sent(), want)
	}

	type arpSeen struct {
		Op                 arp.Operation
		Dst, SHA, THA      string
		SenderIP, TargetIP netip.Addr
	}
	var got []arpSeen
	for i, b := range arpc.writes {
		var f ethernet.Frame
		if err := f.UnmarshalBinary(b); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if f.EtherType != ethernet.EtherTypeARP || f.Source.String() != testHW.String() {
			t.Errorf("frame %d: ethertype %v source %v", i, f.EtherType, f.Source)
		}
		var p arp.Packet
		if err := p.UnmarshalBinary(f.Payload); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if a, ok := arpc.to[i].(*packet.Addr); !ok || a.HardwareAddr.String() != ethernet.Broadcast.String() {
			t.Errorf("frame %d sent to %v, want broadcast", i, arpc.to[i])
		}
		got = append(got, arpSeen{p.Operation, f.Destination.String(), p.SenderHardwareAddr.String(),
			p.TargetHardwareAddr.String(), p.SenderIP, p.TargetIP})
	}
	var want []arpSeen
	for range 3 {
		for _, ip := range []netip.Addr{v4a, v4b} {
			want = append(want,
				arpSeen{arp.OperationRequest, "ff:ff:ff:ff:ff:ff", testHW.String(), "00:00:00:00:00:00", ip, ip},
				arpSeen{arp.OperationReply, "ff:ff:ff:ff:ff:ff", testHW.String(), testHW.String(), ip, ip})
		}
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("ARP frames (-want +got):\n%s", diff)
	}

	if len(ndc.writes) != 3 {
		t.Fatalf("%d neighbour advertisements, want 3", len(ndc.writes))
	}
	for i, b := range ndc.writes {
		if ndc.to[i] != ndDst {
			t.Errorf("advertisement %d sent to %v", i, ndc.to[i])
		}
		m, err := icmp.ParseMessage(58, b)
		if err != nil {
			t.Fatal(err)
		}
		body, ok := m.Body.(*icmp.RawBody)
		if m.Type != ipv6.ICMPTypeNeighborAdvertisement || !ok || len(body.Data) != 28 {
			t.Fatalf("advertisement %d: %+v", i, m)
		}
		d := body.Data
		if d[0] != 0xa0 { // Router and Override, not Solicited
			t.Errorf("advertisement %d flags %#x, want 0xa0", i, d[0])
		}
		if tgt, _ := netip.AddrFromSlice(d[4:20]); tgt != v6 {
			t.Errorf("advertisement %d target %s, want %s", i, tgt, v6)
		}
		if d[20] != 2 || d[21] != 1 || net.HardwareAddr(d[22:28]).String() != testHW.String() {
			t.Errorf("advertisement %d option % x", i, d[20:])
		}
	}
}

// TestAnnounceStops checks that Announce returns at once with ctx's error when ctx is
// cancelled between rounds, and that a failing address is dropped while the others go on.
func TestAnnounceStops(t *testing.T) {
	t.Run("cancel", func(t *testing.T) {
		tx := &transport{hw: testHW, arp: &fakeConn{}}
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(50*time.Millisecond, cancel)
		start := time.Now()
		n, err := NewAnnouncer(nil).announce(ctx, tx, "eth9", []netip.Addr{netip.MustParseAddr("10.0.0.1")}, 1000, 20*time.Millisecond)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("took %s after cancel", took)
		}
		if n < 2 || n%2 != 0 || n > 20 {
			t.Errorf("sent %d, want whole rounds of 2, a few of them", n)
		}
	})
	t.Run("failing address", func(t *testing.T) {
		nd := &fakeConn{err: errors.New("no route")}
		arpc := &fakeConn{}
		tx := &transport{hw: testHW, arp: arpc, nd: nd, ndDst: &net.IPAddr{}}
		an := NewAnnouncer(nil)
		n, err := an.announce(t.Context(), tx, "eth9",
			[]netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("2001:db8::1")}, 2, time.Millisecond)
		if err == nil || !errors.Is(err, nd.err) {
			t.Errorf("err = %v, want the advertisement's error", err)
		}
		if n != 6 || len(arpc.writes) != 6 || an.Failed() != 1 {
			t.Errorf("sent %d (ARP %d, failed %d), want 6 ARP and 1 failure", n, len(arpc.writes), an.Failed())
		}
	})
	t.Run("bad arguments", func(t *testing.T) {
		an := NewAnnouncer(nil)
		for _, tc := range []struct {
			addrs    []netip.Addr
			repeat   int
			interval time.Duration
		}{
			{[]netip.Addr{{}}, 0, 0},
			{[]netip.Addr{netip.MustParseAddr("10.0.0.1")}, -1, time.Second},
			{[]netip.Addr{netip.MustParseAddr("10.0.0.1")}, 3, 0},
		} {
			if _, err := an.Announce(t.Context(), "eth9", tc.addrs, tc.repeat, tc.interval); !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("Announce(%v, %d, %s) err = %v, want ErrInvalidArgument", tc.addrs, tc.repeat, tc.interval, err)
			}
		}
		if n, err := an.Announce(t.Context(), "eth9", nil, 3, time.Second); n != 0 || err != nil {
			t.Errorf("Announce(no addresses) = %d, %v; want 0, nil", n, err)
		}
	})
}
