package e2e

import (
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/openappliance/appliance/tests/labnet"
)

// fastestSafeTimeout is failover.nettimeout at the fastest setting that is safe on a 2-core
// machine saturated by other work: heartbeats every 5 ms (the interval's floor), the peer
// failed after 20 ms of silence, four heartbeats. It rests on the heartbeat pacer process
// (failover.RunPacerProcess), real-time in all its threads. A real-time thread of the daemon
// was not enough: it waits for the Go scheduler after each sleep, and at 0.03 ran 48 to 130
// ms late, each time matching a "peer heartbeat lost" on the other device. With the process,
// 0.03 passed 2 runs of 2, and 0.02 passed 9 runs of 9 (first 1, then 8 in a row).
const fastestSafeTimeout = "0.02"

// saturation is how long TestFaultSaturatedCPU keeps the cores busy.
const saturation = 60 * time.Second

// stateChanges counts the failover state changes in d's log.
func stateChanges(t *testing.T, d *labnet.Device) int {
	t.Helper()
	data, err := os.ReadFile(d.Log)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), `msg="failover state change"`)
}

// startHogs starts n processes that spin, at normal priority, and returns a func that ends
// them; the test's cleanup ends them too.
func startHogs(t *testing.T, n int) (stop func()) {
	t.Helper()
	var procs []*exec.Cmd
	stop = func() {
		for _, p := range procs {
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			_ = p.Wait()
		}
		procs = nil
	}
	t.Cleanup(stop)
	for range n {
		p := exec.Command("sh", "-c", "while :; do :; done")
		p.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
	}
	return stop
}

// TestFaultSaturatedCPU: at the fastest safe setting, with every core saturated by other work for a
// minute (twice as many spinning processes as cores, at the daemons' own priority) and the
// long-lived connections flowing, not one failover happens and every connection carries on.
// The heartbeats go out from a real-time thread, and a device that finds its peer silent
// first takes in the heartbeats that arrived while it was starved.
func TestFaultSaturatedCPU(t *testing.T) {
	l := newLab(t)
	l.setup()
	for _, d := range l.Devices {
		l.tmsh(d, "modify sys db failover.nettimeout value "+fastestSafeTimeout)
	}
	echo := l.startEcho()
	defer echo.Close()
	flows := l.openFlows(flowCount)
	active, standby := l.roles()
	l.waitTablesEqual(active, standby, flowCount)

	before := map[string]int{}
	for _, d := range l.Devices {
		before[d.Name] = stateChanges(t, d)
	}
	hogs := 2 * runtime.NumCPU()
	stop := startHogs(t, hogs)
	start := time.Now()
	for time.Since(start) < saturation {
		time.Sleep(5 * time.Second)
		for i, f := range flows {
			if err := f.Err(); err != nil {
				stop()
				t.Fatalf("connection %d failed under load after %v: %v", i, time.Since(start).Round(time.Second), err)
			}
		}
	}
	stop()

	for _, d := range l.Devices {
		if data, err := os.ReadFile(d.Log); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				if strings.Contains(line, "ran late") {
					t.Logf("%s: %s", d.Name, line)
				}
			}
		}
		if n := stateChanges(t, d) - before[d.Name]; n != 0 {
			t.Errorf("%s changed failover state %d times with the CPU saturated, want 0", d.Name, n)
		}
	}
	if got := l.failoverState(active); got != "ACTIVE" {
		t.Errorf("%s is %s after the saturation, want ACTIVE", active.Name, got)
	}
	l.progressing(flows, "the saturation")
	t.Logf("%v with %d spinning processes on %d cores at failover.nettimeout %s: no failover, %d connections carrying data",
		saturation, hogs, runtime.NumCPU(), fastestSafeTimeout, len(flows))
}
