// Package ssh tests the way in as an administrator meets it: a real OpenSSH server whose
// users' login shell is tmsh, in front of a real applianced, all inside a network
// namespace that the test creates and removes.
package ssh

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// binDir holds applianced and tmsh, built once for the package. It is world-readable:
// tmsh is the test users' login shell.
var (
	binDir     string
	moduleRoot string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "appliance-ssh-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "find module root:", err)
		return 1
	}
	moduleRoot = strings.TrimSpace(string(root))
	for _, p := range []string{"appliance/cmd/applianced", "shell/cmd/tmsh"} {
		cmd := exec.Command("go", "build", "-o", dir, "./"+p)
		cmd.Dir = moduleRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", p, err, out)
			return 1
		}
	}
	binDir = dir
	return m.Run()
}

// requireRoot fails without root: a skipped end-to-end test proves nothing. Only
// `go test -short` outside CI leaves it out.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip("SSH end-to-end test needs root; left out by -short")
	}
	t.Fatal("SSH end-to-end test needs root (network and mount namespaces, sshd); run as root, or with -short to leave it out")
}

// requireTools fails when a program the test drives is missing; .ci/run installs them.
func requireTools(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s is missing (Debian: apt-get install openssh-server openssh-client util-linux iproute2): %v", p, err)
		}
	}
}

func binPath(name string) string { return filepath.Join(binDir, name) }
