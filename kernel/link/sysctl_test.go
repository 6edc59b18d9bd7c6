package link

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"testing"

	"github.com/openappliance/appliance/kernel/internal/nstest"
)

func TestSysctlPath(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		bad        bool
	}{
		{name: "net.ipv4.ip_forward", want: "/proc/sys/net/ipv4/ip_forward"},
		{name: "net/ipv4/ip_forward", want: "/proc/sys/net/ipv4/ip_forward"},
		{name: "/proc/sys/net/ipv4/ip_forward", want: "/proc/sys/net/ipv4/ip_forward"},
		{name: "net.ipv4.conf.eth0/100.rp_filter", want: "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"},
		{name: "net/ipv4/conf/eth0.100/rp_filter", want: "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"},
		{name: "", bad: true},
		{name: "net/../../etc/passwd", bad: true},
		{name: "net..ipv4", bad: true},
		{name: "/net/ipv4/ip_forward", bad: true},
		{name: "net/ipv4/", bad: true},
	} {
		got, err := sysctlPath(tc.name)
		if tc.bad {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("sysctlPath(%q) = %q, %v; want ErrInvalidArgument", tc.name, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("sysctlPath(%q) = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

// flip01 returns "1" for "0" and "0" otherwise.
func flip01(v string) string {
	if v == "0" {
		return "1"
	}
	return "0"
}

// TestSysctlNamespace proves that SetSysctl and GetSysctl act on the network namespace of
// the calling thread: on a locked thread inside the namespace (as in ns.Do) they change the
// namespace's value, seen from `ip netns exec`, and leave the host's alone.
func TestSysctlNamespace(t *testing.T) {
	ns := nstest.New(t, "lnkSys")
	for _, name := range []string{"net.ipv4.ip_forward", "net.netfilter.nf_conntrack_tcp_loose"} {
		t.Run(name, func(t *testing.T) {
			host, err := GetSysctl(name)
			if err != nil {
				t.Fatalf("host: %v", err)
			}
			// Should the namespace not be honoured, put the host back.
			t.Cleanup(func() {
				if got, err := GetSysctl(name); err == nil && got != host {
					t.Errorf("host %s changed to %s; restoring %s", name, got, host)
					_ = SetSysctl(name, host)
				}
			})
			want := flip01(host)
			ns.MustDo(func() error {
				for range 2 { // the second call finds the value there
					if err := SetSysctl(name, want); err != nil {
						return err
					}
				}
				got, err := GetSysctl(name)
				if err != nil {
					return err
				}
				if got != want {
					return fmt.Errorf("GetSysctl(%s) in namespace = %q, want %q", name, got, want)
				}
				return nil
			})
			path := "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
			if got := strings.TrimSpace(ns.MustRun("cat", path)); got != want {
				t.Errorf("ip netns exec %s cat %s = %q, want %q", ns.Name, path, got, want)
			}
			if got, err := GetSysctl(name); err != nil || got != host {
				t.Errorf("host %s = %q, %v; want it unchanged at %q", name, got, err, host)
			}
		})
	}
}

// helperEnv makes the test binary, started again under `ip netns exec`, act as a daemon
// that sets one sysctl: its value is NAME=VALUE.
const helperEnv = "LINK_TEST_SET_SYSCTL"

// TestSysctlIPNetnsExec proves the other way a daemon runs: a whole process started with
// `ip netns exec NS` (every thread in NS) sets NS's value, and not the host's.
func TestSysctlIPNetnsExec(t *testing.T) {
	ns := nstest.New(t, "lnkSysX")
	const name = "net.ipv4.ip_forward"
	host, err := GetSysctl(name)
	if err != nil {
		t.Fatal(err)
	}
	want := flip01(host)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ns.MustRun("env", helperEnv+"="+name+"="+want, exe, "-test.run=^TestSysctlHelperProcess$", "-test.count=1")
	if got := strings.TrimSpace(ns.MustRun("cat", "/proc/sys/net/ipv4/ip_forward")); got != want {
		t.Errorf("namespace ip_forward = %q, want %q", got, want)
	}
	if got, err := GetSysctl(name); err != nil || got != host {
		t.Errorf("host ip_forward = %q, %v; want it unchanged at %q", got, err, host)
		_ = SetSysctl(name, host)
	}
}

// TestSysctlHelperProcess is the daemon stand-in of TestSysctlIPNetnsExec; run on its
// own it does nothing.
func TestSysctlHelperProcess(t *testing.T) {
	arg := os.Getenv(helperEnv)
	if arg == "" {
		return
	}
	name, value, _ := strings.Cut(arg, "=")
	if err := SetSysctl(name, value); err != nil {
		t.Fatal(err)
	}
}

func TestSysctlMissing(t *testing.T) {
	nstest.RequireRoot(t)
	_, err := GetSysctl("net.ipv4.no_such_sysctl")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("GetSysctl(missing) err = %v, want fs.ErrNotExist", err)
	}
	if err := SetSysctl("net.ipv4.no_such_sysctl", "1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("SetSysctl(missing) err = %v, want fs.ErrNotExist", err)
	}
}
