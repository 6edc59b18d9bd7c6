package tickle

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/openappliance/appliance/kernel/internal/nstest"
)

// testMark is the mark the router's ruleset exempts from conntrack.
const testMark = 0x7e1c

// router is client C, router R (NAT as the appliance does it) and server S:
//
//	C c0 10.0.0.1/24 ── r0 R r1 ── s0 S 10.1.0.100/24
//	     10.0.0.2/24 + VIP 10.0.0.10   10.1.0.2/24 + SNAT 10.1.0.10
type router struct {
	c, r, s *nstest.NS
}

func newRouter(t *testing.T) router {
	t.Helper()
	l := router{c: nstest.New(t, "tklC"), r: nstest.New(t, "tklR"), s: nstest.New(t, "tklS")}
	l.c.MustRun("ip", "link", "add", "c0", "type", "veth", "peer", "name", "r0", "netns", l.r.Name)
	l.s.MustRun("ip", "link", "add", "s0", "type", "veth", "peer", "name", "r1", "netns", l.r.Name)
	for _, a := range []struct {
		ns    *nstest.NS
		dev   string
		addrs []string
	}{
		{l.c, "c0", []string{"10.0.0.1/24"}},
		{l.r, "r0", []string{"10.0.0.2/24", "10.0.0.10/32"}},
		{l.r, "r1", []string{"10.1.0.2/24", "10.1.0.10/32"}},
		{l.s, "s0", []string{"10.1.0.100/24"}},
	} {
		for _, cidr := range a.addrs {
			a.ns.MustRun("ip", "addr", "add", cidr, "dev", a.dev)
		}
		a.ns.MustRun("ip", "link", "set", a.dev, "up")
	}
	l.c.MustRun("ip", "route", "add", "default", "via", "10.0.0.2")
	l.s.MustRun("ip", "route", "add", "default", "via", "10.1.0.2")
	l.r.MustRun("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.netfilter.nf_conntrack_tcp_loose=0")
	rules := fmt.Sprintf(`table ip tickle {
	chain pre { type nat hook prerouting priority dstnat; ip daddr 10.0.0.10 tcp dport 3306 dnat to 10.1.0.100; }
	chain post { type nat hook postrouting priority srcnat; ip daddr 10.1.0.100 tcp dport 3306 snat to 10.1.0.10; }
	chain out { type filter hook output priority raw; meta mark %#x notrack; }
	chain outage { type filter hook forward priority filter; }
}`, testMark)
	f, err := os.CreateTemp(t.TempDir(), "rules")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(rules)
	f.Close()
	l.r.MustRun("nft", "-f", f.Name())
	return l
}

// echoConn is a connection from C to the VIP that sends one byte every 10 ms and reads the
// server's echo of each; it records when the last echo arrived.
type echoConn struct {
	client, server *net.TCPConn
	mu             sync.Mutex
	lastEcho       time.Time
	err            error
	wg             sync.WaitGroup
}

func dialEcho(t *testing.T, l router) *echoConn {
	t.Helper()
	var ln *net.TCPListener
	l.s.MustDo(func() (err error) {
		ln, err = net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(10, 1, 0, 100), Port: 3306})
		return err
	})
	defer ln.Close()
	e := &echoConn{}
	l.c.MustDo(func() error {
		c, err := net.DialTimeout("tcp", "10.0.0.10:3306", 5*time.Second)
		if err != nil {
			return err
		}
		e.client = c.(*net.TCPConn)
		return nil
	})
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	s, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	e.server = s
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		e.client.Close()
		e.server.Close()
		e.wg.Wait()
	})
	e.wg.Go(func() { io.Copy(s, s) })
	e.wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for b := byte(0); ctx.Err() == nil; b++ {
			if _, err := e.client.Write([]byte{b}); err != nil {
				return
			}
			<-tick.C
		}
	})
	e.wg.Go(func() {
		buf := make([]byte, 1)
		for want := byte(0); ; want++ {
			if _, err := io.ReadFull(e.client, buf); err != nil {
				if ctx.Err() == nil {
					e.fail(err)
				}
				return
			}
			if buf[0] != want {
				e.fail(fmt.Errorf("echo %d, want %d", buf[0], want))
				return
			}
			e.mu.Lock()
			e.lastEcho = time.Now()
			e.mu.Unlock()
		}
	})
	return e
}

func (e *echoConn) fail(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.err == nil {
		e.err = err
	}
}

// echoAfter waits until an echo arrives after since and returns when it did.
func (e *echoConn) echoAfter(since time.Time, limit time.Duration) (time.Time, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		e.mu.Lock()
		last, err := e.lastEcho, e.err
		e.mu.Unlock()
		if err != nil {
			return time.Time{}, err
		}
		if last.After(since) {
			return last, nil
		}
		time.Sleep(time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("no echo within %s", limit)
}

func (e *echoConn) conn(t *testing.T) Conn {
	t.Helper()
	return Conn{
		A: Side{Local: addrPort(t, e.client.LocalAddr()), Remote: addrPort(t, e.client.RemoteAddr())},
		B: Side{Local: addrPort(t, e.server.LocalAddr()), Remote: addrPort(t, e.server.RemoteAddr())},
	}
}

func addrPort(t *testing.T, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		t.Fatal(err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// TestTickleResumesStalledConnection cuts a NATed connection for 3.2 s, long enough for the
// client's retransmission timeout to back off to about 3.2 s, and restores the path. Left
// alone the connection resumes at the next retransmission, seconds later; tickled it resumes
// at once.
func TestTickleResumesStalledConnection(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tickle bool
	}{
		{"left alone", false},
		{"tickled", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newRouter(t)
			e := dialEcho(t, l)
			if _, err := e.echoAfter(time.Time{}, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			l.r.MustRun("nft", "add", "rule", "ip", "tickle", "outage", "drop")
			time.Sleep(3200 * time.Millisecond)
			l.r.MustRun("nft", "flush", "chain", "ip", "tickle", "outage")
			restored := time.Now()
			if tc.tickle {
				var st Stats
				l.r.MustDo(func() (err error) {
					st, err = Tickle(context.Background(), []Conn{e.conn(t)}, Options{Mark: testMark})
					return err
				})
				t.Logf("tickle: %+v", st)
				if st.Conns != 1 || st.Answered != 2 || st.Reverts != 16 {
					t.Errorf("tickle stats %+v, want 1 conn, 2 endpoints answered, 16 reverts", st)
				}
			}
			echo, err := e.echoAfter(restored, 8*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			resumed := echo.Sub(restored)
			t.Logf("%s: first echo %s after the path came back", tc.name, resumed.Round(time.Millisecond))
			// The next retransmission left alone is over a second away (the timeout has
			// doubled four times); the bound is generous for a busy machine.
			if tc.tickle && resumed > time.Second {
				t.Errorf("tickled connection resumed %s after the path came back, want at once", resumed)
			}
		})
	}
}

// TestTickleUnanswered: endpoints that never answer are probed once a round, and get no
// ICMP, since nothing says what their peer expects.
func TestTickleUnanswered(t *testing.T) {
	ns := nstest.New(t, "tklU")
	// Nobody on the other end answers ARP for the endpoints.
	ns.MustRun("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ns.MustRun("ip", "addr", "add", "10.9.0.1/24", "dev", "v0")
	ns.MustRun("ip", "link", "set", "v0", "up")
	ns.MustRun("ip", "link", "set", "v1", "up")
	conn := Conn{
		A: Side{netip.MustParseAddrPort("10.9.0.5:40000"), netip.MustParseAddrPort("10.9.0.1:80")},
		B: Side{netip.MustParseAddrPort("10.9.0.6:80"), netip.MustParseAddrPort("10.9.0.1:40000")},
	}
	var st Stats
	ns.MustDo(func() (err error) {
		st, err = Tickle(context.Background(), []Conn{conn}, Options{Rounds: 2, Wait: 20 * time.Millisecond})
		return err
	})
	if want := (Stats{Conns: 1, Probes: 4}); st != want {
		t.Errorf("Tickle = %+v, want %+v", st, want)
	}
}

func TestTickleIgnoresOtherConns(t *testing.T) {
	st, err := Tickle(context.Background(), []Conn{
		{A: Side{netip.MustParseAddrPort("[fd00::1]:1"), netip.MustParseAddrPort("[fd00::10]:2")},
			B: Side{netip.MustParseAddrPort("[fd01::1]:2"), netip.MustParseAddrPort("[fd01::10]:1")}},
		{}, // zero addresses
	}, Options{})
	if err != nil || st != (Stats{}) {
		t.Errorf("Tickle of IPv6 and zero connections = %+v, %v; want nothing done", st, err)
	}
}

func TestPackets(t *testing.T) {
	s := Side{netip.MustParseAddrPort("10.0.0.1:40000"), netip.MustParseAddrPort("10.0.0.10:3306")}
	ack := buildTCPAck(nil, s.Remote, s.Local, 0, 0)
	if len(ack) != packetLen || checksum(ack[:ipLen], 0) != 0 {
		t.Fatalf("probe: %d bytes, IPv4 checksum %#x", len(ack), checksum(ack[:ipLen], 0))
	}
	if c := checksum(ack[ipLen:], pseudoHeader(s.Remote.Addr(), s.Local.Addr(), tcpLen)); c != 0 {
		t.Errorf("probe: TCP checksum does not verify (%#x)", c)
	}
	src, dst, _, ok := parseTCP(ack)
	if !ok || src != s.Remote || dst != s.Local {
		t.Errorf("parseTCP(probe) = %v %v %v, want %v %v", src, dst, ok, s.Remote, s.Local)
	}
	icmp := buildUnreachable(nil, s, 0x01020304)
	if len(icmp) != icmpLen || checksum(icmp[ipLen:], 0) != 0 {
		t.Fatalf("unreachable: %d bytes, ICMP checksum %#x", len(icmp), checksum(icmp[ipLen:], 0))
	}
	quoted := icmp[ipLen+8:]
	if got := netip.AddrFrom4([4]byte(quoted[12:16])); got != s.Local.Addr() {
		t.Errorf("quoted source %v, want %v", got, s.Local.Addr())
	}
	if seq := quoted[ipLen+4 : ipLen+8]; string(seq) != "\x01\x02\x03\x04" {
		t.Errorf("quoted sequence % x", seq)
	}
}

func FuzzParseTCP(f *testing.F) {
	f.Add(buildTCPAck(nil, netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.2:2"), 1, 2))
	f.Add([]byte{0x4f, 0, 0, 0, 0, 0, 0, 0, 0, 6})
	f.Fuzz(func(t *testing.T, p []byte) {
		parseTCP(p)
	})
}
