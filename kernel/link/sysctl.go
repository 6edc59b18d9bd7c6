package link

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// procSys is where the kernel exposes sysctls.
const procSys = "/proc/sys"

// SetSysctl sets the sysctl name to value, and writes nothing when it already has that
// value (compared field by field, so "32768 60999" matches the kernel's "32768\t60999"):
// writing some sysctls has side effects even when the value does not change.
//
// name is either a path under /proc/sys ("net/ipv4/ip_forward") or in sysctl(8)'s dotted
// form ("net.ipv4.ip_forward"). As in sysctl(8), the first separator decides: when it is
// a dot, dots and slashes swap, so an interface name with a dot is written with a slash
// ("net.ipv4.conf.eth0/100.rp_filter" is net/ipv4/conf/eth0.100/rp_filter).
//
// The network namespace is the calling thread's: the kernel resolves /proc/sys/net
// against current->nsproxy->net_ns when the file is opened (net_ctl_header_lookup and
// net_ctl_is_seen in net/sysctl_net.c), not against the namespace of the process or of
// the /proc mount. So a daemon started with `ip netns exec NS` sets NS's value, and so does
// a locked thread that entered NS with setns(2) (TestSysctlNamespace checks both). A
// sysctl that does not exist gives an error that wraps fs.ErrNotExist.
func SetSysctl(name, value string) error {
	path, err := sysctlPath(name)
	if err != nil {
		return fmt.Errorf("set sysctl %s: %w", name, err)
	}
	cur, err := readSysctl(path)
	if err != nil {
		return fmt.Errorf("set sysctl %s: %w", name, err)
	}
	if sameSysctlValue(cur, value) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("set sysctl %s: %w", name, err)
	}
	// One write: a sysctl handler parses each write(2) on its own.
	_, werr := f.WriteString(value)
	cerr := f.Close()
	if werr != nil {
		return fmt.Errorf("set sysctl %s to %q: %w", name, value, werr)
	}
	if cerr != nil {
		return fmt.Errorf("set sysctl %s to %q: %w", name, value, cerr)
	}
	return nil
}

// GetSysctl returns the value of the sysctl name (named as for SetSysctl) in the calling
// thread's network namespace, without the trailing newline. Values of several fields keep
// the kernel's separators (often a tab).
func GetSysctl(name string) (string, error) {
	path, err := sysctlPath(name)
	if err != nil {
		return "", fmt.Errorf("get sysctl %s: %w", name, err)
	}
	v, err := readSysctl(path)
	if err != nil {
		return "", fmt.Errorf("get sysctl %s: %w", name, err)
	}
	return v, nil
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(b), "\n"), nil
}

func sameSysctlValue(a, b string) bool {
	fa, fb := strings.Fields(a), strings.Fields(b)
	if len(fa) != len(fb) {
		return false
	}
	for i := range fa {
		if fa[i] != fb[i] {
			return false
		}
	}
	return true
}

// sysctlPath turns a sysctl name into its file under /proc/sys, refusing names that would
// leave /proc/sys or name a directory.
func sysctlPath(name string) (string, error) {
	n := strings.TrimPrefix(name, procSys+"/")
	if i := strings.IndexAny(n, "./"); i >= 0 && n[i] == '.' {
		n = strings.Map(func(r rune) rune {
			switch r {
			case '.':
				return '/'
			case '/':
				return '.'
			}
			return r
		}, n)
	}
	if n == "" {
		return "", fmt.Errorf("empty sysctl name: %w", ErrInvalidArgument)
	}
	for _, c := range strings.Split(n, "/") {
		if c == "" || c == "." || c == ".." {
			return "", fmt.Errorf("bad sysctl name %q: %w", name, ErrInvalidArgument)
		}
	}
	return filepath.Join(procSys, n), nil
}
