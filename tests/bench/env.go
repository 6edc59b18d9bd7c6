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

const ctMaxPath = "/proc/sys/net/netfilter/nf_conntrack_max"

// ctMaxSaved keeps the value RaiseConntrackMax replaced until it is put back, so that the
// next run puts it back if this one was killed first (see RestoreConntrackMax).
const ctMaxSaved = "/run/appliance-bench.nf_conntrack_max"

// RestoreConntrackMax puts back the nf_conntrack_max that a killed run left raised, if any.
// The caller holds the bench lock.
func RestoreConntrackMax() (restored string, err error) {
	data, err := os.ReadFile(ctMaxSaved)
	if os.IsNotExist(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	old := strings.TrimSpace(string(data))
	if _, err := strconv.Atoi(old); err != nil {
		return "", fmt.Errorf("%s: %q is not a number", ctMaxSaved, old)
	}
	if err := os.WriteFile(ctMaxPath, []byte(old), 0o644); err != nil {
		return "", err
	}
	return old, os.Remove(ctMaxSaved)
}

// RaiseConntrackMax makes net.netfilter.nf_conntrack_max at least n and returns a function
// that puts the old value back. The limit is global (read-only inside other namespaces)
// but applies to each namespace's own count, so raising it lets a lab namespace hold a
// million entries without touching the host's own table.
func RaiseConntrackMax(n int) (restore func(), err error) {
	data, err := os.ReadFile(ctMaxPath)
	if err != nil {
		return func() {}, err
	}
	old := strings.TrimSpace(string(data))
	cur, err := strconv.Atoi(old)
	if err != nil {
		return func() {}, err
	}
	if cur >= n {
		return func() {}, nil
	}
	if err := os.WriteFile(ctMaxSaved, []byte(old), 0o644); err != nil {
		return func() {}, err
	}
	if err := os.WriteFile(ctMaxPath, []byte(strconv.Itoa(n)), 0o644); err != nil {
		os.Remove(ctMaxSaved)
		return func() {}, fmt.Errorf("raise nf_conntrack_max to %d: %w", n, err)
	}
	return func() {
		os.WriteFile(ctMaxPath, []byte(old), 0o644)
		os.Remove(ctMaxSaved)
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
