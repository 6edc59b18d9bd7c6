// Package nstest gives privileged tests a fresh network namespace of their own.
//
// Tests that need root call New; without root they fail (go test -short leaves them out),
// because CI runs as root and a skipped kernel test proves nothing.
package nstest

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

var counter atomic.Uint64 // distinguishes namespaces made by one test binary

// NS is a named network namespace created for one test and deleted by its cleanup.
type NS struct {
	Name string
	t    testing.TB
}

// RequireRoot fails the test when not root: a skipped kernel test proves nothing. Only
// `go test -short` leaves privileged tests out (never under CI=true).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip("privileged test: left out by -short")
	}
	t.Fatal("privileged test needs root (network namespaces); run as root, or with -short to leave it out")
}

// New creates a named namespace ("ip netns add") with loopback up. The name starts with
// prefix and is unique to this process; the namespace is deleted when the test ends.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	RequireRoot(t)
	name := fmt.Sprintf("%s%d-%d", prefix, os.Getpid()%100000, counter.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &NS{Name: name, t: t}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns.MustRun("ip", "link", "set", "lo", "up")
	return ns
}

// Run runs a command inside the namespace and returns its combined output.
func (ns *NS) Run(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s in %s: %w: %s", strings.Join(args, " "), ns.Name, err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (ns *NS) MustRun(args ...string) string {
	ns.t.Helper()
	out, err := ns.Run(args...)
	if err != nil {
		ns.t.Fatal(err)
	}
	return out
}

// Do runs fn on a locked OS thread that has entered the namespace, and puts the thread
// back in its original namespace before unlocking it. Sockets opened inside fn stay
// bound to the namespace after Do returns, so this is how a test dials netlink there.
func (ns *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns.Name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns.Name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter netns %s: %w", ns.Name, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// The thread is in the wrong namespace: never give it back to the runtime.
		panic(fmt.Sprintf("restore netns: %v", err))
	}
	return fnErr
}

// MustDo is Do that fails the test on error.
func (ns *NS) MustDo(fn func() error) {
	ns.t.Helper()
	if err := ns.Do(fn); err != nil {
		ns.t.Fatal(err)
	}
}
