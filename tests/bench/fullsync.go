package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/openappliance/appliance/kernel/conntrack"
	"github.com/openappliance/appliance/tests/labnet"
	"golang.org/x/sys/unix"
)

// syntheticFlow returns the i-th of a set of distinct established TCP entries of the TCP
// virtual server, NATed like real ones (DNAT to a member-like address, SNAT to the SNAT
// address): original tuples differ by client address and port, reply tuples by member
// address and SNAT port, so a million of them fit without clashing.
func syntheticFlow(i int) conntrack.Flow {
	n := i / 60000
	port := uint16(1024 + i%60000)
	client := netip.AddrFrom4([4]byte{10, 2, byte(n >> 8), byte(n)})
	member := netip.AddrFrom4([4]byte{10, 3, byte(n >> 8), byte(n)})
	return conntrack.Flow{
		Proto: unix.IPPROTO_TCP, TCPState: conntrack.TCPStateEstablished, Timeout: 7200,
		Status: conntrack.StatusAssured | conntrack.StatusSeenReply,
		Orig: conntrack.Tuple{
			Src: netip.AddrPortFrom(client, port),
			Dst: netip.AddrPortFrom(netip.MustParseAddr(labnet.VirtualIP), TCPPort),
		},
		Reply: conntrack.Tuple{
			Src: netip.AddrPortFrom(member, TCPPort),
			Dst: netip.AddrPortFrom(netip.MustParseAddr(labnet.SNATAddr), port),
		},
	}
}

// InjectRange puts synthetic flows [from, to) into ns's kernel with a few parallel
// netlink sockets, and returns how long it took.
func InjectRange(ctx context.Context, ns string, from, to int) (time.Duration, error) {
	const workers = 4
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		var t *conntrack.Table
		if err := labnet.Do(ns, func() (err error) { t, err = conntrack.Open(); return err }); err != nil {
			return 0, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer t.Close()
			for i := from + w; i < to; i += workers {
				if i%1024 == 0 && ctx.Err() != nil {
					errs <- ctx.Err()
					return
				}
				if err := t.Inject(syntheticFlow(i)); err != nil {
					errs <- fmt.Errorf("inject flow %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return time.Since(start), <-errs
}

// FullSyncRun is one late-joining standby catching up with n entries.
type FullSyncRun struct {
	N int
	// Resync: from the standby's daemon starting to it holding every entry, in its
	// kernel (ours) or its external cache (theirs).
	Resync time.Duration
	// Total: to every entry in the standby's kernel; for theirs, resync then
	// `conntrackd -c`, the commit a takeover runs.
	Total time.Duration
	// CPU of the mirroring daemons during the catch-up.
	CPUActive, CPUStandby cpuUse
	// RSS of the mirroring daemons once the standby holds the n entries.
	RSSActive, RSSStandby float64
	// Held is how many entries the standby held at the end (n unless it timed out).
	Held int
	// PairErr: the pair did not come back whole after the measurement (which stands).
	PairErr error
}

// syncBound limits the wait for one full sync.
const syncBound = 3 * time.Minute

// FullSyncOurs measures applianced: the standby's daemon is stopped and its kernel table
// emptied, then it is started again and the active's daemon sends its whole table.
func FullSyncOurs(ctx context.Context, o *Ours, n int) (FullSyncRun, error) {
	r := FullSyncRun{N: n}
	active, standby, err := o.Pair(ctx)
	if err != nil {
		return r, err
	}
	o.StopDaemon(standby)
	if err := flushConntrack(ctx, standby.NS); err != nil {
		return r, err
	}
	base, err := ctCount(standby.NS)
	if err != nil {
		return r, err
	}
	pidsA := o.DaemonPIDs(active)
	cpuA0 := cpuTimes(pidsA)
	t0 := time.Now()
	if err := o.StartDaemon(standby); err != nil {
		return r, err
	}
	err = poll(ctx, syncBound, 20*time.Millisecond, fmt.Sprintf("ours: %s holding %d entries", standby.Name, n), func() (bool, error) {
		c, err := ctCount(standby.NS)
		r.Held = c - base
		return r.Held >= n, err
	})
	r.Resync = time.Since(t0)
	r.Total = r.Resync
	pidsS := o.DaemonPIDs(standby)
	r.CPUActive, r.CPUStandby = cpuTimes(pidsA).Sub(cpuA0), cpuTimes(pidsS)
	r.RSSActive, r.RSSStandby = rssSum(pidsA), rssSum(pidsS)
	if err != nil {
		return r, err
	}
	// The pair must be whole again before the next measurement.
	_, _, r.PairErr = o.Pair(ctx)
	return r, nil
}

// restartStandby restarts the standby's mirroring daemon (applianced | conntrackd) and waits
// for the pair: each full-sync run measures such a fresh process, so the idle baseline of
// the per-entry memory must be one too, not a daemon that earlier sections made grow.
func restartStandby(ctx context.Context, sys System, standby *labnet.Device) error {
	switch s := sys.(type) {
	case *Ours:
		s.StopDaemon(standby)
		if err := s.StartDaemon(standby); err != nil {
			return err
		}
	case *Theirs:
		s.StopConntrackd(standby)
		if err := s.StartConntrackd(ctx, standby); err != nil {
			return err
		}
	}
	_, _, err := sys.Pair(ctx)
	return err
}

// FullSyncTheirs measures conntrackd: the backup's conntrackd is stopped and its kernel
// table emptied; it is started again (StartupResync asks the primary for its internal
// cache) and then committed with `conntrackd -c`, as a takeover would.
func FullSyncTheirs(ctx context.Context, t *Theirs, n int) (FullSyncRun, error) {
	r := FullSyncRun{N: n}
	active, standby, err := t.Pair(ctx)
	if err != nil {
		return r, err
	}
	t.StopConntrackd(standby)
	if err := flushConntrack(ctx, standby.NS); err != nil {
		return r, err
	}
	base, err := ctCount(standby.NS)
	if err != nil {
		return r, err
	}
	pidsA := t.DaemonPIDs(active)
	cpuA0 := cpuTimes(pidsA)
	t0 := time.Now()
	if err := t.StartConntrackd(ctx, standby); err != nil {
		return r, err
	}
	err = poll(ctx, syncBound, 20*time.Millisecond, fmt.Sprintf("theirs: %s's external cache holding %d entries", standby.Name, n), func() (bool, error) {
		st, err := t.QuickStats(standby)
		r.Held = int(st.External.Active)
		return r.Held >= n, err
	})
	r.Resync = time.Since(t0)
	pidsS := t.DaemonPIDs(standby)
	r.RSSActive, r.RSSStandby = rssSum(pidsA), rssSum(pidsS)
	if err != nil {
		r.CPUActive, r.CPUStandby = cpuTimes(pidsA).Sub(cpuA0), cpuTimes(pidsS)
		return r, err
	}
	if err := t.Commit(ctx, standby, syncBound); err != nil {
		return r, err
	}
	err = poll(ctx, syncBound, 20*time.Millisecond, fmt.Sprintf("theirs: %s's kernel holding %d entries", standby.Name, n), func() (bool, error) {
		c, err := ctCount(standby.NS)
		r.Held = c - base
		return r.Held >= n, err
	})
	r.Total = time.Since(t0)
	r.CPUActive, r.CPUStandby = cpuTimes(pidsA).Sub(cpuA0), cpuTimes(pidsS)
	if err != nil {
		return r, err
	}
	_, _, r.PairErr = t.Pair(ctx)
	return r, nil
}

// WaitInternal waits until theirs' active conntrackd holds at least n entries in its
// internal cache (it learns injected entries from their events, or by resyncing with the
// kernel after an event overrun).
func WaitInternal(ctx context.Context, t *Theirs, d *labnet.Device, n int) error {
	return poll(ctx, syncBound, 100*time.Millisecond, fmt.Sprintf("theirs: %s's internal cache holding %d entries", d.Name, n), func() (bool, error) {
		st, err := t.QuickStats(d)
		if err != nil {
			return false, err
		}
		if int(st.Internal.Active) >= n {
			return true, nil
		}
		return false, fmt.Errorf("%d", st.Internal.Active)
	})
}

// WaitMirrored waits until d's kernel holds n entries (ours: the standby's, mirrored).
func WaitMirrored(ctx context.Context, d *labnet.Device, n int) error {
	return poll(ctx, syncBound, 100*time.Millisecond, fmt.Sprintf("ours: %s's kernel holding %d entries", d.Name, n), func() (bool, error) {
		c, err := ctCount(d.NS)
		if err != nil {
			return false, err
		}
		if c >= n {
			return true, nil
		}
		return false, fmt.Errorf("%d", c)
	})
}

// ShellRun is one listing of the connection table through a command's standard output.
type ShellRun struct {
	First, Last time.Duration // to the first row, to the end of the output
	Rows        int           // rows listed
	PeakRSS     float64       // the command's peak resident memory (bytes)
	DaemonPeak  float64       // the daemon's peak RSS growth while it ran (bytes), ours only
}

// ListConnections runs a listing command, reading its output as it streams: isRow tells a
// row from headers and totals. daemonPIDs, if any, are sampled for their RSS growth.
func ListConnections(ctx context.Context, args []string, isRow func(string) bool, daemonPIDs []int) (ShellRun, error) {
	var r ShellRun
	ctx, cancel := context.WithTimeout(ctx, syncBound)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return r, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	base := rssSum(daemonPIDs)
	peak := base
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if len(daemonPIDs) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				peak = max(peak, rssSum(daemonPIDs))
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		close(stop)
		return r, err
	}
	var cmdPeak uint64 // KiB; the command's VmHWM, sampled while it runs
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if kb, err := hwmKB(cmd.Process.Pid); err == nil {
				cmdPeak = max(cmdPeak, kb)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	br := bufio.NewReaderSize(out, 1<<20)
	for {
		line, err := br.ReadString('\n')
		if line != "" && isRow(line) {
			if r.Rows == 0 {
				r.First = time.Since(t0)
			}
			r.Rows++
		}
		if err != nil {
			break
		}
	}
	r.Last = time.Since(t0)
	werr := cmd.Wait()
	close(stop)
	wg.Wait()
	r.PeakRSS = float64(cmdPeak) * 1024
	r.DaemonPeak = peak - base
	if werr != nil {
		return r, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), werr, strings.TrimSpace(stderr.String()))
	}
	return r, nil
}
