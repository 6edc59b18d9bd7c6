package ssh

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSystemdNotify runs the real applianced as systemd's unit would (Type=notify,
// WatchdogSec=): it must send READY=1 once it serves, WATCHDOG=1 while it is healthy, and
// STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	requireRoot(t)
	requireTools(t, "ip")
	dir := t.TempDir()
	ns := "sshe2e-sd-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { removeNamespace(t, ns) })

	notify := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	cmd := exec.Command("ip", "netns", "exec", ns, binPath("applianced"), "--name", "lb1",
		"--config", filepath.Join(dir, "lb1.toml"), "--socket", filepath.Join(dir, "control.sock"))
	// WatchdogSec=0.6s: pings every 200ms.
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify, "WATCHDOG_USEC=600000")
	logPath := filepath.Join(dir, "applianced.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("applianced log:\n%s", out)
		}
	})

	// read returns the next datagram, failing the test after timeout.
	read := func(timeout time.Duration) string {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(timeout))
		buf := make([]byte, 256)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification within %v: %v", timeout, err)
		}
		return string(buf[:n])
	}
	if got := read(15 * time.Second); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	start := time.Now()
	for i := 0; i < 5; i++ {
		if got := read(2 * time.Second); got != "WATCHDOG=1" {
			t.Fatalf("notification %q, want WATCHDOG=1", got)
		}
	}
	t.Logf("READY=1, then 5 WATCHDOG=1 in %v", time.Since(start).Round(time.Millisecond))

	// The pings come from the health check, not a timer: with its control socket gone
	// (tmsh could no longer reach it) the daemon stops pinging, and systemd would restart it.
	if err := os.Remove(filepath.Join(dir, "control.sock")); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := conn.Read(make([]byte, 256)); err == nil { // one may have been on its way
		conn.SetReadDeadline(time.Now().Add(time.Second))
		if got, err := conn.Read(make([]byte, 256)); err == nil {
			t.Errorf("watchdog pings (%d bytes) go on without a control socket", got)
		}
	}

	cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := read(time.Until(deadline))
		if got == "STOPPING=1" {
			break
		}
		if !strings.HasPrefix(got, "WATCHDOG=1") {
			t.Fatalf("notification %q while stopping, want STOPPING=1", got)
		}
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			t.Errorf("applianced exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("applianced did not exit within 10s of SIGTERM")
	}
}
