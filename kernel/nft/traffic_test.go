package nft

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/openappliance/appliance/kernel/internal/nstest"
	"golang.org/x/sys/unix"
)

// lab is client C, router R (the appliance) and server S, in namespaces:
//
//	C c0 10.0.0.1/24 fd00::1/64 ── r0 R r1 ── s0 S 10.1.0.100-103/24 fd01::100-103/64
//	     10.0.0.2/24 + VIP 10.0.0.10/32        10.1.0.2/24 + SNAT 10.1.0.10/32
//	     fd00::2/64 + VIP fd00::10/128         fd01::2/64 + SNAT fd01::10/128
type lab struct {
	c, r, s *nstest.NS
}

func newLab(t *testing.T) lab {
	t.Helper()
	l := lab{c: nstest.New(t, "nftC"), r: nstest.New(t, "nftR"), s: nstest.New(t, "nftS")}
	l.c.MustRun("ip", "link", "add", "c0", "type", "veth", "peer", "name", "r0", "netns", l.r.Name)
	l.s.MustRun("ip", "link", "add", "s0", "type", "veth", "peer", "name", "r1", "netns", l.r.Name)
	addrs := func(ns *nstest.NS, dev string, cidrs ...string) {
		for _, a := range cidrs {
			// nodad: an IPv6 address is usable at once rather than after duplicate detection.
			ns.MustRun("ip", "addr", "add", a, "dev", dev, "nodad")
		}
		ns.MustRun("ip", "link", "set", dev, "up")
	}
	addrs(l.c, "c0", "10.0.0.1/24", "fd00::1/64")
	addrs(l.r, "r0", "10.0.0.2/24", "10.0.0.10/32", "fd00::2/64", "fd00::10/128")
	addrs(l.r, "r1", "10.1.0.2/24", "10.1.0.10/32", "fd01::2/64", "fd01::10/128")
	addrs(l.s, "s0", "10.1.0.100/24", "10.1.0.101/24", "10.1.0.102/24", "10.1.0.103/24",
		"fd01::100/64", "fd01::101/64", "fd01::102/64", "fd01::103/64")
	l.c.MustRun("ip", "route", "add", "default", "via", "10.0.0.2")
	l.c.MustRun("ip", "-6", "route", "add", "default", "via", "fd00::2")
	l.s.MustRun("ip", "route", "add", "default", "via", "10.1.0.2")
	l.s.MustRun("ip", "-6", "route", "add", "default", "via", "fd01::2")
	l.r.MustRun("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	return l
}

// ioTimeout bounds every network wait of the traffic test.
const ioTimeout = 5 * time.Second

// serve runs echo-who servers in ns, on TCP and UDP at every address: each answers
// "LOCAL REMOTE\n", the address it was reached at and the peer it saw. They stop when
// the test ends.
func serve(t *testing.T, ns *nstest.NS, addrs []netip.AddrPort) {
	t.Helper()
	var (
		wg      sync.WaitGroup
		closers []func() error
	)
	t.Cleanup(func() {
		for _, c := range closers {
			c()
		}
		wg.Wait()
	})
	ns.MustDo(func() error {
		for _, a := range addrs {
			ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(a))
			if err != nil {
				return err
			}
			closers = append(closers, ln.Close)
			wg.Go(func() {
				for {
					c, err := ln.AcceptTCP()
					if err != nil {
						return // closed by the cleanup
					}
					c.SetDeadline(time.Now().Add(ioTimeout))
					fmt.Fprintf(c, "%s %s\n", c.LocalAddr(), c.RemoteAddr())
					c.Close()
				}
			})
			pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(a))
			if err != nil {
				return err
			}
			closers = append(closers, pc.Close)
			wg.Go(func() {
				buf := make([]byte, 64)
				for {
					_, from, err := pc.ReadFromUDPAddrPort(buf)
					if err != nil {
						return // closed by the cleanup
					}
					pc.WriteToUDPAddrPort(fmt.Appendf(nil, "%s %s\n", a, from), from)
				}
			})
		}
		return nil
	})
}

// ask opens a new connection (so a new conntrack entry) from ns to dest and returns
// the server's answer: the member that served it and the source it saw.
func ask(ns *nstest.NS, network string, dest netip.AddrPort) (member, source netip.AddrPort, err error) {
	c, err := dial(ns, network, dest)
	if err != nil {
		return member, source, err
	}
	defer c.Close()
	return exchange(c)
}

// dial connects from ns; the connection has a deadline of ioTimeout.
func dial(ns *nstest.NS, network string, dest netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	if err := ns.Do(func() (err error) {
		// The socket is made on this thread, so in ns; the rest may run anywhere.
		c, err = (&net.Dialer{Timeout: ioTimeout}).Dial(network, dest.String())
		return err
	}); err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	return c, nil
}

// exchange reads the server's "LOCAL REMOTE" answer, prompting it first on UDP.
func exchange(c net.Conn) (member, source netip.AddrPort, err error) {
	if _, ok := c.(*net.UDPConn); ok {
		if _, err := c.Write([]byte("hello\n")); err != nil {
			return member, source, err
		}
	}
	buf := make([]byte, 128)
	n, err := c.Read(buf)
	if err != nil {
		return member, source, err
	}
	line := string(buf[:n])
	f := strings.Fields(line)
	if len(f) != 2 {
		return member, source, fmt.Errorf("answer %q: want LOCAL REMOTE", line)
	}
	if member, err = netip.ParseAddrPort(f[0]); err != nil {
		return member, source, err
	}
	source, err = netip.ParseAddrPort(f[1])
	return member, source, err
}

func members(port uint16, addrs ...string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range addrs {
		out = append(out, netip.AddrPortFrom(ip(a), port))
	}
	return out
}

// TestTraffic is the proof: real connections through the appliance's namespace are
// spread round-robin over the members and leave with the SNAT address.
func TestTraffic(t *testing.T) {
	l := newLab(t)
	four := members(3306, "10.1.0.100", "10.1.0.101", "10.1.0.102", "10.1.0.103")
	fourUDP := members(5353, "10.1.0.100", "10.1.0.101", "10.1.0.102", "10.1.0.103")
	two6 := members(3306, "fd01::100", "fd01::101")
	snat := []netip.Addr{ip("10.1.0.10")}
	rs := Ruleset{Virtuals: []Virtual{
		{Name: "/RPC/RPC_VS_GALERA", Proto: unix.IPPROTO_TCP, Dest: ap("10.0.0.10:3306"), Members: four, SNAT: snat},
		{Name: "/RPC/RPC_VS_DNS", Proto: unix.IPPROTO_UDP, Dest: ap("10.0.0.10:53"), Members: fourUDP, SNAT: snat},
		{Name: "/RPC/vs_nosnat", Proto: unix.IPPROTO_TCP, Dest: ap("10.0.0.10:3308"), Members: four[1:2]},
		// Not an address of R's: without the reject rules the client would hear "no
		// route" from R (it has none), not the refusal that the rules send.
		{Name: "/RPC/vs_down", Proto: unix.IPPROTO_TCP, Dest: ap("10.9.0.9:3307")},
		{Name: "/RPC/vs_down_udp", Proto: unix.IPPROTO_UDP, Dest: ap("10.9.0.9:5354")},
		{Name: "/RPC/vs_galera6", Proto: unix.IPPROTO_TCP, Dest: ap("[fd00::10]:3306"), Source: pfx("fd00::/64"),
			Members: two6, SNAT: []netip.Addr{ip("fd01::10")}},
	}}
	serve(t, l.s, append(append(four, fourUDP...), members(3306, "fd01::100", "fd01::101")...))
	tbl := newTableIn(t, l.r)
	if err := tbl.Apply(rs); err != nil {
		t.Fatalf("Apply: %v", err)
	}

	roundRobin := func(t *testing.T, network string, vip netip.AddrPort, pool []netip.AddrPort, snat netip.Addr, n int) {
		t.Helper()
		var got []netip.AddrPort
		for i := range n {
			member, source, err := ask(l.c, network, vip)
			if err != nil {
				t.Fatalf("connection %d to %s %s: %v", i, network, vip, err)
			}
			if source.Addr() != snat {
				t.Errorf("connection %d: server saw source %s, want the SNAT address %s", i, source, snat)
			}
			got = append(got, member)
		}
		// Round-robin: the first len(pool) connections hit every member once, and then
		// the same order repeats.
		seen := map[netip.AddrPort]int{}
		for i, m := range got {
			seen[m]++
			if i >= len(pool) && m != got[i-len(pool)] {
				t.Errorf("connection %d went to %s, want %s as %d connections before", i, m, got[i-len(pool)], len(pool))
			}
		}
		want := map[netip.AddrPort]int{}
		for _, m := range pool {
			want[m] = n / len(pool)
		}
		if diff := cmp.Diff(want, seen); diff != "" {
			t.Errorf("connections per member (-want +got):\n%s\norder: %v", diff, got)
		}
	}

	t.Run("tcp round robin with snat", func(t *testing.T) {
		roundRobin(t, "tcp", ap("10.0.0.10:3306"), four, ip("10.1.0.10"), 8)
	})
	t.Run("udp round robin with port translation and snat", func(t *testing.T) {
		roundRobin(t, "udp", ap("10.0.0.10:53"), fourUDP, ip("10.1.0.10"), 8)
	})
	t.Run("ipv6 tcp round robin with snat", func(t *testing.T) {
		roundRobin(t, "tcp", ap("[fd00::10]:3306"), two6, ip("fd01::10"), 4)
	})
	t.Run("one member with port translation keeps the client source", func(t *testing.T) {
		member, source, err := ask(l.c, "tcp", ap("10.0.0.10:3308"))
		if err != nil {
			t.Fatal(err)
		}
		if member != four[1] || source.Addr() != ip("10.0.0.1") {
			t.Errorf("served by %s seeing %s, want %s seeing the client 10.0.0.1", member, source, four[1])
		}
	})
	t.Run("a flow keeps its member across Apply", func(t *testing.T) {
		c, err := dial(l.c, "udp", ap("10.0.0.10:53"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		before, _, err := exchange(c)
		if err != nil {
			t.Fatal(err)
		}
		// New rules whose next pick is another member: the flow's conntrack entry
		// must carry on through the table's replacement regardless.
		moved := rs
		moved.Virtuals = slices.Clone(rs.Virtuals)
		moved.Virtuals[1].Members = slices.DeleteFunc(slices.Clone(fourUDP), func(m netip.AddrPort) bool { return m == before })
		if err := tbl.Apply(moved); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		t.Cleanup(func() {
			if err := tbl.Apply(rs); err != nil {
				t.Errorf("Apply: %v", err)
			}
		})
		after, source, err := exchange(c)
		if err != nil {
			t.Fatalf("flow after Apply: %v", err)
		}
		if after != before || source.Addr() != ip("10.1.0.10") {
			t.Errorf("flow moved from %s to %s (seen from %s) across Apply", before, after, source)
		}
		if m, _, err := ask(l.c, "udp", ap("10.0.0.10:53")); err != nil || m == before {
			t.Errorf("new flow after Apply went to %s (%v), want one of the remaining members", m, err)
		}
	})
	t.Run("empty tcp pool resets", func(t *testing.T) {
		_, _, err := ask(l.c, "tcp", ap("10.9.0.9:3307"))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("connect to an empty pool: %v, want connection refused", err)
		}
	})
	t.Run("empty udp pool is port unreachable", func(t *testing.T) {
		_, _, err := ask(l.c, "udp", ap("10.9.0.9:5354"))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("ask an empty pool: %v, want connection refused (ICMP port unreachable)", err)
		}
	})
}
