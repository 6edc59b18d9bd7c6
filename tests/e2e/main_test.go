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

// requireRoot fails without root: a skipped end-to-end test proves nothing. Only
// `go test -short` (make test-unit) leaves it out.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip("end-to-end test needs root; left out by -short")
	}
	t.Fatal("end-to-end test needs root (network namespaces); run as root, or with -short to leave it out")
}

func binPath(name string) string { return filepath.Join(binDir, name) }
