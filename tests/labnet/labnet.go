// Package labnet builds the two-appliance lab in network namespaces (DESIGN fact 4): a
// switch namespace holding an external and an internal bridge, a client on the external
// one, a server with one address per pool member on the internal one, and two appliances
// with a leg on each bridge (ext, int) and a direct link between them for HA traffic (ha).
// Both the end-to-end tests and `make lab` use it.
package labnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// Addresses of the lab.
const (
	ClientAddr  = "10.0.0.1"
	VirtualIP   = "10.0.0.10"
	SNATAddr    = "10.1.0.10"
	VirtualPort = 3306
)

// Members are the pool members' addresses, all on the server namespace.
var Members = []string{"10.1.0.100", "10.1.0.101", "10.1.0.102", "10.1.0.103"}

// Device is one appliance of the lab.
type Device struct {
	Name    string // lb1, lb2
	NS      string // its namespace
	HA      string // its address on the HA link
	ExtSelf string
	IntSelf string
	Config  string   // config file
	Socket  string   // control socket
	Log     string   // daemon log file
	Args    []string // extra applianced arguments
	cmd     *exec.Cmd
	done    chan struct{}
}

// Lab is a running lab. Close removes everything it made.
type Lab struct {
	Prefix  string
	Dir     string // folder for configs, sockets and logs
	Bin     string // folder holding applianced and tmsh
	Switch  string // namespace names
	Client  string
	Server  string
	Devices []*Device
}

// New builds the topology. prefix keeps the namespaces of concurrent labs apart; dir holds
// the daemons' files; bin holds applianced and tmsh.
func New(prefix, dir, bin string) (*Lab, error) {
	l := Attach(prefix, dir, bin)
	if err := l.build(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Attach describes a lab that New built earlier (perhaps in another process), without
// building anything.
func Attach(prefix, dir, bin string) *Lab {
	l := &Lab{
		Prefix: prefix, Dir: dir, Bin: bin,
		Switch: prefix + "-sw", Client: prefix + "-cl", Server: prefix + "-srv",
	}
	for i, name := range []string{"lb1", "lb2"} {
		l.Devices = append(l.Devices, &Device{
			Name:    name,
			NS:      prefix + "-" + name,
			HA:      fmt.Sprintf("192.168.77.%d", i+2),
			ExtSelf: fmt.Sprintf("10.0.0.%d", i+2),
			IntSelf: fmt.Sprintf("10.1.0.%d", i+2),
			Config:  filepath.Join(dir, name+".toml"),
			Socket:  filepath.Join(dir, name+".sock"),
			Log:     filepath.Join(dir, name+".log"),
		})
	}
	return l
}

// Namespaces lists every namespace of the lab.
func (l *Lab) Namespaces() []string {
	out := []string{l.Switch, l.Client, l.Server}
	for _, d := range l.Devices {
		out = append(out, d.NS)
	}
	return out
}

// Device returns the appliance called name.
func (l *Lab) Device(name string) *Device {
	for _, d := range l.Devices {
		if d.Name == name {
			return d
		}
	}
	return nil
}

func (l *Lab) build() error {
	var script []string
	add := func(format string, args ...any) { script = append(script, fmt.Sprintf(format, args...)) }
	for _, ns := range l.Namespaces() {
		add("netns add %s", ns)
		add("-n %s link set lo up", ns)
	}
	sw := l.Switch
	for _, br := range []string{"br-ext", "br-int"} {
		add("-n %s link add %s type bridge", sw, br)
		add("-n %s link set %s up", sw, br)
	}
	// A veth with one end in ns (named ifname) and the other on a bridge of the switch.
	port := func(ns, ifname, swPort, bridge string) {
		add("link add %s netns %s type veth peer name %s netns %s", ifname, ns, swPort, sw)
		add("-n %s link set %s master %s", sw, swPort, bridge)
		add("-n %s link set %s up", sw, swPort)
		add("-n %s link set %s up", ns, ifname)
	}
	port(l.Client, "eth0", "cl", "br-ext")
	add("-n %s addr add %s/24 dev eth0", l.Client, ClientAddr)
	port(l.Server, "eth0", "srv", "br-int")
	for _, m := range Members {
		add("-n %s addr add %s/24 dev eth0", l.Server, m)
	}
	for _, d := range l.Devices {
		port(d.NS, "ext", d.Name+"-ext", "br-ext")
		port(d.NS, "int", d.Name+"-int", "br-int")
	}
	lb1, lb2 := l.Devices[0], l.Devices[1]
	add("link add ha netns %s type veth peer name ha netns %s", lb1.NS, lb2.NS)
	for _, d := range l.Devices {
		add("-n %s link set ha up", d.NS)
		// The HA address belongs to the host's own network configuration, as on a real
		// appliance's management of its HA VLAN; the daemon adopts it as a self IP.
		add("-n %s addr add %s/24 dev ha", d.NS, d.HA)
	}
	for _, line := range script {
		if out, err := exec.Command("ip", strings.Fields(line)...).CombinedOutput(); err != nil {
			return fmt.Errorf("build lab: ip %s: %w: %s", line, err, out)
		}
	}
	return nil
}

// Close stops the daemons and removes the namespaces. It is safe to call more than once.
func (l *Lab) Close() error {
	var errs []error
	for _, d := range l.Devices {
		d.Kill()
	}
	for _, ns := range l.Namespaces() {
		if _, err := os.Stat("/run/netns/" + ns); err != nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("delete netns %s: %w: %s", ns, err, out))
		}
	}
	return errors.Join(errs...)
}

// Start runs the device's daemon in its namespace, logging to d.Log.
func (l *Lab) Start(d *Device) error {
	if d.cmd != nil {
		return fmt.Errorf("%s is already running", d.Name)
	}
	logf, err := os.OpenFile(d.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := l.daemonCommand(d)
	cmd.Stdout, cmd.Stderr = logf, logf
	// ip netns exec execs the daemon, so the pid is the daemon's and SIGKILL reaches it.
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", d.Name, err)
	}
	d.cmd, d.done = cmd, make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	return l.waitSocket(d, 10*time.Second)
}

func (l *Lab) waitSocket(d *Device, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := l.Tmsh(d, "show sys failover"); err == nil {
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("%s exited at start; see %s", d.Name, d.Log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: control socket not ready after %v", d.Name, timeout)
}

func (l *Lab) daemonCommand(d *Device) *exec.Cmd {
	args := []string{"netns", "exec", d.NS, filepath.Join(l.Bin, "applianced"),
		"--name", d.Name, "--config", d.Config, "--socket", d.Socket}
	return exec.Command("ip", append(args, d.Args...)...)
}

// StartDetached runs the device's daemon in its own session, outliving this process (for
// make lab), and returns its pid.
func (l *Lab) StartDetached(d *Device) (int, error) {
	logf, err := os.OpenFile(d.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := l.daemonCommand(d)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", d.Name, err)
	}
	pid := cmd.Process.Pid
	cmd.Process.Release()
	d.done = make(chan struct{}) // never closed: the process is not ours to wait for
	return pid, l.waitSocket(d, 10*time.Second)
}

// Kill sends SIGKILL to the device's daemon and waits for it to die.
func (d *Device) Kill() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
	d.cmd = nil
}

// Signal sends sig to the device's daemon, if it runs.
func (d *Device) Signal(sig os.Signal) error {
	if d.cmd == nil {
		return fmt.Errorf("%s: no daemon running", d.Name)
	}
	return d.cmd.Process.Signal(sig)
}

// Running reports whether the daemon process is alive.
func (d *Device) Running() bool {
	if d.cmd == nil {
		return false
	}
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// SetLinks brings the device's ext, int and ha links up or down.
func (l *Lab) SetLinks(d *Device, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	for _, ifname := range []string{"ext", "int", "ha"} {
		if out, err := exec.Command("ip", "-n", d.NS, "link", "set", ifname, state).CombinedOutput(); err != nil {
			return fmt.Errorf("set %s %s %s: %w: %s", d.Name, ifname, state, err, out)
		}
	}
	return nil
}

// Tmsh runs tmsh -c on the device and returns its output; a failing command is an error
// carrying what tmsh printed.
func (l *Lab) Tmsh(d *Device, commands string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(l.Bin, "tmsh"), "--socket", d.Socket, "-c", commands)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("tmsh on %s %q: %w: %s", d.Name, commands, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// DeviceCommands are the device-local commands of the walk-through for d.
func (l *Lab) DeviceCommands(d *Device) string {
	peer := l.Devices[0]
	if peer == d {
		peer = l.Devices[1]
	}
	return strings.Join([]string{
		fmt.Sprintf("modify cm device %s unicast-address { %s } mirror-ip %s configsync-ip %s", d.Name, d.HA, d.HA, d.HA),
		fmt.Sprintf("create cm device %s unicast-address { %s } mirror-ip %s configsync-ip %s", peer.Name, peer.HA, peer.HA, peer.HA),
		"create cm device-group dg1 type sync-failover devices add { lb1 lb2 } network-failover enabled",
		"create net vlan external interfaces add { ext }",
		"create net vlan internal interfaces add { int }",
		"create net vlan ha interfaces add { ha }",
		fmt.Sprintf("create net self self_ext address %s/24 vlan external", d.ExtSelf),
		fmt.Sprintf("create net self self_int address %s/24 vlan internal", d.IntSelf),
		fmt.Sprintf("create net self self_ha address %s/24 vlan ha", d.HA),
	}, "; ")
}

// TrafficCommands create the Galera front end of the walk-through.
func TrafficCommands() string {
	return strings.Join([]string{
		"create auth partition RPC",
		"create ltm pool /RPC/RPC_POOL_GALERA members add { 10.1.0.100:3306 10.1.0.101:3306 10.1.0.102:3306 10.1.0.103:3306 }",
		"create ltm snatpool /RPC/RPC_SNATPOOL members add { 10.1.0.10 }",
		"create ltm virtual /RPC/RPC_VS_GALERA destination /RPC/10.0.0.10:3306 ip-protocol tcp mask 255.255.255.255 pool /RPC/RPC_POOL_GALERA profiles add { fastL4 } source-address-translation { pool /RPC/RPC_SNATPOOL type snat }",
		"modify ltm virtual /RPC/RPC_VS_GALERA mirror enabled",
		"modify ltm pool /RPC/RPC_POOL_GALERA service-down-action reselect",
		"modify ltm pool /RPC/RPC_POOL_GALERA slow-ramp-time 0",
	}, "; ")
}

// Do runs fn on an OS thread inside namespace ns and puts the thread back afterwards.
// Sockets created in fn stay in ns.
func Do(ns string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		panic(fmt.Sprintf("restore netns: %v", err)) // never hand a thread in the wrong namespace back
	}
	return fnErr
}
