package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/openappliance/appliance/kernel/nft"
	"github.com/openappliance/appliance/tests/labnet"
)

// Theirs is the standard Linux pair: conntrackd in FTFW mode over the HA link and
// keepalived (VRRPv3 on the HA link) moving the floating addresses and running conntrackd's
// primary-backup.sh from its notify hooks, over the same nftables NAT rules as ours.
type Theirs struct {
	lab         *labnet.Lab
	advert      string
	dropInvalid bool
	log         io.Writer
	procs       map[string]map[string]*proc // device → "conntrackd"/"keepalived" → process
}

type proc struct {
	cmd  *exec.Cmd
	done <-chan struct{}
}

// NewTheirs builds the lab, configures both devices as the standard pair and waits for a
// ready pair. advert is keepalived's advert_int in seconds. dropInvalid adds a filter
// table dropping packets in conntrack state INVALID on input (a stateful firewall's usual
// rule, which the NAT rules of ours do not have): a variant, not the like-for-like setup.
func NewTheirs(ctx context.Context, prefix, dir, bin, advert string, dropInvalid bool, log io.Writer) (*Theirs, error) {
	l, err := labnet.New(prefix, dir, bin)
	if err != nil {
		return nil, err
	}
	t := &Theirs{lab: l, advert: advert, dropInvalid: dropInvalid, log: log, procs: map[string]map[string]*proc{}}
	if err := t.setup(ctx); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

func (t *Theirs) file(d *labnet.Device, suffix string) string {
	return filepath.Join(t.lab.Dir, d.Name+"-"+suffix)
}

func (t *Theirs) setup(ctx context.Context) error {
	l := t.lab
	if err := prepareClient(l); err != nil {
		return err
	}
	for _, d := range l.Devices {
		t.procs[d.Name] = map[string]*proc{}
		for _, a := range [][2]string{{d.ExtSelf, "ext"}, {d.IntSelf, "int"}} {
			if _, err := run(ctx, 5*time.Second, "ip", "-n", d.NS, "addr", "add", a[0]+"/24", "dev", a[1]); err != nil {
				return err
			}
		}
		// The sysctls applianced sets, so that both kernels judge packets alike.
		for _, s := range [][2]string{
			{"net.ipv4.ip_forward", "1"},
			{"net.ipv6.conf.all.forwarding", "1"},
			{"net.netfilter.nf_conntrack_tcp_loose", "0"},
		} {
			if err := setSysctl(d.NS, s[0], s[1]); err != nil {
				return err
			}
		}
		err := labnet.Do(d.NS, func() error {
			tbl, err := nft.New("appliance")
			if err != nil {
				return err
			}
			defer tbl.Close()
			return tbl.Apply(virtualRuleset())
		})
		if err != nil {
			return fmt.Errorf("theirs: nftables on %s: %w", d.Name, err)
		}
		if t.dropInvalid {
			rules := "table inet bench_invalid {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tct state invalid drop\n\t}\n}\n"
			path := t.file(d, "drop-invalid.nft")
			if err := os.WriteFile(path, []byte(rules), 0o644); err != nil {
				return err
			}
			if _, err := inNS(ctx, 10*time.Second, d.NS, "nft", "-f", path); err != nil {
				return err
			}
		}
		if err := t.writeConfigs(d); err != nil {
			return err
		}
		if err := t.startConntrackd(ctx, d); err != nil {
			return err
		}
	}
	for _, d := range l.Devices {
		if err := t.startKeepalived(d); err != nil {
			return err
		}
	}
	_, _, err := t.Pair(ctx)
	return err
}

func (t *Theirs) peer(d *labnet.Device) *labnet.Device {
	if t.lab.Devices[0] == d {
		return t.lab.Devices[1]
	}
	return t.lab.Devices[0]
}

// conntrackdConf is conntrackd's FTFW example configuration adapted to the lab: unicast UDP
// over the HA link, this instance's own lock, socket and log, caches large enough for a
// million entries, the event socket allowed to grow to 32 MiB like applianced's, and the
// devices' own addresses ignored (never the virtual or SNAT address: those are the
// traffic). No state filter, so every TCP state is synchronised, as ours mirrors them all.
func (t *Theirs) conntrackdConf(d *labnet.Device) string {
	p := t.peer(d)
	return fmt.Sprintf(`Sync {
	Mode FTFW {
		StartupResync on
	}
	UDP {
		IPv4_address %s
		IPv4_Destination_Address %s
		Port 3780
		Interface ha
		SndSocketBuffer 24985600
		RcvSocketBuffer 24985600
		Checksum on
	}
}
General {
	HashSize 262144
	HashLimit 4194304
	LogFile %s
	Syslog off
	LockFile %s
	UNIX {
		Path %s
	}
	NetlinkBufferSize 2097152
	NetlinkBufferSizeMaxGrowth 33554432
	NetlinkOverrunResync on
	Filter From Userspace {
		Protocol Accept {
			TCP
			UDP
		}
		Address Ignore {
			IPv4_address 127.0.0.1
			IPv4_address %s
			IPv4_address %s
			IPv4_address %s
			IPv4_address %s
			IPv4_address %s
			IPv4_address %s
		}
	}
}
`, d.HA, p.HA, t.file(d, "conntrackd.log"), t.file(d, "conntrackd.lock"), t.file(d, "conntrackd.ctl"),
		d.HA, p.HA, d.ExtSelf, p.ExtSelf, d.IntSelf, p.IntSelf)
}

// keepalivedConf: one VRRPv3 instance on the HA link (where ours sends its heartbeats)
// holding both floating addresses, both devices BACKUP with nopreempt (no fail-back, as
// ours), and conntrackd's primary-backup.sh as notify hooks. VRRPv3 allows sub-second
// advert_int (centiseconds). dont_track_primary: the lab's HA link is a direct veth pair, so
// the survivor loses carrier when the failed device's end goes down, and keepalived would
// otherwise enter FAULT and never take over (ours ignores carrier, and so must theirs).
func (t *Theirs) keepalivedConf(d *labnet.Device) string {
	prio := 150
	if d != t.lab.Devices[0] {
		prio = 100
	}
	script := t.file(d, "primary-backup.sh")
	return fmt.Sprintf(`global_defs {
	router_id %s
	vrrp_version 3
	script_user root
	enable_script_security
}
vrrp_instance VI_1 {
	state BACKUP
	nopreempt
	interface ha
	dont_track_primary
	virtual_router_id 51
	priority %d
	advert_int %s
	virtual_ipaddress {
		%s/32 dev ext
		%s/32 dev int
	}
	notify_master "%s primary"
	notify_backup "%s backup"
	notify_fault "%s fault"
}
`, d.Name, prio, t.advert, labnet.VirtualIP, labnet.SNATAddr, script, script, script)
}

// notifyScript is conntrackd's examples/sync/primary-backup.sh for this instance (its
// config and lock file), with each step's time logged and the role written to a state file
// once the script is done, so the bench knows when a transition has finished.
func (t *Theirs) notifyScript(d *labnet.Device) string {
	return fmt.Sprintf(`#!/bin/sh
# conntrackd's examples/sync/primary-backup.sh, for one lab instance.
CONNTRACKD_BIN=/usr/sbin/conntrackd
CONNTRACKD_LOCK=%s
CONNTRACKD_CONFIG=%s
STATE=%s
LOG=%s
log() { echo "$(date +%%s.%%N) $*" >> $LOG; }
case "$1" in
  primary)
    log "primary: commit"
    $CONNTRACKD_BIN -C $CONNTRACKD_CONFIG -c || log "ERROR: conntrackd -c"
    log "primary: commit done"
    $CONNTRACKD_BIN -C $CONNTRACKD_CONFIG -f || log "ERROR: conntrackd -f"
    $CONNTRACKD_BIN -C $CONNTRACKD_CONFIG -R || log "ERROR: conntrackd -R"
    $CONNTRACKD_BIN -C $CONNTRACKD_CONFIG -B || log "ERROR: conntrackd -B"
    echo primary > $STATE
    log "primary: done"
    ;;
  backup)
    log "backup"
    $CONNTRACKD_BIN -C $CONNTRACKD_CONFIG -s > /dev/null
    if [ $? -eq 1 ]; then
        rm -f $CONNTRACKD_LOCK
        $CONNTRACKD_BIN -C $CONNTRACKD_CONFIG -d || { log "ERROR: cannot launch conntrackd"; exit 1; }
    fi
    $CONNTRACKD_BIN -C $CONNTRACKD_CONFIG -t || log "ERROR: conntrackd -t"
    $CONNTRACKD_BIN -C $CONNTRACKD_CONFIG -n || log "ERROR: conntrackd -n"
    echo backup > $STATE
    log "backup: done"
    ;;
  fault)
    log "fault"
    $CONNTRACKD_BIN -C $CONNTRACKD_CONFIG -t
    echo fault > $STATE
    ;;
esac
exit 0
`, t.file(d, "conntrackd.lock"), t.file(d, "conntrackd.conf"), t.file(d, "state"), t.file(d, "notify.log"))
}

func (t *Theirs) writeConfigs(d *labnet.Device) error {
	for _, f := range []struct {
		name, text string
		mode       os.FileMode
	}{
		{"conntrackd.conf", t.conntrackdConf(d), 0o644},
		{"keepalived.conf", t.keepalivedConf(d), 0o644},
		{"primary-backup.sh", t.notifyScript(d), 0o755},
	} {
		if err := os.WriteFile(t.file(d, f.name), []byte(f.text), f.mode); err != nil {
			return err
		}
	}
	return nil
}

// ctd runs `conntrackd -C CONF args` against d's instance (its UNIX socket is a path, so
// this works from any namespace).
func (t *Theirs) ctd(ctx context.Context, timeout time.Duration, d *labnet.Device, args ...string) (string, error) {
	return run(ctx, timeout, "conntrackd", append([]string{"-C", t.file(d, "conntrackd.conf")}, args...)...)
}

// Stats returns `conntrackd -s` of d's instance.
func (t *Theirs) Stats(ctx context.Context, d *labnet.Device) (ConntrackdStats, error) {
	out, err := t.ctd(ctx, 10*time.Second, d, "-s")
	if err != nil {
		return ConntrackdStats{}, err
	}
	return ParseConntrackdStats(out)
}

// conntrackdStatsRequest is conntrackd's STATS request on its UNIX socket
// (conntrack-tools include/conntrackd.h: #define STATS 21), what `conntrackd -s` sends.
const conntrackdStatsRequest = 21

// QuickStats asks d's conntrackd for its statistics over its UNIX socket directly, as
// `conntrackd -s` does, without starting a process: cheap enough to poll every few
// milliseconds.
func (t *Theirs) QuickStats(d *labnet.Device) (ConntrackdStats, error) {
	c, err := net.DialTimeout("unix", t.file(d, "conntrackd.ctl"), 5*time.Second)
	if err != nil {
		return ConntrackdStats{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var req [4]byte
	binary.NativeEndian.PutUint32(req[:], conntrackdStatsRequest)
	if _, err := c.Write(req[:]); err != nil {
		return ConntrackdStats{}, err
	}
	out, err := io.ReadAll(c)
	if err != nil {
		return ConntrackdStats{}, err
	}
	return ParseConntrackdStats(string(out))
}

// startConntrackd runs conntrackd in the foreground in d's namespace and waits until it
// answers on its socket.
func (t *Theirs) startConntrackd(ctx context.Context, d *labnet.Device) error {
	os.Remove(t.file(d, "conntrackd.lock"))
	os.Remove(t.file(d, "conntrackd.ctl"))
	cmd := exec.Command("ip", "netns", "exec", d.NS, "conntrackd", "-C", t.file(d, "conntrackd.conf"))
	done, err := startLogged(cmd, t.file(d, "conntrackd.out"))
	if err != nil {
		return fmt.Errorf("start conntrackd on %s: %w", d.Name, err)
	}
	t.procs[d.Name]["conntrackd"] = &proc{cmd, done}
	return poll(ctx, 10*time.Second, 20*time.Millisecond, "conntrackd on "+d.Name, func() (bool, error) {
		select {
		case <-done:
			return false, fmt.Errorf("conntrackd on %s exited; see %s", d.Name, t.file(d, "conntrackd.log"))
		default:
		}
		_, err := t.Stats(ctx, d)
		return err == nil, err
	})
}

func (t *Theirs) startKeepalived(d *labnet.Device) error {
	// A SIGKILLed keepalived leaves its pid files, and a recycled pid in them makes the
	// next one refuse to start ("daemon is already running").
	for _, f := range []string{"state", "keepalived.pid", "keepalived-vrrp.pid"} {
		os.Remove(t.file(d, f))
	}
	cmd := exec.Command("ip", "netns", "exec", d.NS, "keepalived", "--dont-fork", "--vrrp", "--log-console", "--log-detail",
		"--no-syslog", "-f", t.file(d, "keepalived.conf"), "-p", t.file(d, "keepalived.pid"), "-r", t.file(d, "keepalived-vrrp.pid"))
	done, err := startLogged(cmd, t.file(d, "keepalived.log"))
	if err != nil {
		return fmt.Errorf("start keepalived on %s: %w", d.Name, err)
	}
	t.procs[d.Name]["keepalived"] = &proc{cmd, done}
	return nil
}

// stopKeepalived stops keepalived gracefully (SIGTERM: it releases the floating addresses),
// bounded; then SIGKILLs whatever keepalived is left in the namespace.
func (t *Theirs) stopKeepalived(d *labnet.Device) {
	p := t.procs[d.Name]["keepalived"]
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	if pids, err := nsPIDs(d.NS, "keepalived"); err == nil {
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	delete(t.procs[d.Name], "keepalived")
}

// Name is "theirs".
func (t *Theirs) Name() string { return "theirs" }

// Lab is the system's lab.
func (t *Theirs) Lab() *labnet.Lab { return t.lab }

// Detection is "advert_int N".
func (t *Theirs) Detection() string { return "advert_int " + t.advert }

// SetDetection rewrites keepalived's advert_int on both devices and restarts keepalived.
func (t *Theirs) SetDetection(ctx context.Context, seconds string) error {
	t.advert = seconds
	active, standby, _ := t.Pair(ctx)
	order := t.lab.Devices
	if active != nil {
		order = []*labnet.Device{standby, active} // the standby first: no needless election
	}
	for _, d := range order {
		t.stopKeepalived(d)
	}
	for _, d := range order {
		if err := t.writeConfigs(d); err != nil {
			return err
		}
	}
	for i := len(order) - 1; i >= 0; i-- {
		if err := t.startKeepalived(order[i]); err != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, _, err := t.Pair(ctx)
	return err
}

func (t *Theirs) role(d *labnet.Device) string {
	data, err := os.ReadFile(t.file(d, "state"))
	if err != nil {
		return "none"
	}
	return strings.TrimSpace(string(data))
}

// Pair waits (up to a minute) until one device has run the primary script and holds the
// floating addresses and the other has run the backup script, both conntrackds answering.
func (t *Theirs) Pair(ctx context.Context) (active, standby *labnet.Device, err error) {
	err = poll(ctx, time.Minute, 50*time.Millisecond, "theirs: a primary/backup pair", func() (bool, error) {
		a, b := t.lab.Devices[0], t.lab.Devices[1]
		ra, rb := t.role(a), t.role(b)
		switch {
		case ra == "primary" && rb == "backup":
			active, standby = a, b
		case rb == "primary" && ra == "backup":
			active, standby = b, a
		default:
			return false, fmt.Errorf("%s=%s %s=%s", a.Name, ra, b.Name, rb)
		}
		for _, fa := range floatingAddrs {
			if ok, err := hasAddr(active.NS, fa[1], fa[0]); !ok || err != nil {
				return false, fmt.Errorf("%s on %s of %s: %v %v", fa[0], fa[1], active.Name, ok, err)
			}
			if ok, _ := hasAddr(standby.NS, fa[1], fa[0]); ok {
				return false, fmt.Errorf("%s also on %s", fa[0], standby.Name)
			}
		}
		for _, d := range t.lab.Devices {
			if _, err := t.Stats(ctx, d); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	return active, standby, err
}

// Fail takes d's links down (the HA link first) and SIGKILLs keepalived and conntrackd
// (everything in d's namespace).
func (t *Theirs) Fail(d *labnet.Device) error {
	err := failLinks(d)
	if kerr := killNS(d.NS, 10*time.Second); kerr != nil && err == nil {
		err = kerr
	}
	for _, p := range t.procs[d.Name] {
		<-p.done
	}
	t.procs[d.Name] = map[string]*proc{}
	return err
}

// Restore brings d back: floating addresses removed (as a reboot would), links up,
// conntrackd then keepalived started, and waits until d is the backup.
func (t *Theirs) Restore(ctx context.Context, d *labnet.Device) error {
	removeFloating(ctx, d)
	if err := t.lab.SetLinks(d, true); err != nil {
		return err
	}
	if t.procs[d.Name]["conntrackd"] == nil {
		if err := t.startConntrackd(ctx, d); err != nil {
			return err
		}
	}
	if t.procs[d.Name]["keepalived"] == nil {
		if err := t.startKeepalived(d); err != nil {
			return err
		}
	}
	_, standby, err := t.Pair(ctx)
	if err == nil && standby != d {
		err = fmt.Errorf("theirs: %s came back primary, want backup", d.Name)
	}
	return err
}

// RoleChanges counts the notify script runs (primary, backup, fault) on both devices.
func (t *Theirs) RoleChanges() int {
	n := 0
	for _, d := range t.lab.Devices {
		n += countLines(t.file(d, "notify.log"), func(l string) bool {
			return strings.HasSuffix(l, " backup") || strings.HasSuffix(l, " primary: commit") || strings.HasSuffix(l, " fault")
		})
	}
	return n
}

// StopConntrackd SIGKILLs d's conntrackd, leaving keepalived and the links up.
func (t *Theirs) StopConntrackd(d *labnet.Device) {
	if p := t.procs[d.Name]["conntrackd"]; p != nil {
		p.cmd.Process.Kill()
		<-p.done
		delete(t.procs[d.Name], "conntrackd")
	}
	if pids, err := nsPIDs(d.NS, "conntrackd"); err == nil {
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// StartConntrackd starts d's conntrackd (which asks the peer for a resync at startup).
func (t *Theirs) StartConntrackd(ctx context.Context, d *labnet.Device) error {
	return t.startConntrackd(ctx, d)
}

// Commit runs `conntrackd -c` on d: the external cache into the kernel.
func (t *Theirs) Commit(ctx context.Context, d *labnet.Device, timeout time.Duration) error {
	_, err := t.ctd(ctx, timeout, d, "-c")
	return err
}

// Held returns the entries of the virtual servers in the standby's external cache
// (`conntrackd -e`).
func (t *Theirs) Held(ctx context.Context, standby *labnet.Device) (map[TupleKey]bool, error) {
	out, err := t.ctd(ctx, time.Minute, standby, "-e")
	if err != nil {
		return nil, err
	}
	return ParseConntrackList(out, labnet.VirtualIP), nil
}

// DaemonPIDs returns conntrackd's pid on d (keepalived does not mirror connections).
func (t *Theirs) DaemonPIDs(d *labnet.Device) []int {
	pids, _ := nsPIDs(d.NS, "conntrackd")
	return pids
}

// Close stops every process and removes the lab.
func (t *Theirs) Close() error {
	for _, d := range t.lab.Devices {
		killNS(d.NS, 10*time.Second)
		for _, p := range t.procs[d.Name] {
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
			}
		}
	}
	return t.lab.Close()
}

var ctEntry = regexp.MustCompile(`^(?:\S+\s+)?(?:ipv4\s+\d+\s+)?(tcp|udp)\s+\d+\s+(?:\d+\s+)?(?:[A-Z_]+\s+)?src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)`)

// ParseConntrackList reads entries in conntrack's text format (`conntrack -L`,
// `conntrackd -i/-e`) and returns the original tuples of those sent to dst.
func ParseConntrackList(out, dst string) map[TupleKey]bool {
	held := map[TupleKey]bool{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := ctEntry.FindStringSubmatch(sc.Text())
		if m == nil || m[3] != dst {
			continue
		}
		if k, ok := tupleKey(m[1], m[2], m[3], m[4], m[5]); ok {
			held[k] = true
		}
	}
	return held
}
