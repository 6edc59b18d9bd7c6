package ssh

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openappliance/appliance/appliance/api"
)

// TestInstallStaged runs etc/install.sh with DESTDIR (files only, no accounts or services)
// and checks what it lays down agrees with the code: the unit starts the daemon on the
// socket tmsh dials by default, in the unit's RuntimeDirectory, with the watchdog on.
func TestInstallStaged(t *testing.T) {
	dest := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", filepath.Join(moduleRoot, "etc", "install.sh"))
	cmd.Env = append(os.Environ(), "BIN="+binDir, "DESTDIR="+dest, "PREFIX=/usr/local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install.sh: %v\n%s", err, out)
	}
	for _, f := range []string{"usr/local/sbin/applianced", "usr/local/bin/tmsh"} {
		if fi, err := os.Stat(filepath.Join(dest, f)); err != nil || fi.Mode().Perm()&0o111 == 0 {
			t.Errorf("%s: not installed as an executable (%v)", f, err)
		}
	}
	unit, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system/applianced.service"))
	if err != nil {
		t.Fatal(err)
	}
	runtimeDir := strings.TrimPrefix(filepath.Dir(api.DefaultSocket), "/run/")
	for _, want := range []string{
		"Type=notify",
		"WatchdogSec=",
		"RuntimeDirectory=" + runtimeDir + "\n",
		"ExecStart=/usr/local/sbin/applianced ",
		"--socket " + api.DefaultSocket + " ",
		"--socket-group appliance",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("applianced.service lacks %q:\n%s", want, unit)
		}
	}
	if _, err := os.Stat(filepath.Join(dest, "etc/ssh/sshd_config.d/appliance.conf")); err != nil {
		t.Errorf("sshd drop-in: %v", err)
	}
	// systemd's own check, where systemd is installed; "not executable" is about the
	// staged path, which is not where the unit will run it.
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		out, _ := exec.CommandContext(ctx, "systemd-analyze", "verify", filepath.Join(dest, "etc/systemd/system/applianced.service")).CombinedOutput()
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if line != "" && !strings.Contains(line, "is not executable") {
				t.Errorf("systemd-analyze verify: %s", line)
			}
		}
	}
}
