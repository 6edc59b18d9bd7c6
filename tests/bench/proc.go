package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/openappliance/appliance/tests/labnet"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100 on every Linux
// architecture Go supports (sysconf(_SC_CLK_TCK)).
const clockTick = 10 * time.Millisecond

// nsPIDs returns the processes whose network namespace is the named one (as `ip netns pids`
// does: by the inode of /proc/PID/ns/net), optionally only those whose command is comm.
func nsPIDs(ns, comm string) ([]int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+ns, &want); err != nil {
		return nil, fmt.Errorf("namespace %s: %w", ns, err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name(), "ns/net"), &st) != nil {
			continue
		}
		if st.Ino != want.Ino || st.Dev != want.Dev {
			continue
		}
		if comm != "" {
			c, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
			if err != nil || strings.TrimSpace(string(c)) != comm {
				continue
			}
		}
		out = append(out, pid)
	}
	return out, nil
}

// killNS sends SIGKILL to every process in the namespace and waits (bounded) until none is
// left. Every process in a bench namespace was started by the bench or by one of its
// processes (a keepalived notify script, a conntrackd it daemonised).
func killNS(ns string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids, err := nsPIDs(ns, "")
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("namespace %s: processes %v still alive after %v", ns, pids, timeout)
		}
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cpuUse is CPU time as the kernel accounts it: User runs the process's own code, Sys is the
// kernel's work in its system calls (for a mirroring daemon, mostly the conntrack and
// socket work it asks for) and in interrupts that hit it.
type cpuUse struct{ User, Sys time.Duration }

func (c cpuUse) Total() time.Duration { return c.User + c.Sys }
func (c cpuUse) Sub(o cpuUse) cpuUse  { return cpuUse{User: c.User - o.User, Sys: c.Sys - o.Sys} }
func (c cpuUse) String() string       { return fmt.Sprintf("%v (user %v)", c.Total(), c.User) }
func (c cpuUse) perItem(n int) (total, user float64) {
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(n) }
	return us(c.Total()), us(c.User)
}

// cpuTime returns the CPU time a process has used.
func cpuTime(pid int) (cpuUse, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return cpuUse{}, err
	}
	ut, st, err := ParseProcStatCPU(string(data))
	if err != nil {
		return cpuUse{}, err
	}
	return cpuUse{User: time.Duration(ut) * clockTick, Sys: time.Duration(st) * clockTick}, nil
}

// cpuTimes sums cpuTime over pids; processes that are gone count as 0.
func cpuTimes(pids []int) cpuUse {
	var total cpuUse
	for _, p := range pids {
		if c, err := cpuTime(p); err == nil {
			total.User += c.User
			total.Sys += c.Sys
		}
	}
	return total
}

// rssKB returns VmRSS of a process in kB.
func rssKB(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return ParseStatusKB(string(data), "VmRSS")
}

// hwmKB returns a process's peak resident memory (VmHWM) in KiB. Unlike the rusage that wait
// returns, it is the process's own: Go starts a child with vfork, and the kernel carries the
// parent's high-water mark into the child's ru_maxrss at exec.
func hwmKB(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return ParseStatusKB(string(data), "VmHWM")
}

// rssSum sums VmRSS over pids in bytes.
func rssSum(pids []int) float64 {
	var total uint64
	for _, p := range pids {
		if kb, err := rssKB(p); err == nil {
			total += kb
		}
	}
	return float64(total) * 1024
}

// ctCount returns the number of conntrack entries in a namespace
// (net.netfilter.nf_conntrack_count, which the kernel resolves by the reader's namespace).
func ctCount(ns string) (int, error) {
	var n int
	err := labnet.Do(ns, func() error {
		data, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		if err != nil {
			return err
		}
		n, err = strconv.Atoi(strings.TrimSpace(string(data)))
		return err
	})
	return n, err
}

// setSysctl writes a sysctl inside a namespace.
func setSysctl(ns, key, value string) error {
	return labnet.Do(ns, func() error {
		path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, ns, err)
		}
		return nil
	})
}

// run runs a command (bounded by timeout and ctx) and returns its stdout; a failure
// carries stderr.
func run(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			err = errors.Join(err, ctx.Err())
		}
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// inNS runs a command inside a namespace (ip netns exec).
func inNS(ctx context.Context, timeout time.Duration, ns string, args ...string) (string, error) {
	return run(ctx, timeout, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// flushConntrack empties a namespace's conntrack table.
func flushConntrack(ctx context.Context, ns string) error {
	_, err := inNS(ctx, 2*time.Minute, ns, "conntrack", "-F")
	return err
}

// poll calls cond every interval until it returns true, an error, or timeout/ctx ends.
func poll(ctx context.Context, timeout, interval time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		last = err
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("timed out after %v waiting for %s: %w", timeout, what, last)
			}
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(interval):
		}
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
