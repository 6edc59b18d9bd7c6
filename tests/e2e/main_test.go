// Package e2e holds the end-to-end tests: two appliances in network namespaces, configured
// through tmsh, carrying real TCP connections through the kernel.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// binDir holds applianced and tmsh, built once for the package.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "appliance-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "find module root:", err)
		return 1
	}
	for _, p := range []string{"appliance/cmd/applianced", "shell/cmd/tmsh"} {
		cmd := exec.Command("go", "build", "-o", dir, "./"+p)
		cmd.Dir = strings.TrimSpace(string(root))
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", p, err, out)
			return 1
		}
	}
	binDir = dir
	return m.Run()
}

// requireRoot skips without root, except under CI=true where it fails: CI runs as root, and
// a skipped end-to-end test proves nothing.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("end-to-end test needs root; CI runs as root, so this must not skip")
	}
	t.Skip("end-to-end test: run as root")
}

func binPath(name string) string { return filepath.Join(binDir, name) }
