package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CeilingTest is the test binary of appliance/daemon (go test -c), whose
// BenchmarkStandbyFullSync gives the standby's own ceiling for a full sync; make bench
// builds it into the bin folder.
const CeilingTest = "daemon.test"

// CeilingKey names the figures of the standby's own ceiling: mode is "alone" or
// "listener-elsewhere" (BenchmarkStandbyFullSync's), what "time" or "cpu".
func CeilingKey(mode, what string) string { return "ceiling/" + mode + "/" + what }

// measureCeiling runs BenchmarkStandbyFullSync for the largest full sync, with no lab up:
// the receiver, the injector and the standby's kernel as on a machine of their own, fed a
// made-up snapshot over loopback TCP. In the lab the standby shares its kernel with the
// active, whose event listener makes the kernel build an event for every injected entry
// (netlink_has_listeners is machine-wide); the benchmark's "listener-elsewhere" run shows
// that cost alone.
func measureCeiling(ctx context.Context, c Config, p Plan, res *Results, logf logFunc) {
	bin := filepath.Join(c.Bin, CeilingTest)
	if _, err := os.Stat(bin); err != nil {
		logf("standby ceiling: %v (make bench builds it: go test -c -o %s ./appliance/daemon)", err, bin)
		return
	}
	n := p.SyncN[len(p.SyncN)-1]
	runs := p.SyncRuns[len(p.SyncRuns)-1]
	// The labs' namespaces are gone, but the kernel frees their entries in the background,
	// which would take a core from the first run.
	if left, err := waitConntrackFreed(ctx, 2*time.Minute); err != nil {
		logf("standby ceiling: %d conntrack entries of deleted namespaces still allocated: %v", left, err)
	}
	cmd := exec.CommandContext(ctx, bin, "-test.run", "^$", "-test.bench", "^BenchmarkStandbyFullSync$",
		"-test.benchtime", fmt.Sprintf("%dx", n), "-test.count", strconv.Itoa(runs))
	// Named so that CleanupStale finds them if this run is killed before the benchmark's
	// cleanup; and the benchmark does not outlive the bench.
	cmd.Env = append(os.Environ(), "APPLIANCE_TEST_NETNS_PREFIX="+CeilingPrefix)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	figs, perr := parseCeiling(out)
	for _, f := range figs {
		logf("standby ceiling %s: %d entries in %.3f s, cpu %.2f µs/entry", f.mode, n, f.nsPerOp*float64(n)/1e9, f.cpuNs/1000)
		res.Add(CeilingKey(f.mode, "time"), "ours", f.nsPerOp*float64(n)/1e9)
		res.Add(CeilingKey(f.mode, "cpu"), "ours", f.cpuNs/1000)
	}
	if err != nil || perr != nil || len(figs) == 0 {
		logf("standby ceiling: %v %v\n%s", err, perr, out)
		res.Fail(CeilingKey("alone", "time"), "ours")
	}
}

// waitConntrackFreed waits until the kernel holds few conntrack entries, in any namespace
// (the nf_conntrack slab's objects in use), or they stop going down; it returns how many
// are left.
func waitConntrackFreed(ctx context.Context, bound time.Duration) (int, error) {
	const few = 10000
	deadline := time.Now().Add(bound)
	last, since := -1, time.Now()
	for {
		n, err := slabObjects("nf_conntrack")
		if err != nil || n < few {
			return n, err
		}
		if n != last {
			last, since = n, time.Now()
		} else if time.Since(since) > 2*time.Second {
			return n, nil // not going down: they belong to something alive
		}
		if time.Now().After(deadline) {
			return n, fmt.Errorf("not freed within %v", bound)
		}
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// slabObjects returns the objects in use in a slab cache, from /proc/slabinfo.
func slabObjects(cache string) (int, error) {
	data, err := os.ReadFile("/proc/slabinfo")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 1 && fields[0] == cache {
			return strconv.Atoi(fields[1])
		}
	}
	return 0, fmt.Errorf("no slab cache %q in /proc/slabinfo", cache)
}

type ceilingFig struct {
	mode           string
	nsPerOp, cpuNs float64
}

// parseCeiling reads the benchmark's lines, such as
// "BenchmarkStandbyFullSync/alone-2  1000000  4370 ns/op  5023 cpu-ns/flow  228833 flows/s  4.370 s/1M-flows".
func parseCeiling(out []byte) ([]ceilingFig, error) {
	var figs []ceilingFig
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "BenchmarkStandbyFullSync/") {
			continue
		}
		mode := strings.TrimPrefix(fields[0], "BenchmarkStandbyFullSync/")
		if i := strings.LastIndexByte(mode, '-'); i > 0 {
			mode = mode[:i] // the GOMAXPROCS suffix
		}
		f := ceilingFig{mode: mode}
		for i := 2; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				return figs, fmt.Errorf("benchmark line %q: %w", sc.Text(), err)
			}
			switch fields[i+1] {
			case "ns/op":
				f.nsPerOp = v
			case "cpu-ns/flow":
				f.cpuNs = v
			}
		}
		if f.nsPerOp == 0 {
			return figs, fmt.Errorf("benchmark line %q: no ns/op", sc.Text())
		}
		figs = append(figs, f)
	}
	return figs, sc.Err()
}
