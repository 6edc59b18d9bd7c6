package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// CleanupStale removes namespaces a bench run killed without its cleanup left behind
// (those named PREFIX-*), after killing the processes in them. The caller holds the bench
// lock, so no other bench run owns them.
func CleanupStale(prefixes ...string) ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var removed []string
	for _, e := range entries {
		name := e.Name()
		match := false
		for _, p := range prefixes {
			if strings.HasPrefix(name, p+"-") {
				match = true
			}
		}
		if !match {
			continue
		}
		if err := killNS(name, 10*time.Second); err != nil {
			return removed, err
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			return removed, fmt.Errorf("ip netns del %s: %w: %s", name, err, out)
		}
		removed = append(removed, name)
	}
	return removed, nil
}

// conntrackLimit is a global conntrack sysctl that the bench raises for a million entries,
// with the file that keeps its old value until it is put back, so that the next run puts
// it back if this one was killed first (see RestoreConntrackMax).
type conntrackLimit struct{ name, path, saved string }

func conntrackLimits() []conntrackLimit {
	var ls []conntrackLimit
	for _, name := range []string{"nf_conntrack_max", "nf_conntrack_buckets"} {
		ls = append(ls, conntrackLimit{name, "/proc/sys/net/netfilter/" + name, "/run/appliance-bench." + name})
	}
	return ls
}

// RestoreConntrackMax puts back the nf_conntrack_max and nf_conntrack_buckets that a killed
// run left raised, if any, and says what it put back. The caller holds the bench lock.
func RestoreConntrackMax() (restored string, err error) {
	var done []string
	for _, l := range conntrackLimits() {
		data, err := os.ReadFile(l.saved)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return strings.Join(done, " "), err
		}
		old := strings.TrimSpace(string(data))
		if _, err := strconv.Atoi(old); err != nil {
			return strings.Join(done, " "), fmt.Errorf("%s: %q is not a number", l.saved, old)
		}
		if err := os.WriteFile(l.path, []byte(old), 0o644); err != nil {
			return strings.Join(done, " "), err
		}
		done = append(done, l.name+"="+old)
		if err := os.Remove(l.saved); err != nil {
			return strings.Join(done, " "), err
		}
	}
	return strings.Join(done, " "), nil
}

// RaiseConntrackMax makes net.netfilter.nf_conntrack_max at least n, and
// nf_conntrack_buckets at least n too, and returns a function that puts the old values
// back. Both are global (read-only inside other namespaces): the limit applies to each
// namespace's own count, so raising it lets a lab namespace hold a million entries without
// touching the host's own table, while the hash table is shared by every namespace. The
// lab's two devices share one kernel, so they fill one hash table with twice the entries
// two real devices would each hold; at the default 262144 buckets a million-entry sync
// spends a third of its time walking hash chains (perf: __nf_conntrack_find_get,
// nf_conntrack_hash_check_insert), for conntrackd's commit as for ours. A box meant for a
// million connections is sized so too (see the README).
func RaiseConntrackMax(n int) (restore func(), err error) {
	var undo []func()
	restore = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	for _, l := range conntrackLimits() {
		u, err := raiseLimit(l, n)
		if err != nil {
			restore()
			return func() {}, err
		}
		undo = append(undo, u)
	}
	return restore, nil
}

func raiseLimit(l conntrackLimit, n int) (undo func(), err error) {
	data, err := os.ReadFile(l.path)
	if err != nil {
		return nil, err
	}
	old := strings.TrimSpace(string(data))
	cur, err := strconv.Atoi(old)
	if err != nil {
		return nil, err
	}
	if cur >= n {
		return func() {}, nil
	}
	if err := os.WriteFile(l.saved, []byte(old), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(l.path, []byte(strconv.Itoa(n)), 0o644); err != nil {
		os.Remove(l.saved)
		return nil, fmt.Errorf("raise %s to %d: %w", l.name, n, err)
	}
	return func() {
		os.WriteFile(l.path, []byte(old), 0o644)
		os.Remove(l.saved)
	}, nil
}

// Describe says what the bench ran on, for the results file.
func Describe(ctx context.Context) string {
	var parts []string
	if out, err := run(ctx, 5*time.Second, "uname", "-r"); err == nil {
		parts = append(parts, "Linux "+strings.TrimSpace(out))
	}
	parts = append(parts, fmt.Sprintf("%d cores", runtime.NumCPU()))
	if out, err := run(ctx, 5*time.Second, "conntrackd", "-v"); err == nil {
		parts = append(parts, strings.TrimSuffix(firstLine(out), "."))
	}
	if out, err := exec.CommandContext(ctx, "keepalived", "-v").CombinedOutput(); err == nil {
		parts = append(parts, strings.TrimSpace(firstLine(string(out))))
	}
	parts = append(parts, runtime.Version())
	return strings.Join(parts, "; ")
}
