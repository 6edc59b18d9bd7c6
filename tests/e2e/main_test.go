// Package e2e holds the end-to-end tests: two appliances in network namespaces, configured
// through tmsh, carrying real TCP connections through the kernel.
package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/openappliance/appliance/tests/labnet"
)

// binDir holds applianced and tmsh, built once for the package.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, _, err := labnet.BuildBinaries("appliance-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	return m.Run()
}

// requireRoot fails without root (see labnet.RequireRoot).
func requireRoot(t *testing.T) {
	t.Helper()
	labnet.RequireRoot(t, "end-to-end test (network namespaces)")
}

func binPath(name string) string { return filepath.Join(binDir, name) }
