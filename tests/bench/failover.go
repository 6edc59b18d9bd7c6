package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"
	"time"

	"github.com/openappliance/appliance/tests/labnet"
)

// restoreDelay is how long after the takeover the failed device comes back. A real box takes
// longer to reboot; the delay matters because the survivor's kernel queues the packets it
// sends to the dead peer's HA address while ARP for it is unresolved (up to about three
// seconds: mcast_solicit × retrans_time) and delivers them, stale, when the peer's link
// comes back within that window: applianced's heartbeats from before the takeover then
// say "Standby", and the restarted device takes the active role back (a bug of ours this
// bench found). Both systems get the same delay.
const restoreDelay = 4 * time.Second

// restoreAfter waits until restoreDelay after the takeover (or the failure, when the
// takeover was not seen), then restores d.
func restoreAfter(ctx context.Context, sys System, d *labnet.Device, tookOver time.Time) error {
	if err := sleep(ctx, time.Until(tookOver.Add(restoreDelay))); err != nil {
		return err
	}
	if err := sys.Restore(ctx, d); err != nil {
		return fmt.Errorf("restore %s: %w", d.Name, err)
	}
	return nil
}

// FailoverRun is one failover measured on probe flows.
type FailoverRun struct {
	// TCP and UDP: from the failure to the reply to the first data sent after it, on the
	// slowest probe of each protocol (all probes working again).
	TCP, UDP time.Duration
	// Takeover: from the failure to the floating virtual address appearing on the new
	// active.
	Takeover time.Duration
	// Lost: probes that were reset or did not recover within the bound.
	Lost             int
	LostTCP, LostUDP int
	Errors           []string // why each lost probe was lost
	// ResetTCP: TCP probes reset (by the new active's stack, when their packets find no
	// conntrack entry there).
	ResetTCP int
}

// waitHeld waits until the standby holds every key (kernel for ours, external cache for
// theirs).
func waitHeld(ctx context.Context, sys System, standby *labnet.Device, keys []TupleKey, timeout time.Duration) error {
	return poll(ctx, timeout, 100*time.Millisecond, fmt.Sprintf("%s: standby %s holding %d entries", sys.Name(), standby.Name, len(keys)), func() (bool, error) {
		held, err := sys.Held(ctx, standby)
		if err != nil {
			return false, err
		}
		missing := 0
		for _, k := range keys {
			if !held[k] {
				missing++
			}
		}
		if missing > 0 {
			return false, fmt.Errorf("%d of %d missing", missing, len(keys))
		}
		return true, nil
	})
}

// FailoverOnce fails the active under probe traffic and measures the recovery, then
// restores the failed device as the standby. bound limits the wait for recovery.
func FailoverOnce(ctx context.Context, sys System, nTCP, nUDP int, bound time.Duration) (FailoverRun, error) {
	var r FailoverRun
	active, standby, err := sys.Pair(ctx)
	if err != nil {
		return r, err
	}
	probes, err := OpenProbes(sys.Lab(), nTCP, nUDP)
	if err != nil {
		return r, err
	}
	defer func() {
		for _, p := range probes {
			p.Close()
		}
	}()
	var keys []TupleKey
	for _, p := range probes {
		keys = append(keys, p.Key())
	}
	if err := waitHeld(ctx, sys, standby, keys, 30*time.Second); err != nil {
		return r, err
	}
	if err := sleep(ctx, 500*time.Millisecond); err != nil {
		return r, err
	}
	watch, err := WatchAddr(standby.NS, labnet.VirtualIP)
	if err != nil {
		return r, err
	}
	defer watch.Close()

	t0 := time.Now()
	for _, p := range probes {
		p.Arm(t0)
	}
	if err := sys.Fail(active); err != nil {
		return r, err
	}
	for _, p := range probes {
		p.Mark()
	}
	// Every probe recovered or failed, within the bound.
	poll(ctx, bound, 5*time.Millisecond, "probes", func() (bool, error) {
		for _, p := range probes {
			if _, ok := p.Recovered(); !ok && p.Err() == nil {
				return false, nil
			}
		}
		return true, nil
	})
	tookOver := t0
	if at, ok := watch.Wait(ctx, time.Until(t0.Add(bound))); ok {
		r.Takeover = at.Sub(t0)
		tookOver = at
	}
	for _, p := range probes {
		d, ok := p.Recovered()
		if !ok {
			r.Lost++
			if p.Key().Proto == 6 {
				r.LostTCP++
				if errors.Is(p.Err(), syscall.ECONNRESET) {
					r.ResetTCP++
				}
			} else {
				r.LostUDP++
			}
			if err := p.Err(); err != nil {
				r.Errors = append(r.Errors, err.Error())
			} else {
				r.Errors = append(r.Errors, fmt.Sprintf("%v: no reply within %v", p.Key(), bound))
			}
			continue
		}
		if p.Key().Proto == 6 {
			r.TCP = max(r.TCP, d)
		} else {
			r.UDP = max(r.UDP, d)
		}
	}
	for _, p := range probes {
		p.Close()
	}
	return r, restoreAfter(ctx, sys, active, tookOver)
}

// KeptRun is one connections-kept measurement.
type KeptRun struct {
	N, Kept, Reset int
	// Dial is how long opening the N connections took (the generator's pace).
	Dial time.Duration
	// Sample: the first few errors of the connections lost.
	Sample []string
}

// KeptOnce opens n long-lived connections that each send 64 bytes every interval, waits
// until the standby holds them all, fails the active, lets traffic run through the new
// active, and counts the connections that kept every byte. The failed device is restored.
func KeptOnce(ctx context.Context, sys System, n int, interval time.Duration) (KeptRun, error) {
	r := KeptRun{N: n}
	active, standby, err := sys.Pair(ctx)
	if err != nil {
		return r, err
	}
	// Every run starts from empty tables: the entries of the previous run's connections
	// (closed through the other device, TIME_WAIT for two minutes) must not meet this run's
	// connections when the client reuses a port.
	if err := emptyTables(ctx, active, standby); err != nil {
		return r, err
	}
	target := net.JoinHostPort(labnet.VirtualIP, strconv.Itoa(TCPPort))
	var keys []TupleKey
	var flows []*labnet.Flow
	start := time.Now()
	err = labnet.Do(sys.Lab().Client, func() error {
		var err error
		flows, err = labnet.Dial(n, func() (net.Conn, error) {
			c, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err == nil {
				keys = append(keys, connKey(6, c))
			}
			return c, err
		})
		return err
	})
	if err != nil {
		return r, err
	}
	r.Dial = time.Since(start)
	defer func() {
		for _, f := range flows {
			f.Close()
		}
	}()
	for _, f := range flows {
		f.Start(64, interval)
	}
	if err := waitHeld(ctx, sys, standby, keys, 3*time.Minute); err != nil {
		return r, err
	}
	if err := sleep(ctx, time.Second+interval); err != nil {
		return r, err
	}
	watch, err := WatchAddr(standby.NS, labnet.VirtualIP)
	if err != nil {
		return r, err
	}
	defer watch.Close()
	if err := sys.Fail(active); err != nil {
		return r, err
	}
	tookOver, ok := watch.Wait(ctx, time.Minute)
	if !ok {
		return r, fmt.Errorf("%s: %s did not take over within a minute", sys.Name(), standby.Name)
	}
	// Traffic through the new active for a while, then every flow must drain.
	if err := sleep(ctx, 3*time.Second+2*interval); err != nil {
		return r, err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	out := labnet.Settle(sctx, flows)
	cancel()
	r.Kept = out.Kept
	for _, e := range out.Errors {
		if errors.Is(e, syscall.ECONNRESET) {
			r.Reset++
		}
		if len(r.Sample) < 3 {
			r.Sample = append(r.Sample, e.Error())
		}
	}
	for _, f := range flows {
		f.Close()
	}
	flows = nil
	return r, restoreAfter(ctx, sys, active, tookOver)
}

// emptyTables flushes the devices' conntrack tables and waits (bounded) until they stay
// nearly empty: the daemons' own connections come back at once, and a mirror may still be
// deleting what the flush of its peer destroyed.
func emptyTables(ctx context.Context, devices ...*labnet.Device) error {
	for _, d := range devices {
		if err := flushConntrack(ctx, d.NS); err != nil {
			return err
		}
	}
	last := map[string]int{}
	stableSince := time.Now()
	return poll(ctx, time.Minute, 100*time.Millisecond, "empty conntrack tables", func() (bool, error) {
		for _, d := range devices {
			n, err := ctCount(d.NS)
			if err != nil {
				return false, err
			}
			if n > 64 {
				flushConntrack(ctx, d.NS)
				stableSince = time.Now()
			}
			if n != last[d.NS] {
				last[d.NS] = n
				stableSince = time.Now()
			}
		}
		return time.Since(stableSince) >= 500*time.Millisecond, fmt.Errorf("tables: %v", last)
	})
}
