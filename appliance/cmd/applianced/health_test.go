package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recorder keeps what the loop told systemd.
type recorder struct {
	mu     sync.Mutex
	states []string
}

func (r *recorder) notify(s string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states = append(r.states, s)
	return nil
}

func (r *recorder) count(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, x := range r.states {
		if x == s {
			n++
		}
	}
	return n
}

func (r *recorder) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.states) == 0 {
		return ""
	}
	return r.states[len(r.states)-1]
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestHealthLoop: READY=1 only once the probe passes, WATCHDOG=1 only while it passes,
// STOPPING=1 and a return when the context ends.
func TestHealthLoop(t *testing.T) {
	var healthy atomic.Bool
	probe := func(context.Context) error {
		if healthy.Load() {
			return nil
		}
		return errors.New("not yet")
	}
	var rec recorder
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		healthLoop(ctx, probe, rec.notify, 30*time.Millisecond, slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("health loop did not end with its context")
		}
	})

	time.Sleep(50 * time.Millisecond)
	if rec.last() != "" {
		t.Fatalf("told systemd %q before the probe passed", rec.last())
	}
	healthy.Store(true)
	waitFor(t, "READY=1 then WATCHDOG=1", func() bool { return rec.count("READY=1") == 1 && rec.count("WATCHDOG=1") >= 2 })

	healthy.Store(false)
	time.Sleep(30 * time.Millisecond) // a ping may have been under way
	pings := rec.count("WATCHDOG=1")
	time.Sleep(100 * time.Millisecond)
	if got := rec.count("WATCHDOG=1"); got != pings {
		t.Errorf("%d watchdog pings while the probe failed", got-pings)
	}
	healthy.Store(true)
	waitFor(t, "pings again", func() bool { return rec.count("WATCHDOG=1") > pings })

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("health loop did not end with its context")
	}
	if rec.last() != "STOPPING=1" || rec.count("READY=1") != 1 {
		t.Errorf("states %v: want one READY=1 and STOPPING=1 last", rec.states)
	}
}

// TestSdNotifyWiring: sdNotify and systemdWatchdog talk systemd's protocol ($NOTIFY_SOCKET,
// $WATCHDOG_USEC) through go-systemd.
func TestSdNotifyWiring(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "3000000")
	t.Setenv("WATCHDOG_PID", "")
	os.Unsetenv("WATCHDOG_PID")
	if d, err := systemdWatchdog(); err != nil || d != 3*time.Second {
		t.Fatalf("systemdWatchdog = %v, %v; want 3s", d, err)
	}
	if err := sdNotify("READY=1"); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:n]); got != "READY=1" {
		t.Errorf("datagram %q, want READY=1", got)
	}
}
