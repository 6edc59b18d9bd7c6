package labnet

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// BuildBinaries builds applianced and tmsh from the module the caller runs in into a new
// world-readable temporary folder (tmsh may be a test user's login shell), and returns that
// folder, which the caller removes, and the module's root.
func BuildBinaries(prefix string) (dir, moduleRoot string, err error) {
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		return "", "", err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", "", err
	}
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", "", fmt.Errorf("find module root: %w", err)
	}
	moduleRoot = strings.TrimSpace(string(root))
	for _, p := range []string{"appliance/cmd/applianced", "shell/cmd/tmsh"} {
		cmd := exec.Command("go", "build", "-o", dir, "./"+p)
		cmd.Dir = moduleRoot
		if p == "shell/cmd/tmsh" {
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make builds it
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("build %s: %w\n%s", p, err, out)
		}
	}
	return dir, moduleRoot, nil
}

// RequireRoot fails a test that needs root when it runs without: a skipped end-to-end test
// proves nothing. Only `go test -short` outside CI leaves it out. what names the test and
// what it needs root for.
func RequireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip(what + " needs root; left out by -short")
	}
	t.Fatal(what + " needs root; run as root, or with -short to leave it out")
}
