package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openappliance/appliance/tests/labnet"
)

// udpPort is the UDP virtual's port, on the VIP and on every member.
const udpPort = 5353

// udpStreamTimeout shortens nf_conntrack_udp_timeout_stream in the devices' namespaces, so
// that a UDP entry that is not refreshed expires within the test.
const udpStreamTimeout = 4 * time.Second

// startUDPEcho answers every datagram on each member address with that member's address, so
// that the client sees which member its flow is bound to.
func (l *lab) startUDPEcho() {
	l.t.Helper()
	var conns []*net.UDPConn
	err := labnet.Do(l.Server, func() error {
		for _, m := range labnet.Members {
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(m), udpPort)))
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	for _, c := range conns {
		l.t.Cleanup(func() { c.Close() })
	}
	if err != nil {
		l.t.Fatal(err)
	}
	for i, c := range conns {
		member := []byte(labnet.Members[i])
		go func() {
			buf := make([]byte, 64)
			for {
				_, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				c.WriteToUDPAddrPort(member, from)
			}
		}()
	}
}

// udpFlow sends a datagram through the UDP virtual every interval from one socket and records
// which member answered.
type udpFlow struct {
	mu      sync.Mutex
	members map[string]int
	last    time.Time
	cancel  context.CancelFunc
	done    sync.WaitGroup
}

func (l *lab) openUDPFlow(interval time.Duration) *udpFlow {
	l.t.Helper()
	var c *net.UDPConn
	err := labnet.Do(l.Client, func() (err error) {
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(labnet.VirtualIP), udpPort)))
		return err
	})
	if err != nil {
		l.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &udpFlow{members: map[string]int{}, cancel: cancel}
	f.done.Go(func() {
		buf := make([]byte, 64)
		for {
			if err := c.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
				return
			}
			n, err := c.Read(buf)
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				f.mu.Lock()
				f.members[string(buf[:n])]++
				f.last = time.Now()
				f.mu.Unlock()
			}
		}
	})
	f.done.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			c.Write([]byte("ping"))
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	l.t.Cleanup(func() {
		cancel()
		c.Close()
		f.done.Wait()
	})
	return f
}

// answers returns the members that answered, and when the last answer came.
func (f *udpFlow) answers() (map[string]int, time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[string]int, len(f.members))
	for k, v := range f.members {
		m[k] = v
	}
	return m, f.last
}

var udpEntryRE = regexp.MustCompile(`(?m)^udp\s+17\s+(\d+)\s.*dport=5353 .*src=(10\.1\.0\.\d+) `)

// udpEntry returns the member that d's kernel binds the UDP flow to, and its seconds left.
func (l *lab) udpEntry(d *labnet.Device) (member string, left string) {
	out, err := exec.Command("ip", "netns", "exec", d.NS, "conntrack", "-L", "-p", "udp").CombinedOutput()
	if err != nil {
		l.t.Fatalf("conntrack -L on %s: %v: %s", d.Name, err, out)
	}
	if m := udpEntryRE.FindStringSubmatch(string(out)); m != nil {
		return m[2], m[1]
	}
	return "", ""
}

// TestFailoverKeepsLongLivedUDP: a UDP flow lives on the active for many times the kernel's
// UDP timeout, refreshed by its packets alone (which send no conntrack events). The standby
// keeps its mirrored entry alive all the while (the kernel check rewrites entries whose timer
// runs low), so after a failover the flow stays bound to the same pool member.
func TestFailoverKeepsLongLivedUDP(t *testing.T) {
	l := newLab(t)
	for _, d := range l.Devices {
		d.Args = []string{"--digest-interval", "500ms"}
	}
	l.setup()
	for _, d := range l.Devices {
		if out, err := exec.Command("ip", "netns", "exec", d.NS, "sysctl", "-w",
			fmt.Sprintf("net.netfilter.nf_conntrack_udp_timeout_stream=%d", int(udpStreamTimeout.Seconds()))).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", d.Name, err, out)
		}
	}
	active, standby := l.roles()
	l.tmsh(active, "create ltm pool /RPC/RPC_POOL_UDP members add { "+strings.Join(udpMembers(), " ")+" }; "+
		"create ltm virtual /RPC/RPC_VS_UDP destination /RPC/"+labnet.VirtualIP+fmt.Sprintf(":%d", udpPort)+
		" ip-protocol udp mask 255.255.255.255 pool /RPC/RPC_POOL_UDP source-address-translation { pool /RPC/RPC_SNATPOOL type snat } mirror enabled; "+
		"save sys config; run cm config-sync to-group dg1")
	l.startUDPEcho()
	flow := l.openUDPFlow(300 * time.Millisecond)

	var member string
	l.waitFor(10*time.Second, "the UDP flow mirrored to "+standby.Name, func() (bool, string) {
		a, _ := l.udpEntry(active)
		s, _ := l.udpEntry(standby)
		member = a
		return a != "" && a == s, fmt.Sprintf("%s binds it to %q, %s to %q", active.Name, a, standby.Name, s)
	})
	// Three times the UDP timeout: without a refresh the standby's entry would be long gone.
	deadline := time.Now().Add(3 * udpStreamTimeout)
	for time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		if s, left := l.udpEntry(standby); s != member {
			t.Fatalf("%s lost the mirrored UDP entry (bound to %q, %s s left) while it lives on %s", standby.Name, s, left, active.Name)
		}
	}

	if err := l.SetLinks(active, false); err != nil {
		t.Fatal(err)
	}
	active.Kill()
	l.waitState(standby, "ACTIVE", 15*time.Second)
	failedAt := time.Now()
	l.waitFor(10*time.Second, "the UDP flow answered through "+standby.Name, func() (bool, string) {
		_, last := flow.answers()
		return last.After(failedAt), "no answer since the failover"
	})
	answers, _ := flow.answers()
	if len(answers) != 1 {
		t.Errorf("the UDP flow was answered by %v, want %s alone: the failover re-balanced it", answers, member)
	}
	t.Logf("UDP flow kept on member %s for %v (UDP timeout %v) and through the failover: answers %v",
		member, 3*udpStreamTimeout, udpStreamTimeout, answers)
}

func udpMembers() []string {
	var out []string
	for _, m := range labnet.Members {
		out = append(out, fmt.Sprintf("%s:%d", m, udpPort))
	}
	return out
}
