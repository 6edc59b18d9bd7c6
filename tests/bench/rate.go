package bench

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openappliance/appliance/tests/labnet"
)

// RateRun is one burst of new flows through a virtual server at a target rate.
type RateRun struct {
	Target   int     // flows per second asked; 0 = as fast as the generator goes
	Achieved float64 // flows per second the generator completed
	Failed   int     // flows the generator could not complete (connect or echo failed)
	Created  int     // new entries of the virtual seen on the active's kernel
	Mirrored int     // of those, how many reached the standby
	// Lags from an entry's creation in the active's kernel (its kernel timestamp, see
	// kernelStamps) to its arrival on the standby, read from a count polled every
	// counterPoll on both systems (ours: the standby's kernel entries; theirs: the external
	// cache's entries), see ArrivalsFromCounter: resolution about counterPoll.
	LagP50, LagP99 time.Duration
	// Exact (ours only): the same lag per entry, from its creation in the active's kernel
	// to its creation in the standby's, both by the kernel's own timestamps.
	Exact              bool
	ExactP50, ExactP99 time.Duration
	ExactMax           time.Duration
	// Worst: the lagWindow spans of creation whose lag p99 passed worstLag, in time order,
	// to tell a stall from a spread.
	Worst []LagWindow
	// CPUActive and CPUStandby: CPU time the mirroring daemons used during the burst
	// and its drain.
	CPUActive, CPUStandby cpuUse
	// Overruns: how many of the harness's event readers lost events (the entries lost are
	// then missing from the lags).
	Overruns int
}

// counterSample is a reading of a monotonic count at a time.
type counterSample struct {
	at time.Time
	n  uint64
}

// ArrivalsFromCounter estimates when each created entry arrived on the peer from readings
// of the peer's monotonic creation counter, assuming the stream keeps creation order (it
// does: one ordered channel). created are the creation times, ascending; samples the
// counter readings, ascending in time, relative to the count before the burst. Entry k has
// arrived at the first reading where the counter exceeds k. The result holds one lag per
// entry that arrived; the resolution is the sampling interval.
func ArrivalsFromCounter(created []time.Time, samples []counterSample) []time.Duration {
	var lags []time.Duration
	j := 0
	for k, c := range created {
		for j < len(samples) && samples[j].n < uint64(k+1) {
			j++
		}
		if j == len(samples) {
			break
		}
		lags = append(lags, max(samples[j].at.Sub(c), 0))
	}
	return lags
}

// generate makes new flows from the client to the virtual server at target flows per
// second (0: unpaced) for dur, with workers goroutines in the client namespace. A TCP flow
// connects, echoes one byte and closes with a reset (so that neither side keeps TIME_WAIT
// and ports are not exhausted); a UDP flow sends one datagram from a fresh socket and
// waits for the echo.
func generate(ctx context.Context, clientNS string, proto uint8, target, workers int, dur time.Duration) (done, failed int, elapsed time.Duration) {
	port := TCPPort
	if proto == 17 {
		port = UDPPort
	}
	addr := net.JoinHostPort(labnet.VirtualIP, strconv.Itoa(port))
	ctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	var tokens chan struct{}
	if target > 0 {
		tokens = make(chan struct{}, target)
		go pace(ctx, tokens, target)
	}
	var ok, bad atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			labnet.Do(clientNS, func() error {
				buf := make([]byte, 8)
				for {
					if tokens != nil {
						select {
						case <-tokens:
						case <-ctx.Done():
							return nil
						}
					} else if ctx.Err() != nil {
						return nil
					}
					if oneFlow(proto, addr, buf) {
						ok.Add(1)
					} else {
						bad.Add(1)
					}
				}
			})
		}()
	}
	wg.Wait()
	return int(ok.Load()), int(bad.Load()), time.Since(start)
}

// pace puts target tokens a second into ch, a millisecond's worth at a time, until ctx
// ends; tokens the workers do not take in time are dropped (the generator is the limit).
func pace(ctx context.Context, ch chan<- struct{}, target int) {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	start := time.Now()
	sent := 0
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			due := int(float64(target) * now.Sub(start).Seconds())
			for ; sent < due; sent++ {
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		}
	}
}

func oneFlow(proto uint8, addr string, buf []byte) bool {
	if proto == 17 {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		if _, err := c.Write(buf); err != nil {
			return false
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		_, err = c.Read(buf)
		return err == nil
	}
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false
	}
	tc := c.(*net.TCPConn)
	defer func() {
		tc.SetLinger(0)
		tc.Close()
	}()
	tc.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := tc.Write(buf[:1]); err != nil {
		return false
	}
	_, err = tc.Read(buf[:1])
	return err == nil
}

// counterArrivals polls a count of what has arrived on the standby every counterPoll, read
// in-process on both systems (theirs: conntrackd's STATS over its socket; ours: the
// namespace's nf_conntrack_count), each costing well under a millisecond.
type counterArrivals struct {
	read    func() (uint64, error)
	mu      sync.Mutex
	samples []counterSample
	base    uint64
	stopc   chan struct{}
	done    chan struct{}
}

const counterPoll = 20 * time.Millisecond

func watchCounter(ctx context.Context, read func() (uint64, error)) (*counterArrivals, error) {
	base, err := read()
	if err != nil {
		return nil, err
	}
	c := &counterArrivals{read: read, base: base, stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			select {
			case <-c.stopc:
				return
			case <-ctx.Done():
				return
			case <-time.After(counterPoll):
			}
			n, err := c.read()
			at := time.Now()
			if err != nil {
				continue
			}
			c.mu.Lock()
			c.samples = append(c.samples, counterSample{at, n - min(n, c.base)})
			c.mu.Unlock()
		}
	}()
	return c, nil
}

func (c *counterArrivals) progress() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.samples) == 0 {
		return 0
	}
	return int(c.samples[len(c.samples)-1].n)
}

func (c *counterArrivals) lags(created map[TupleKey]time.Time) []time.Duration {
	close(c.stopc)
	<-c.done
	times := make([]time.Time, 0, len(created))
	for _, t := range created {
		times = append(times, t)
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	return ArrivalsFromCounter(times, c.samples)
}

// standbyCounter returns how a system's standby is polled for arrivals: the entries it
// holds, in theirs' external cache ("current active connections") or in ours' kernel. The
// tables are emptied before a burst and its short flows stay in them for longer than the
// burst (TCP CLOSE 10 s, UDP 30 s), so the count only grows. (The external cache's
// "connections created" counter would not do: it counts re-creations too.)
func standbyCounter(ctx context.Context, sys System, standby *labnet.Device) func() (uint64, error) {
	if t, ok := sys.(*Theirs); ok {
		return func() (uint64, error) {
			st, err := t.QuickStats(standby)
			return st.External.Active, err
		}
	}
	return func() (uint64, error) {
		n, err := ctCount(standby.NS)
		return uint64(n), err
	}
}

func lagPercentiles(lags []time.Duration) (p50, p99 time.Duration) {
	if len(lags) == 0 {
		return 0, 0
	}
	xs := make([]float64, len(lags))
	for i, l := range lags {
		xs[i] = float64(l)
	}
	return time.Duration(Percentile(xs, 50)), time.Duration(Percentile(xs, 99))
}

// RateOnce makes a burst of new flows of proto through the virtual server at target flows
// per second for dur, and measures what the mirror did with them.
func RateOnce(ctx context.Context, sys System, proto uint8, target int, dur time.Duration) (RateRun, error) {
	gen := func(ctx context.Context, _ *labnet.Device) (int, int, time.Duration) {
		return generate(ctx, sys.Lab().Client, proto, target, 64, dur)
	}
	return burstOnce(ctx, sys, proto, target, gen, nil)
}

// A burstFunc makes the new entries of one run on the active device; it returns how many
// it made and failed to make, and how long it took.
type burstFunc func(ctx context.Context, active *labnet.Device) (done, failed int, elapsed time.Duration)

// burstOnce runs gen and measures what the mirror did with the entries it made. settle,
// when set, runs after the standby has every entry and before the CPU times are read.
func burstOnce(ctx context.Context, sys System, proto uint8, target int, gen burstFunc, settle func(ctx context.Context, active, standby *labnet.Device)) (RateRun, error) {
	r := RateRun{Target: target}
	active, standby, err := sys.Pair(ctx)
	if err != nil {
		return r, err
	}
	// Start from empty tables, so that every flow of the burst is a new entry on both.
	if err := emptyTables(ctx, active, standby); err != nil {
		return r, err
	}
	port := uint16(TCPPort)
	if proto == 17 {
		port = UDPPort
	}
	dst := netip.AddrPortFrom(netip.MustParseAddr(labnet.VirtualIP), port)
	activeBase, err := ctCount(active.NS)
	if err != nil {
		return r, err
	}
	onActive, err := watchStamps(active.NS, proto, dst)
	if err != nil {
		return r, err
	}
	// Ours: exact per-entry arrivals from the standby kernel's stamps. Both: the polled
	// counter, the one method that reads both systems alike.
	var onStandby *kernelStamps
	if _, theirs := sys.(*Theirs); !theirs {
		if onStandby, err = watchStamps(standby.NS, proto, dst); err != nil {
			onActive.stop()
			return r, err
		}
	}
	counter, err := watchCounter(ctx, standbyCounter(ctx, sys, standby))
	if err != nil {
		onActive.stop()
		if onStandby != nil {
			onStandby.stop()
		}
		return r, err
	}
	pidsA, pidsS := sys.DaemonPIDs(active), sys.DaemonPIDs(standby)
	cpuA0, cpuS0 := cpuTimes(pidsA), cpuTimes(pidsS)

	done, failed, elapsed := gen(ctx, active)
	r.Achieved = float64(done) / elapsed.Seconds()
	r.Failed = failed
	// Drain: until the standby has as many entries as the active (fewer than the flows made
	// when a client reused a port: the kernel then replaces the closed entry), or 10 s of no
	// progress.
	last, lastChange := -1, time.Now()
	for ctx.Err() == nil {
		want := done
		if n, err := ctCount(active.NS); err == nil {
			want = min(want, n-activeBase)
		}
		got := counter.progress()
		if got >= want {
			break
		}
		if got != last {
			last, lastChange = got, time.Now()
		}
		if time.Since(lastChange) > 10*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * counterPoll)
	if settle != nil {
		settle(ctx, active, standby)
	}
	r.CPUActive, r.CPUStandby = cpuTimes(pidsA).Sub(cpuA0), cpuTimes(pidsS).Sub(cpuS0)
	created, err := onActive.stop()
	if err != nil {
		r.Overruns++
	}
	r.Created = len(created)
	lags := counter.lags(created)
	r.Mirrored = len(lags)
	r.LagP50, r.LagP99 = lagPercentiles(lags)
	if onStandby != nil {
		arrived, err := onStandby.stop()
		if err != nil {
			r.Overruns++
		}
		var ex []time.Duration
		for key, t := range created {
			if at, ok := arrived[key]; ok {
				ex = append(ex, max(at.Sub(t), 0))
			}
		}
		r.Exact = true
		r.Mirrored = len(ex)
		r.ExactP50, r.ExactP99 = lagPercentiles(ex)
		if len(ex) > 0 {
			r.ExactMax = slices.Max(ex)
		}
		r.Worst = worstWindows(created, arrived)
	}
	return r, nil
}

// A LagWindow is the lags of the entries created in one lagWindow.
type LagWindow struct {
	From          time.Time // start of the span, by the active kernel's clock
	N             int       // entries created in it that arrived
	P50, P99, Max time.Duration
}

const (
	lagWindow = 500 * time.Millisecond
	worstLag  = 5 * time.Millisecond // the target for the lag's p99
)

// worstWindows cuts the entries by creation time into spans of lagWindow and returns the
// spans whose lag p99 passed worstLag.
func worstWindows(created, arrived map[TupleKey]time.Time) []LagWindow {
	spans := map[int64][]time.Duration{} // by the span's start, Unix nanoseconds
	for key, t := range created {
		if at, ok := arrived[key]; ok {
			from := t.UnixNano() - t.UnixNano()%int64(lagWindow)
			spans[from] = append(spans[from], max(at.Sub(t), 0))
		}
	}
	var worst []LagWindow
	for from, lags := range spans {
		p50, p99 := lagPercentiles(lags)
		if p99 > worstLag {
			worst = append(worst, LagWindow{From: time.Unix(0, from), N: len(lags), P50: p50, P99: p99, Max: slices.Max(lags)})
		}
	}
	slices.SortFunc(worst, func(a, b LagWindow) int { return a.From.Compare(b.From) })
	return worst
}
