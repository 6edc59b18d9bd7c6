// Package bench compares the appliance ("ours": applianced's connection mirroring and
// failover) with the standard Linux pair ("theirs": conntrackd in FTFW mode plus keepalived
// running conntrackd's primary-backup.sh), each in a lab of its own built by labnet with
// the same nftables NAT rules, and renders one table of figures side by side.
//
// Every figure is measured, never simulated: real connections through the kernels of the
// lab's namespaces, real daemons killed and restarted. Each is a median over several runs
// with the spread (min–max). The pure parts (statistics, parsing, the table) are unit
// tested; the rest needs root and the lab.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// Config says what to measure and how hard.
type Config struct {
	Bin  string // folder holding applianced and tmsh
	Exe  string // the bench binary itself (run as the echo servers)
	Dir  string // work folder: each lab's configs and logs
	Runs int    // runs per figure (some sections cap it; see Plan)
	// Quick: fewer runs and smaller N, for a run of a few minutes.
	Quick bool
	// Sections to run: "failover", "kept", "rate", "feed", "steady", "sync" (which includes "shell"); all
	// when empty.
	Sections map[string]bool
	// Systems to run: "ours", "theirs"; both when empty.
	Systems []string
	// TheirsDropInvalid runs theirs with `ct state invalid drop` on input (a variant: not
	// the same rules as ours).
	TheirsDropInvalid bool
	Log               io.Writer // progress
}

// Setting is one failure-detection setting of each system, measured side by side.
type Setting struct {
	Label, Ours, Theirs string
}

// Plan is what a Config expands to.
type Plan struct {
	Failover     []Setting
	FailoverRuns int
	Kept         Setting
	KeptN        []int
	KeptRuns     int
	RateTargets  []int
	RateDur      time.Duration
	RateRuns     int
	FeedTargets  []int // the daemon's own ceiling (FeedOnce); 0 = as fast as the feeder goes
	// SteadyTarget entries a second fed for SteadyDur: long enough for the kernel's gc to
	// turn the first entries into waves of destroys while new ones come, and for digests
	// to run in the middle, which a burst of RateDur ends before.
	SteadyTarget int
	SteadyDur    time.Duration
	SyncN        []int
	SyncRuns     []int // per SyncN
	ShellRuns    int
}

// Prefixes of the two labs' namespaces ("bn": the bench's own, apart from the e2e tests'
// and make lab's).
const (
	OursPrefix   = "bnours"
	TheirsPrefix = "bntheirs"
	// CeilingPrefix is that of the namespaces of section 4's BenchmarkStandbyFullSync.
	CeilingPrefix = "bnceil"
)

// MakePlan expands a Config. The default run (5 runs) takes about 20 minutes on two cores.
func MakePlan(c Config) Plan {
	runs := max(c.Runs, 1)
	p := Plan{
		Failover: []Setting{
			{"defaults", "0.5", "1"},
			{"100 ms class", "0.1", "0.1"},
			{"fastest", "0.02", "0.01"},
			// Where TCP's retransmission back-off shows: ours tickles it away.
			{"3 s class (BIG-IP's default)", "3", "1"},
		},
		FailoverRuns: runs,
		// Both near one second of detection: keepalived's master-down interval is
		// 3×advert_int plus skew (0.9 s + 0.18 s at priority 100).
		Kept:         Setting{"~1 s detection", "1", "0.3"},
		KeptN:        []int{1000, 10000},
		KeptRuns:     runs,
		RateTargets:  []int{1000, 10000},
		RateDur:      3 * time.Second,
		RateRuns:     min(runs, 3),
		FeedTargets:  []int{10000, 30000, 0},
		SteadyTarget: 10000,
		SteadyDur:    25 * time.Second,
		SyncN:        []int{100000, 1000000},
		SyncRuns:     []int{min(runs, 3), min(runs, 2)},
		ShellRuns:    min(runs, 3),
	}
	if c.Quick {
		p.FailoverRuns = min(runs, 2)
		p.KeptN = []int{500, 2000}
		p.KeptRuns = 1
		p.RateDur = 2 * time.Second
		p.RateRuns = 1
		p.SteadyDur = 12 * time.Second
		p.SyncN = []int{20000, 100000}
		p.SyncRuns = []int{1, 1}
		p.ShellRuns = 1
	}
	return p
}

func (c Config) section(name string) bool { return len(c.Sections) == 0 || c.Sections[name] }

func (c Config) systems() []string {
	if len(c.Systems) == 0 {
		return []string{"ours", "theirs"}
	}
	return c.Systems
}

// Results collects figures by metric key, ours and theirs.
type Results struct {
	figs map[string]*[2]Figure
}

// NewResults returns an empty Results.
func NewResults() *Results {
	return &Results{figs: map[string]*[2]Figure{}}
}

func side(sys string) int {
	if sys == "theirs" {
		return 1
	}
	return 0
}

func (r *Results) fig(key, sys string) *Figure {
	f := r.figs[key]
	if f == nil {
		f = &[2]Figure{}
		r.figs[key] = f
	}
	return &f[side(sys)]
}

// Add records a value of a run.
func (r *Results) Add(key, sys string, v float64) { r.fig(key, sys).Add(v) }

// Fail records a run that gave no value.
func (r *Results) Fail(key, sys string) { r.fig(key, sys).Fail() }

// Note sets a figure's note.
func (r *Results) Note(key, sys, note string) { r.fig(key, sys).Note = note }

// Run measures every planned section on each system in turn (each in its own lab, removed
// afterwards) and returns the results gathered, also when ctx ends early.
func Run(ctx context.Context, c Config) (*Results, error) {
	res := NewResults()
	plan := MakePlan(c)
	logf := func(format string, args ...any) {
		fmt.Fprintf(c.Log, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
	for _, name := range c.systems() {
		if ctx.Err() != nil {
			break
		}
		if err := runSystem(ctx, c, plan, name, res, logf); err != nil {
			logf("%s: %v", name, err)
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
		}
	}
	// With no lab up, so that no event listener shares the kernel.
	if c.section("sync") && slices.Contains(c.systems(), "ours") && ctx.Err() == nil {
		measureCeiling(ctx, c, plan, res, logf)
	}
	return res, ctx.Err()
}

type logFunc func(format string, args ...any)

func newSystem(ctx context.Context, c Config, name, detection string) (System, error) {
	dir := filepath.Join(c.Dir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if name == "theirs" {
		return NewTheirs(ctx, TheirsPrefix, dir, c.Bin, detection, c.TheirsDropInvalid, c.Log)
	}
	return NewOurs(ctx, OursPrefix, dir, c.Bin, detection, c.Log)
}

func pick(s Setting, sys string) string {
	if sys == "theirs" {
		return s.Theirs
	}
	return s.Ours
}

func runSystem(ctx context.Context, c Config, p Plan, name string, res *Results, logf logFunc) error {
	logf("%s: building the lab", name)
	sys, err := newSystem(ctx, c, name, pick(p.Failover[0], name))
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	defer func() {
		if err := sys.Close(); err != nil {
			logf("%s: close: %v", name, err)
		}
		logf("%s: lab removed", name)
	}()
	srv, err := StartServers(sys.Lab(), c.Exe)
	if err != nil {
		return err
	}
	defer srv.Close()
	if c.section("failover") {
		measureFailover(ctx, sys, p, res, logf)
	}
	if c.section("kept") && ctx.Err() == nil {
		measureKept(ctx, sys, p, res, logf)
	}
	// Bursts, feeds and full syncs run at each system's default detection: a short timeout on two
	// busy cores would turn a stalled heartbeat into a failover in the middle of them.
	if (c.section("rate") || c.section("feed") || c.section("steady") || c.section("sync")) && ctx.Err() == nil {
		if err := sys.SetDetection(ctx, pick(p.Failover[0], name)); err != nil {
			return err
		}
	}
	if c.section("rate") && ctx.Err() == nil {
		measureRate(ctx, sys, p, res, logf)
	}
	// The daemon's own ceiling: ours only, since it feeds the kernel events that applianced
	// listens to; the lab's traffic generator is the limit of section 3.
	if c.section("feed") && name == "ours" && ctx.Err() == nil {
		measureFeed(ctx, sys, p, res, logf)
	}
	if c.section("steady") && name == "ours" && ctx.Err() == nil {
		measureSteady(ctx, sys, p, res, logf)
	}
	if c.section("sync") && ctx.Err() == nil {
		measureSync(ctx, sys, p, res, logf)
	}
	return ctx.Err()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// FailoverKey names the failover figures: what is "udp", "tcp", "takeover" or "reset".
func FailoverKey(label, what string) string { return "failover/" + label + "/" + what }

func measureFailover(ctx context.Context, sys System, p Plan, res *Results, logf logFunc) {
	name := sys.Name()
	for _, s := range p.Failover {
		if ctx.Err() != nil {
			return
		}
		if err := sys.SetDetection(ctx, pick(s, name)); err != nil {
			logf("%s: set %s: %v", name, pick(s, name), err)
			continue
		}
		for i := 0; i < p.FailoverRuns && ctx.Err() == nil; i++ {
			changes := sys.RoleChanges()
			r, err := FailoverOnce(ctx, sys, 4, 4, 30*time.Second)
			// A run is one takeover plus the restored device joining as standby: two role
			// changes. More are flaps: a standby that thought the active dead, or a
			// restored device that took the active role back.
			flaps := sys.RoleChanges() - changes - 2
			logf("%s failover %s (%s) run %d/%d: UDP %v TCP %v takeover %v lost %d %v flaps %d err=%v", name, s.Label, sys.Detection(), i+1, p.FailoverRuns,
				r.UDP.Round(time.Millisecond), r.TCP.Round(time.Millisecond), r.Takeover.Round(time.Millisecond), r.Lost, r.Errors, flaps, err)
			if err != nil && r.Takeover == 0 {
				for _, w := range []string{"udp", "tcp", "takeover", "reset"} {
					res.Fail(FailoverKey(s.Label, w), name)
				}
				continue
			}
			res.Add(FailoverKey(s.Label, "reset"), name, float64(r.ResetTCP))
			if err == nil {
				res.Add(FailoverKey(s.Label, "flaps"), name, float64(max(flaps, 0)))
			}
			if r.Takeover > 0 {
				res.Add(FailoverKey(s.Label, "takeover"), name, ms(r.Takeover))
			} else {
				res.Fail(FailoverKey(s.Label, "takeover"), name)
			}
			if r.LostUDP == 0 {
				res.Add(FailoverKey(s.Label, "udp"), name, ms(r.UDP))
			} else {
				res.Fail(FailoverKey(s.Label, "udp"), name)
			}
			if r.LostTCP < 4 {
				res.Add(FailoverKey(s.Label, "tcp"), name, ms(r.TCP))
			} else {
				res.Fail(FailoverKey(s.Label, "tcp"), name)
			}
			if err != nil {
				logf("%s: after the run: %v", name, err)
			}
		}
	}
}

// KeptKey names the connections-kept figure for n connections.
func KeptKey(n int) string { return "kept/" + strconv.Itoa(n) }

// keptInterval: 64 bytes every 100 ms per connection for up to 1,000 connections; beyond,
// the same total of 10,000 writes a second, so that two cores carry client, server, both
// devices and the harness.
func keptInterval(n int) time.Duration {
	return time.Duration(max(n/1000, 1)) * 100 * time.Millisecond
}

func measureKept(ctx context.Context, sys System, p Plan, res *Results, logf logFunc) {
	name := sys.Name()
	if err := sys.SetDetection(ctx, pick(p.Kept, name)); err != nil {
		logf("%s: set %s: %v", name, pick(p.Kept, name), err)
		return
	}
	for _, n := range p.KeptN {
		resets := 0
		for i := 0; i < p.KeptRuns && ctx.Err() == nil; i++ {
			r, err := KeptOnce(ctx, sys, n, keptInterval(n))
			logf("%s kept %d (%s) run %d/%d: kept %d reset %d dial %v %v err=%v", name, n, sys.Detection(), i+1, p.KeptRuns, r.Kept, r.Reset, r.Dial.Round(time.Millisecond), r.Sample, err)
			if err != nil && r.Kept == 0 {
				res.Fail(KeptKey(n), name)
				continue
			}
			res.Add(KeptKey(n), name, float64(r.Kept))
			resets += r.Reset
		}
		if resets > 0 {
			res.Note(KeptKey(n), name, fmt.Sprintf("%d connections reset over the runs", resets))
		}
	}
}

// RateKey names the rate figures: what is "rate", "mirrored", "p50", "p99", "xp50",
// "xp99", "cpu-active", "cpu-standby".
func RateKey(proto uint8, target int, what string) string {
	return fmt.Sprintf("rate/%s/%d/%s", protoName(proto), target, what)
}

func protoName(p uint8) string {
	if p == 17 {
		return "udp"
	}
	return "tcp"
}

func measureRate(ctx context.Context, sys System, p Plan, res *Results, logf logFunc) {
	name := sys.Name()
	for _, proto := range []uint8{6, 17} {
		for _, target := range p.RateTargets {
			generatorLimited := false
			for i := 0; i < p.RateRuns && ctx.Err() == nil; i++ {
				r, err := RateOnce(ctx, sys, proto, target, p.RateDur)
				logf("%s rate %s %d/s run %d/%d: achieved %.0f/s created %d mirrored %d lag %v/%v exact %v/%v cpu %v/%v overruns %d err=%v",
					name, protoName(proto), target, i+1, p.RateRuns, r.Achieved, r.Created, r.Mirrored, r.LagP50.Round(time.Microsecond), r.LagP99.Round(time.Microsecond),
					r.ExactP50.Round(time.Microsecond), r.ExactP99.Round(time.Microsecond), r.CPUActive, r.CPUStandby, r.Overruns, err)
				key := func(w string) string { return RateKey(proto, target, w) }
				if err != nil || r.Created == 0 {
					for _, w := range []string{"rate", "mirrored", "p50", "p99"} {
						res.Fail(key(w), name)
					}
					continue
				}
				if r.Achieved < 0.9*float64(target) {
					generatorLimited = true
				}
				res.Add(key("p50"), name, ms(r.LagP50))
				res.Add(key("p99"), name, ms(r.LagP99))
				addBurst(res, name, key, r, "p50")
			}
			if generatorLimited {
				res.Note(RateKey(proto, target, "rate"), name, "generator-limited: the lab could not make the target rate (client, server, both devices and the harness share two cores)")
			}
		}
	}
}

func measureFeed(ctx context.Context, sys System, p Plan, res *Results, logf logFunc) {
	name := sys.Name()
	next := 0 // synthetic flows are never reused across runs
	for _, target := range p.FeedTargets {
		for i := 0; i < p.RateRuns && ctx.Err() == nil; i++ {
			r, err := FeedOnce(ctx, sys, target, p.RateDur, next)
			next += r.Created + r.Failed + 1000
			logf("%s feed %d/s run %d/%d: achieved %.0f/s failed %d created %d mirrored %d exact %v/%v cpu %v/%v overruns %d err=%v",
				name, target, i+1, p.RateRuns, r.Achieved, r.Failed, r.Created, r.Mirrored,
				r.ExactP50.Round(time.Microsecond), r.ExactP99.Round(time.Microsecond), r.CPUActive, r.CPUStandby, r.Overruns, err)
			key := func(w string) string { return FeedKey(target, w) }
			if err != nil || r.Created == 0 {
				for _, w := range []string{"rate", "mirrored", "xp50", "xp99"} {
					res.Fail(key(w), name)
				}
				continue
			}
			addBurst(res, name, key, r, "xp50")
		}
	}
}

// measureSteady feeds as measureFeed does, at one rate for longer, and logs the spans whose
// lag stood out, to be read beside the daemons' logs.
func measureSteady(ctx context.Context, sys System, p Plan, res *Results, logf logFunc) {
	name := sys.Name()
	next := 1 << 24 // apart from measureFeed's
	for i := 0; i < p.RateRuns && ctx.Err() == nil; i++ {
		r, err := FeedOnce(ctx, sys, p.SteadyTarget, p.SteadyDur, next)
		next += r.Created + r.Failed + 1000
		logf("%s steady feed %d/s for %v run %d/%d: achieved %.0f/s failed %d created %d mirrored %d exact %v/%v max %v cpu %v/%v overruns %d err=%v",
			name, p.SteadyTarget, p.SteadyDur, i+1, p.RateRuns, r.Achieved, r.Failed, r.Created, r.Mirrored,
			r.ExactP50.Round(time.Microsecond), r.ExactP99.Round(time.Microsecond), r.ExactMax.Round(time.Microsecond),
			r.CPUActive, r.CPUStandby, r.Overruns, err)
		for _, w := range r.Worst {
			logf("%s steady feed run %d: entries created %s..+%v: %d, lag p50 %v p99 %v max %v",
				name, i+1, w.From.Format("15:04:05.000"), lagWindow, w.N, w.P50.Round(time.Microsecond), w.P99.Round(time.Microsecond), w.Max.Round(time.Microsecond))
		}
		key := SteadyKey
		if err != nil || r.Created == 0 {
			for _, w := range []string{"rate", "mirrored", "xp50", "xp99", "xmax"} {
				res.Fail(key(w), name)
			}
			continue
		}
		addBurst(res, name, key, r, "xp50")
		res.Add(key("xmax"), name, ms(r.ExactMax))
	}
}

// SteadyKey names the figures of the steady feed (Plan.SteadyTarget for Plan.SteadyDur).
func SteadyKey(what string) string { return "feed/steady/" + what }

// addBurst records the figures that a rate burst and a feed share: rate achieved, share
// mirrored, exact lags (when measured), CPU per flow on each side, and a note on noteKey
// when the harness's own readers lost events.
func addBurst(res *Results, name string, key func(string) string, r RateRun, noteKey string) {
	res.Add(key("rate"), name, r.Achieved)
	res.Add(key("mirrored"), name, 100*float64(r.Mirrored)/float64(r.Created))
	if r.Exact {
		res.Add(key("xp50"), name, ms(r.ExactP50))
		res.Add(key("xp99"), name, ms(r.ExactP99))
	}
	addCPU(res, name, key, r.CPUActive, r.CPUStandby, r.Created)
	if r.Overruns > 0 {
		res.Note(key(noteKey), name, fmt.Sprintf("the harness's event reader lost events %d times: lags are a floor", r.Overruns))
	}
}

// addCPU records CPU per item on each side under "cpu-active" and "cpu-standby", and the
// part of it spent in the daemons' own code under "cpu-active-user" and "cpu-standby-user".
func addCPU(res *Results, name string, key func(string) string, active, standby cpuUse, n int) {
	for side, c := range map[string]cpuUse{"active": active, "standby": standby} {
		total, user := c.perItem(n)
		res.Add(key("cpu-"+side), name, total)
		res.Add(key("cpu-"+side+"-user"), name, user)
	}
}

// SyncKey names the full-sync figures: what is "resync", "total", "cpu-active",
// "cpu-standby", "rss-active", "rss-standby", "rss-active-per", "rss-standby-per".
func SyncKey(n int, what string) string { return fmt.Sprintf("sync/%d/%s", n, what) }

// ShellKey names the listing figures: "first", "last", "peak", "daemon".
func ShellKey(what string) string { return "shell/" + what }

func measureSync(ctx context.Context, sys System, p Plan, res *Results, logf logFunc) {
	name := sys.Name()
	active, standby, err := sys.Pair(ctx)
	if err != nil {
		logf("%s: %v", name, err)
		return
	}
	// Start from empty tables; the RSS of the idle pair is the baseline for per-entry memory,
	// the standby's taken on a fresh daemon like those the runs restart.
	if err := emptyTables(ctx, active, standby); err != nil {
		logf("%s: %v", name, err)
		return
	}
	if err := restartStandby(ctx, sys, standby); err != nil {
		logf("%s: %v", name, err)
		return
	}
	baseA, baseS := rssSum(sys.DaemonPIDs(active)), rssSum(sys.DaemonPIDs(standby))
	logf("%s: idle RSS, the baseline of per-entry memory: active %.1f MB, standby %.1f MB (fresh)", name, baseA/1e6, baseS/1e6)
	have := 0
	for i, n := range p.SyncN {
		if ctx.Err() != nil {
			return
		}
		d, err := InjectRange(ctx, active.NS, have, n)
		if err != nil {
			logf("%s: inject: %v", name, err)
			return
		}
		logf("%s: %d entries injected into %s's kernel in %v (%.0f/s)", name, n-have, active.Name, d.Round(time.Millisecond), float64(n-have)/d.Seconds())
		have = n
		// Each system first mirrors the injection burst, so that the runs below start from a
		// settled active (ours: its queue drained, and its memory with it).
		start := time.Now()
		if t, ok := sys.(*Theirs); ok {
			if err := WaitInternal(ctx, t, active, n); err != nil {
				logf("%s: %v", name, err)
				return
			}
			logf("%s: the primary's internal cache holds them %v later", name, time.Since(start).Round(time.Millisecond))
		} else {
			if err := WaitMirrored(ctx, standby, n); err != nil {
				logf("%s: %v", name, err)
				return
			}
			logf("%s: the standby's kernel holds them %v later", name, time.Since(start).Round(time.Millisecond))
		}
		for run := 0; run < p.SyncRuns[i] && ctx.Err() == nil; run++ {
			var r FullSyncRun
			if t, ok := sys.(*Theirs); ok {
				r, err = FullSyncTheirs(ctx, t, n)
			} else {
				r, err = FullSyncOurs(ctx, sys.(*Ours), n)
			}
			logf("%s full sync %d run %d/%d: resync %v total %v held %d cpu %v/%v rss %.0f/%.0f MB err=%v pair=%v", name, n, run+1, p.SyncRuns[i],
				r.Resync.Round(time.Millisecond), r.Total.Round(time.Millisecond), r.Held, r.CPUActive, r.CPUStandby, r.RSSActive/1e6, r.RSSStandby/1e6, err, r.PairErr)
			key := func(w string) string { return SyncKey(n, w) }
			if err != nil {
				res.Fail(key("resync"), name)
				res.Fail(key("total"), name)
				res.Note(key("total"), name, fmt.Sprintf("a run failed holding %d of %d: %v", r.Held, n, err))
				continue
			}
			if r.PairErr != nil {
				res.Note(key("total"), name, fmt.Sprintf("after a run the pair did not come back whole: %v", r.PairErr))
			}
			res.Add(key("resync"), name, r.Resync.Seconds())
			res.Add(key("total"), name, r.Total.Seconds())
			addCPU(res, name, key, r.CPUActive, r.CPUStandby, n)
			res.Add(key("rss-active"), name, r.RSSActive/1e6)
			res.Add(key("rss-standby"), name, r.RSSStandby/1e6)
			res.Add(key("rss-active-per"), name, (r.RSSActive-baseA)/float64(n))
			res.Add(key("rss-standby-per"), name, (r.RSSStandby-baseS)/float64(n))
		}
	}
	if ctx.Err() != nil {
		return
	}
	// The listing over the largest table, on the active.
	active, _, err = sys.Pair(ctx)
	if err != nil {
		logf("%s: %v", name, err)
		return
	}
	for run := 0; run < p.ShellRuns && ctx.Err() == nil; run++ {
		var r ShellRun
		if _, ok := sys.(*Theirs); ok {
			r, err = ListConnections(ctx, []string{"ip", "netns", "exec", active.NS, "conntrack", "-L"}, isConntrackRow, nil)
		} else {
			r, err = ListConnections(ctx, []string{filepath.Join(sys.Lab().Bin, "tmsh"), "--socket", active.Socket, "-c", "show sys connection type mirror"}, isTmshRow, sys.DaemonPIDs(active))
		}
		logf("%s listing run %d/%d: first row %v, last %v, %d rows, peak %.0f MB, daemon +%.0f MB, err=%v", name, run+1, p.ShellRuns,
			r.First.Round(time.Millisecond), r.Last.Round(time.Millisecond), r.Rows, r.PeakRSS/1e6, r.DaemonPeak/1e6, err)
		if err != nil {
			for _, w := range []string{"first", "last", "peak"} {
				res.Fail(ShellKey(w), name)
			}
			continue
		}
		res.Add(ShellKey("first"), name, ms(r.First))
		res.Add(ShellKey("last"), name, r.Last.Seconds())
		res.Add(ShellKey("peak"), name, r.PeakRSS/1e6)
		res.Add(ShellKey("rows"), name, float64(r.Rows))
		if _, ok := sys.(*Ours); ok {
			res.Add(ShellKey("daemon"), name, r.DaemonPeak/1e6)
		}
	}
}
