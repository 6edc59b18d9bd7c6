package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/openappliance/appliance/kernel/conntrack"
	"github.com/openappliance/appliance/tests/labnet"
)

// Ours is the appliance: applianced on both devices, configured with tmsh as in the
// README's walk-through, plus a mirrored UDP virtual.
type Ours struct {
	lab       *labnet.Lab
	detection string
	log       io.Writer
}

// NewOurs builds the lab (namespaces prefixed with prefix), starts and configures both
// daemons with failover.nettimeout seconds, and waits for a ready pair.
func NewOurs(ctx context.Context, prefix, dir, bin, nettimeout string, log io.Writer) (*Ours, error) {
	l, err := labnet.New(prefix, dir, bin)
	if err != nil {
		return nil, err
	}
	o := &Ours{lab: l, log: log, detection: nettimeout}
	if err := o.setup(ctx, nettimeout); err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

func (o *Ours) setup(ctx context.Context, nettimeout string) error {
	l := o.lab
	if err := prepareClient(l); err != nil {
		return err
	}
	for _, d := range l.Devices {
		if err := l.Start(d); err != nil {
			return err
		}
	}
	for _, d := range l.Devices {
		if _, err := l.Tmsh(d, l.DeviceCommands(d)+"; modify sys db failover.nettimeout value "+nettimeout); err != nil {
			return err
		}
	}
	if _, err := l.Tmsh(l.Devices[0], labnet.TrafficCommands()+"; "+udpVirtualCommands()+"; save sys config; run cm config-sync to-group dg1"); err != nil {
		return err
	}
	_, _, err := o.Pair(ctx)
	return err
}

// Name is "ours".
func (o *Ours) Name() string { return "ours" }

// Lab is the system's lab.
func (o *Ours) Lab() *labnet.Lab { return o.lab }

// Detection is "nettimeout N".
func (o *Ours) Detection() string { return "nettimeout " + o.detection }

// SetDetection sets failover.nettimeout on both devices (a device-local sys db value).
func (o *Ours) SetDetection(ctx context.Context, seconds string) error {
	for _, d := range o.lab.Devices {
		if _, err := o.lab.Tmsh(d, "modify sys db failover.nettimeout value "+seconds); err != nil {
			return err
		}
	}
	o.detection = seconds
	_, _, err := o.Pair(ctx)
	return err
}

func (o *Ours) state(d *labnet.Device) string {
	out, err := o.lab.Tmsh(d, "show cm failover-status")
	if err != nil {
		return "unreachable"
	}
	return ParseFailoverStatus(out)
}

func (o *Ours) mirrorRows(d *labnet.Device) map[string]string {
	out, err := o.lab.Tmsh(d, "show sys mirror")
	if err != nil {
		return nil
	}
	return ParseRows(out)
}

// Pair waits (up to a minute) until one device is ACTIVE and sending the mirror stream and
// the other is STANDBY and receiving it.
func (o *Ours) Pair(ctx context.Context) (active, standby *labnet.Device, err error) {
	err = poll(ctx, time.Minute, 50*time.Millisecond, "ours: an Active/Standby pair with the mirror connected", func() (bool, error) {
		a, b := o.lab.Devices[0], o.lab.Devices[1]
		sa, sb := o.state(a), o.state(b)
		switch {
		case sa == "ACTIVE" && sb == "STANDBY":
			active, standby = a, b
		case sb == "ACTIVE" && sa == "STANDBY":
			active, standby = b, a
		default:
			return false, fmt.Errorf("%s=%s %s=%s", a.Name, sa, b.Name, sb)
		}
		ma, ms := o.mirrorRows(active), o.mirrorRows(standby)
		if ma["Role"] != "sender" || ma["Connected"] != "yes" || ms["Role"] != "receiver" || ms["Connected"] != "yes" {
			return false, fmt.Errorf("mirror: %s %s/%s, %s %s/%s", active.Name, ma["Role"], ma["Connected"], standby.Name, ms["Role"], ms["Connected"])
		}
		return true, nil
	})
	return active, standby, err
}

// Fail takes d's links down (the HA link first) and SIGKILLs applianced.
func (o *Ours) Fail(d *labnet.Device) error {
	err := failLinks(d)
	d.Kill()
	return err
}

// Restore brings d's links up, starts applianced and waits until d is the standby.
func (o *Ours) Restore(ctx context.Context, d *labnet.Device) error {
	removeFloating(ctx, d)
	if err := o.lab.SetLinks(d, true); err != nil {
		return err
	}
	if !d.Running() {
		if err := o.lab.Start(d); err != nil {
			return err
		}
	}
	_, standby, err := o.Pair(ctx)
	if err == nil && standby != d {
		err = fmt.Errorf("ours: %s came back Active, want Standby", d.Name)
	}
	return err
}

// Held returns the entries of the virtual servers in the standby's kernel.
func (o *Ours) Held(ctx context.Context, standby *labnet.Device) (map[TupleKey]bool, error) {
	return kernelHeld(ctx, standby.NS)
}

// kernelHeld dumps a namespace's conntrack table: the entries sent to the virtual address.
func kernelHeld(ctx context.Context, ns string) (map[TupleKey]bool, error) {
	var t *conntrack.Table
	if err := labnet.Do(ns, func() (err error) { t, err = conntrack.Open(); return err }); err != nil {
		return nil, err
	}
	defer t.Close()
	held := map[TupleKey]bool{}
	err := t.Dump(ctx, func(f conntrack.Flow) error {
		if f.Orig.Dst.Addr().String() == labnet.VirtualIP {
			held[TupleKey{f.Proto, f.Orig.Src, f.Orig.Dst}] = true
		}
		return nil
	})
	return held, err
}

// DaemonPIDs returns applianced's pid on d.
func (o *Ours) DaemonPIDs(d *labnet.Device) []int {
	pids, _ := nsPIDs(d.NS, "applianced")
	return pids
}

// RoleChanges counts the failover state changes in both daemons' logs.
func (o *Ours) RoleChanges() int {
	n := 0
	for _, d := range o.lab.Devices {
		n += countLines(d.Log, func(l string) bool { return strings.Contains(l, `msg="failover state change"`) })
	}
	return n
}

// StopDaemon SIGKILLs applianced on d, leaving its links up.
func (o *Ours) StopDaemon(d *labnet.Device) { d.Kill() }

// StartDaemon starts applianced on d and returns once its control socket answers.
func (o *Ours) StartDaemon(d *labnet.Device) error { return o.lab.Start(d) }

// Close stops the daemons and removes the lab.
func (o *Ours) Close() error {
	for _, d := range o.lab.Devices {
		killNS(d.NS, 5*time.Second)
	}
	return o.lab.Close()
}

func openLog(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
}
