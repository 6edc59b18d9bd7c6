package bench

import (
	"fmt"
	"strings"
)

// isTmshRow tells a Sys::Connections row from its title and total.
func isTmshRow(line string) bool {
	return line != "" && line != "\n" && !strings.HasPrefix(line, "Sys::Connections") && !strings.HasPrefix(line, "Total records returned")
}

// isConntrackRow tells an entry of `conntrack -L` from its summary (which goes to stderr
// anyway).
func isConntrackRow(line string) bool {
	return strings.HasPrefix(line, "tcp") || strings.HasPrefix(line, "udp")
}

func thousands(n int) string {
	switch {
	case n >= 1000000 && n%1000000 == 0:
		return fmt.Sprintf("%dM", n/1000000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// Rows lays the results out as the table: sections in the order of priority.
func (r *Results) Rows(p Plan) []Row {
	var rows []Row
	row := func(key, metric, unit string, better Better, note string) {
		f := r.figs[key]
		if f == nil {
			f = &[2]Figure{}
		}
		rows = append(rows, Row{Metric: metric, Unit: unit, Better: better, Ours: f[0], Theirs: f[1], Note: note})
	}
	head := func(h string) { rows = append(rows, Row{Heading: h}) }

	head("1. Failover time: active's links down (HA link first) + SIGKILL → traffic back; 4 TCP + 4 UDP probes each sending every 10 ms; slowest probe of each kind")
	for _, s := range p.Failover {
		set := fmt.Sprintf("%s: nettimeout %s | advert_int %s", s.Label, s.Ours, s.Theirs)
		row(FailoverKey(s.Label, "udp"), "first UDP reply ("+set+")", "ms", Lower, "")
		row(FailoverKey(s.Label, "tcp"), "first TCP byte echoed ("+set+")", "ms", Lower, "")
		row(FailoverKey(s.Label, "takeover"), "  virtual address up on the new active", "ms", Lower, "")
		row(FailoverKey(s.Label, "reset"), "  TCP probes reset by the takeover (of 4)", "", Lower, "")
		row(FailoverKey(s.Label, "flaps"), "  unplanned role changes per run (flaps)", "", Lower, "")
	}

	head(fmt.Sprintf("2. Connections kept through a failover (links down + SIGKILL), %s: nettimeout %s | advert_int %s", p.Kept.Label, p.Kept.Ours, p.Kept.Theirs))
	for _, n := range p.KeptN {
		row(KeptKey(n), fmt.Sprintf("kept of %d connections (64 B every %v each)", n, keptInterval(n)), "conns", Higher, "")
	}

	head(fmt.Sprintf("3. Mirror throughput and lag (defaults: nettimeout %s | advert_int %s): new short flows through the virtual for %v (TCP: connect, 1-byte echo, reset; UDP: one datagram and its echo)", p.Failover[0].Ours, p.Failover[0].Theirs, p.RateDur))
	for _, proto := range []uint8{6, 17} {
		name := strings.ToUpper(protoName(proto))
		for _, t := range p.RateTargets {
			k := func(w string) string { return RateKey(proto, t, w) }
			row(k("rate"), fmt.Sprintf("%s new flows/s achieved (target %s/s)", name, thousands(t)), "/s", Higher, "")
			row(k("mirrored"), "  of them on the standby (kernel | external cache)", "%", Higher, "")
			row(k("p50"), "  lag p50, creation on active → standby (count polled every 20 ms)", "ms", Lower, "")
			row(k("p99"), "  lag p99, same method", "ms", Lower, "")
			row(k("xp50"), "  lag p50, exact per entry kernel → kernel (ours only)", "ms", Lower, "")
			row(k("xp99"), "  lag p99, exact per entry kernel → kernel (ours only)", "ms", Lower, "")
		}
	}

	head(fmt.Sprintf("3b. The daemon's own ceiling (ours only; the generator limits section 3): established TCP entries created in the active's kernel through ctnetlink for %v, each expiring after %d s; CPU covers its new and destroy events on both sides", p.RateDur, feedLifetime))
	// The rows of one feed; the steady feed's also give the lag's max.
	feedRows := func(k func(string) string, title string, withMax bool) {
		row(k("rate"), title, "/s", Higher, "")
		row(k("mirrored"), "  of them in the standby's kernel", "%", Higher, "")
		row(k("xp50"), "  lag p50, exact per entry kernel → kernel", "ms", Lower, "")
		row(k("xp99"), "  lag p99, exact per entry kernel → kernel", "ms", Lower, "")
		if withMax {
			row(k("xmax"), "  lag max, exact per entry kernel → kernel", "ms", Lower, "")
		}
		row(k("cpu-active"), "  CPU per mirrored flow, active (event in, stream out; destroy too)", "µs", Lower, "")
		row(k("cpu-active-user"), "    of which in user space (the daemon's own code)", "µs", Lower, "")
		row(k("cpu-standby"), "  CPU per mirrored flow, standby (stream in, kernel inject and delete)", "µs", Lower, "")
		row(k("cpu-standby-user"), "    of which in user space", "µs", Lower, "")
	}
	for _, t := range p.FeedTargets {
		target := "as fast as one netlink socket goes"
		if t > 0 {
			target = "target " + thousands(t) + "/s"
		}
		feedRows(func(w string) string { return FeedKey(t, w) }, fmt.Sprintf("entries/s fed (%s)", target), false)
	}
	feedRows(SteadyKey, fmt.Sprintf("steady feed: entries/s fed for %v (target %s/s), the kernel's garbage collector and digests at work", p.SteadyDur, thousands(p.SteadyTarget)), true)

	head(fmt.Sprintf("4. Full sync (defaults): a standby that joins late (daemon restarted, kernel table emptied) until it holds every entry of the active (bound %v)", syncBound))
	for _, n := range p.SyncN {
		row(SyncKey(n, "resync"), fmt.Sprintf("%s entries: standby holds all (ours: kernel | theirs: external cache)", thousands(n)), "s", Lower, "")
		row(SyncKey(n, "total"), fmt.Sprintf("%s entries: standby kernel holds all (theirs: resync + conntrackd -c)", thousands(n)), "s", Lower, "")
	}
	big := p.SyncN[len(p.SyncN)-1]
	row(CeilingKey("alone", "time"), fmt.Sprintf("%s entries, the standby's own ceiling: alone in its kernel as on a machine of its own, fed directly (BenchmarkStandbyFullSync)", thousands(big)), "s", Lower, "")
	row(CeilingKey("alone", "cpu"), "  CPU per entry (receiver, injector, and the feeding sender in the same process)", "µs", Lower, "")
	row(CeilingKey("listener-elsewhere", "time"), "  the same beside an event listener in another namespace, as the lab's standby is", "s", Lower, "")

	head("5. Cost of the mirroring daemons (applianced | conntrackd), CPU = utime+stime from /proc/PID/stat; user space = utime (the rest is the kernel's work in their system calls)")
	for _, proto := range []uint8{6, 17} {
		t := p.RateTargets[len(p.RateTargets)-1]
		name := strings.ToUpper(protoName(proto))
		row(RateKey(proto, t, "cpu-active"), fmt.Sprintf("CPU per new %s flow, active (burst at target %s/s)", name, thousands(t)), "µs", Lower, "")
		row(RateKey(proto, t, "cpu-active-user"), "  of which in user space", "µs", Lower, "")
		row(RateKey(proto, t, "cpu-standby"), fmt.Sprintf("CPU per new %s flow, standby", name), "µs", Lower, "")
		row(RateKey(proto, t, "cpu-standby-user"), "  of which in user space", "µs", Lower, "")
	}
	row(SyncKey(big, "cpu-active"), fmt.Sprintf("CPU per entry of a %s full sync, active", thousands(big)), "µs", Lower, "")
	row(SyncKey(big, "cpu-active-user"), "  of which in user space", "µs", Lower, "")
	row(SyncKey(big, "cpu-standby"), fmt.Sprintf("CPU per entry of a %s full sync, standby (theirs: incl. commit)", thousands(big)), "µs", Lower, "")
	row(SyncKey(big, "cpu-standby-user"), "  of which in user space", "µs", Lower, "")
	row(SyncKey(big, "rss-active"), fmt.Sprintf("RSS with %s mirrored entries, active", thousands(big)), "MB", Lower, "")
	row(SyncKey(big, "rss-standby"), fmt.Sprintf("RSS with %s mirrored entries, standby", thousands(big)), "MB", Lower, "")
	row(SyncKey(big, "rss-active-per"), "  RSS per entry over the idle daemon, active", "B", Lower, "")
	row(SyncKey(big, "rss-standby-per"), "  RSS per entry over the idle daemon, standby", "B", Lower, "")

	head(fmt.Sprintf("6. Listing %s entries on the active: ours `tmsh show sys connection type mirror` | theirs `conntrack -L`", thousands(big)))
	row(ShellKey("first"), "time to the first row", "ms", Lower, "")
	row(ShellKey("last"), "time to the last row", "s", Lower, "")
	row(ShellKey("peak"), "peak RSS of the listing command", "MB", Lower, "")
	row(ShellKey("daemon"), "  daemon RSS growth while listing (ours only)", "MB", Lower, "")
	row(ShellKey("rows"), "  rows listed", "", Higher, "")

	return rows
}
