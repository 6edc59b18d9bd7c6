package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/openappliance/appliance/kernel/nft"
	"github.com/openappliance/appliance/tests/labnet"
	"golang.org/x/sys/unix"
)

// Ports of the two virtual servers both systems carry: the walk-through's TCP virtual and
// a UDP one beside it, both over the four pool members with SNAT.
const (
	TCPPort = labnet.VirtualPort // 3306
	UDPPort = 3307
)

// TupleKey identifies a conntrack entry by its original direction.
type TupleKey struct {
	Proto    uint8
	Src, Dst netip.AddrPort
}

// System is one HA implementation under test, running in a lab of its own. Methods are
// called from one goroutine.
type System interface {
	// Name is "ours" or "theirs".
	Name() string
	Lab() *labnet.Lab
	// Detection describes the current failure-detection setting, such as
	// "nettimeout 3" or "advert_int 1".
	Detection() string
	// SetDetection sets the failure-detection time on both devices (ours:
	// failover.nettimeout; theirs: keepalived's advert_int) and waits for a ready pair.
	SetDetection(ctx context.Context, seconds string) error
	// Pair waits until one device is active and the other a ready standby.
	Pair(ctx context.Context) (active, standby *labnet.Device, err error)
	// Fail takes the device's links down and SIGKILLs its HA daemons.
	Fail(d *labnet.Device) error
	// Restore brings a failed device back (links up, daemons started) and waits until it
	// is the standby of a ready pair.
	Restore(ctx context.Context, d *labnet.Device) error
	// Held returns the entries of the virtual servers that the standby holds ready for a
	// takeover: in its kernel (ours) or in conntrackd's external cache (theirs).
	Held(ctx context.Context, standby *labnet.Device) (map[TupleKey]bool, error)
	// DaemonPIDs are the processes that mirror connections on d (applianced; conntrackd).
	DaemonPIDs(d *labnet.Device) []int
	// RoleChanges counts the role transitions both devices have logged so far (ours:
	// failover state changes; theirs: notify script runs).
	RoleChanges() int
	// Close stops every process and removes the lab.
	Close() error
}

// virtualRuleset is the nftables content both systems run: what applianced programs for
// the lab's configuration (the walk-through's TCP virtual plus the UDP one), built with the
// same kernel/nft package; theirs applies it with kernel/nft directly.
func virtualRuleset() nft.Ruleset {
	var members, udpMembers []netip.AddrPort
	for _, m := range labnet.Members {
		a := netip.MustParseAddr(m)
		members = append(members, netip.AddrPortFrom(a, TCPPort))
		udpMembers = append(udpMembers, netip.AddrPortFrom(a, UDPPort))
	}
	vip := netip.MustParseAddr(labnet.VirtualIP)
	snat := []netip.Addr{netip.MustParseAddr(labnet.SNATAddr)}
	return nft.Ruleset{Virtuals: []nft.Virtual{
		{Name: "/RPC/RPC_VS_GALERA", Proto: unix.IPPROTO_TCP, Dest: netip.AddrPortFrom(vip, TCPPort), Members: members, SNAT: snat},
		{Name: "/RPC/RPC_VS_UDP", Proto: unix.IPPROTO_UDP, Dest: netip.AddrPortFrom(vip, UDPPort), Members: udpMembers, SNAT: snat},
	}}
}

// udpVirtualCommands create ours' UDP virtual, the counterpart of virtualRuleset's second.
func udpVirtualCommands() string {
	var members []string
	for _, m := range labnet.Members {
		members = append(members, m+":"+strconv.Itoa(UDPPort))
	}
	return strings.Join([]string{
		"create ltm pool /RPC/RPC_POOL_UDP members add { " + strings.Join(members, " ") + " }",
		"create ltm virtual /RPC/RPC_VS_UDP destination /RPC/" + labnet.VirtualIP + ":" + strconv.Itoa(UDPPort) +
			" ip-protocol udp mask 255.255.255.255 pool /RPC/RPC_POOL_UDP profiles add { fastL4 } source-address-translation { pool /RPC/RPC_SNATPOOL type snat }",
		"modify ltm virtual /RPC/RPC_VS_UDP mirror enabled",
	}, "; ")
}

// failLinks takes a device's links down in one `ip -batch`, the HA link first: a daemon
// that notices its traffic links going down must not get a last message to the peer
// through the HA link (keepalived sends a priority-0 advert when ext goes down while ha is
// still up, which turns a crash into a graceful hand-over).
func failLinks(d *labnet.Device) error {
	cmd := exec.Command("ip", "-n", d.NS, "-batch", "-")
	cmd.Stdin = strings.NewReader("link set ha down\nlink set ext down\nlink set int down\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("links of %s down: %w: %s", d.Name, err, out)
	}
	return nil
}

// countLines counts the lines of a file that match.
func countLines(path string, match func(string) bool) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if match(line) {
			n++
		}
	}
	return n
}

// floatingAddrs are the addresses that move with the active: the virtual address on ext and
// the SNAT address on int.
var floatingAddrs = [][2]string{{labnet.VirtualIP, "ext"}, {labnet.SNATAddr, "int"}}

// removeFloating takes the floating addresses off a failed device before its links come
// back, as its reboot would (a SIGKILLed keepalived leaves them on the interfaces).
func removeFloating(ctx context.Context, d *labnet.Device) {
	for _, fa := range floatingAddrs {
		run(ctx, 5*time.Second, "ip", "-n", d.NS, "addr", "del", fa[0]+"/32", "dev", fa[1])
	}
}

// hasAddr reports whether the interface in ns holds addr.
func hasAddr(ns, ifname, addr string) (bool, error) {
	found := false
	err := labnet.Do(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		addrs, err := ifi.Addrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().String() == addr {
				found = true
			}
		}
		return nil
	})
	return found, err
}

// Servers are the echo servers on the pool members (TCP on TCPPort, UDP on UDPPort), run
// as a child process in the server namespace: the bench binary itself with the
// EchoCommand argument. A process of their own gives the 10,000-connection test a file
// descriptor limit of their own (the harness may not raise RLIMIT_NOFILE past the hard
// limit without CAP_SYS_RESOURCE) and keeps their CPU apart from the harness's.
type Servers struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// EchoCommand is the argument that makes the bench binary run ServeEcho.
const EchoCommand = "serve-echo"

// StartServers starts `exe serve-echo` in the lab's server namespace and waits until it is
// listening.
func StartServers(l *labnet.Lab, exe string) (*Servers, error) {
	cmd := exec.Command("ip", "netns", "exec", l.Server, exe, EchoCommand)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	logf, err := openLog(filepath.Join(l.Dir, "echo.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("echo servers: %w", err)
	}
	s := &Servers{cmd: cmd, done: make(chan struct{})}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := sc.Scan() && sc.Text() == "ready"
		ready <- ok
		io.Copy(io.Discard, out)
		cmd.Wait()
		logf.Close()
		close(s.done)
	}()
	select {
	case ok := <-ready:
		if ok {
			return s, nil
		}
	case <-time.After(10 * time.Second):
	}
	s.Close()
	return nil, fmt.Errorf("echo servers did not start; see %s", filepath.Join(l.Dir, "echo.log"))
}

// Close stops the servers (bounded).
func (s *Servers) Close() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

// ServeEcho runs the echo servers in the current namespace, prints "ready" once they
// listen, and serves until ctx ends. It is the body of `bench serve-echo`.
func ServeEcho(ctx context.Context) error {
	var wg sync.WaitGroup
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
		wg.Wait()
	}()
	for _, m := range labnet.Members {
		ln, err := net.Listen("tcp", net.JoinHostPort(m, strconv.Itoa(TCPPort)))
		if err != nil {
			return err
		}
		closers = append(closers, ln)
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveTCPEcho(ctx, ln)
		}()
	}
	for _, m := range labnet.Members {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(m), Port: UDPPort})
		if err != nil {
			return err
		}
		c.SetReadBuffer(8 << 20)
		closers = append(closers, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				c.WriteToUDPAddrPort(buf[:n], from)
			}
		}()
	}
	fmt.Println("ready")
	<-ctx.Done()
	return nil
}

// serveTCPEcho echoes every connection of ln with a plain read/write loop: io.Copy between
// two TCP sockets would splice through a pipe held per connection (two more descriptors
// each), which caps a 20,000-descriptor process at about 6,600 connections. An accept error
// (such as EMFILE) is waited out, not fatal.
func serveTCPEcho(ctx context.Context, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 2048)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// prepareClient widens the client's ephemeral port range, so that tens of thousands of
// connections (and short ones in quick succession) find ports.
func prepareClient(l *labnet.Lab) error {
	return setSysctl(l.Client, "net.ipv4.ip_local_port_range", "1024 65000")
}

// startLogged starts a command with its output appended to logPath and returns a channel
// closed when it exits.
func startLogged(cmd *exec.Cmd, logPath string) (<-chan struct{}, error) {
	logf, err := openLog(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	return done, nil
}
