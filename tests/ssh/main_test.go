// Package ssh tests the way in as an administrator meets it: a real OpenSSH server whose
// users' login shell is tmsh, in front of a real applianced, all inside a network
// namespace that the test creates and removes.
package ssh

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/openappliance/appliance/tests/labnet"
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
	dir, root, err := labnet.BuildBinaries("appliance-ssh-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir, moduleRoot = dir, root
	return m.Run()
}

// requireRoot fails without root (see labnet.RequireRoot).
func requireRoot(t *testing.T) {
	t.Helper()
	labnet.RequireRoot(t, "SSH end-to-end test (network and mount namespaces, sshd)")
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
