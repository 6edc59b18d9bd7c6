package failover

import (
	"errors"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// pair is two devices on loopback with the real clock: lb1 on 127.0.0.1, lb2 on 127.0.0.2.
type pair struct {
	cfg1, cfg2 Config
}

func newPair(t *testing.T, timeout time.Duration) pair {
	a1, a2 := freeAddr(t, "127.0.0.1"), freeAddr(t, "127.0.0.2")
	return pair{
		cfg1: Config{Device: "lb1", Listen: []netip.AddrPort{a1}, Peers: []netip.AddrPort{a2}, Timeout: timeout},
		cfg2: Config{Device: "lb2", Listen: []netip.AddrPort{a2}, Peers: []netip.AddrPort{a1}, Timeout: timeout},
	}
}

func newDevice(t *testing.T, cfg Config, rec *recorder) *Machine {
	t.Helper()
	m, err := New(cfg, rec, testLogger(t).With("test_device", cfg.Device))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func state(m *Machine) State { return m.Status().State }

// TestPairOnLoopback is the life of a pair: start together, fail over, restart without
// fail-back, and hand over by `run sys failover standby`. Every wait is bounded generously;
// nothing asserts tight timing.
func TestPairOnLoopback(t *testing.T) {
	const timeout = 300 * time.Millisecond
	p := newPair(t, timeout)
	rec1, rec2 := &recorder{}, &recorder{}
	lb1, lb2 := newDevice(t, p.cfg1, rec1), newDevice(t, p.cfg2, rec2)
	stop1 := start(t, lb1)
	start(t, lb2)

	// Started together: lb1 wins the tie-break, lb2 stays Standby.
	waitFor(t, "lb1 Active, lb2 Standby seeing it", func() bool {
		s2 := lb2.Status()
		return state(lb1) == StateActive && lb1.settled() && s2.State == StateStandby && s2.PeerState == StateActive && s2.PeerAlive
	})
	if got := lb1.Status().Reason; !strings.HasPrefix(got, "tie-break") && !strings.HasPrefix(got, "no peer heard") {
		t.Errorf("lb1 went active for %q", got)
	}
	if diff := cmp.Diff([]string{"Standby: starting"}, kinds(rec2.Calls())); diff != "" {
		t.Fatalf("lb2 hook calls (-want +got):\n%s", diff)
	}

	// lb1 dies: lb2 takes over after the timeout.
	stop1()
	stopped := time.Now()
	waitFor(t, "lb2 Active", func() bool { return state(lb2) == StateActive })
	t.Logf("lb2 active %s after lb1 stopped (timeout %s)", time.Since(stopped).Round(time.Millisecond), timeout)
	if s := lb2.Status(); s.Reason != "peer lb1 heartbeat lost after 300ms" || s.PeerAlive {
		t.Errorf("lb2 status after failover: %q alive=%v", s.Reason, s.PeerAlive)
	}

	// lb1 restarts (a new Machine, as a new process would be): it hears lb2 Active and
	// stays Standby, with no fail-back.
	rec1 = &recorder{}
	lb1 = newDevice(t, p.cfg1, rec1)
	start(t, lb1)
	waitFor(t, "restarted lb1 Standby seeing lb2 Active", func() bool {
		s := lb1.Status()
		return s.State == StateStandby && s.PeerState == StateActive && s.PeerAlive
	})
	time.Sleep(3 * timeout) // lb1 would have gone Active by now if it were going to
	if s1, s2 := lb1.Status(), lb2.Status(); s1.State != StateStandby || s2.State != StateActive {
		t.Fatalf("after lb1 restarted: lb1 %s, lb2 %s (fail-back?)", s1.State, s2.State)
	}
	if diff := cmp.Diff([]string{"Standby: starting"}, kinds(rec1.Calls())); diff != "" {
		t.Fatalf("restarted lb1 hook calls (-want +got):\n%s", diff)
	}

	// run sys failover standby on the standby: refused.
	if err := lb1.ForceStandby(); !errors.Is(err, ErrNotActive) {
		t.Fatalf("ForceStandby on the standby = %v, want ErrNotActive", err)
	}

	// run sys failover standby on the active: lb2 goes Standby at once, and lb1 goes
	// Active because lb2 yielded, not because it timed out.
	forced := time.Now()
	if err := lb2.ForceStandby(); err != nil {
		t.Fatalf("ForceStandby on lb2: %v", err)
	}
	if s := lb2.Status(); s.State != StateStandby {
		t.Fatalf("lb2 after ForceStandby: %s", s.State)
	}
	waitFor(t, "lb1 Active", func() bool { return state(lb1) == StateActive })
	t.Logf("lb1 active %s after ForceStandby (timeout %s)", time.Since(forced).Round(time.Millisecond), timeout)
	if s := lb1.Status(); s.Reason != "peer lb2 yielded" {
		t.Errorf("lb1 went active for %q, want the yield", s.Reason)
	}
	waitFor(t, "lb2 to stop yielding", func() bool { return !lb2.Status().Yielding })
	time.Sleep(3 * timeout)
	if s1, s2 := lb1.Status(), lb2.Status(); s1.State != StateActive || s2.State != StateStandby {
		t.Fatalf("after the handover: lb1 %s, lb2 %s", s1.State, s2.State)
	}

	if diff := cmp.Diff([]string{"Standby: starting", "Active: peer lb2 yielded"}, kinds(rec1.Calls())); diff != "" {
		t.Errorf("lb1 hook calls (-want +got):\n%s", diff)
	}
	want2 := []string{"Standby: starting", "Active: peer lb1 heartbeat lost after 300ms", "Standby: forced to standby (run sys failover standby)"}
	if diff := cmp.Diff(want2, kinds(rec2.Calls())); diff != "" {
		t.Errorf("lb2 hook calls (-want +got):\n%s", diff)
	}
	s1, s2 := lb1.Status(), lb2.Status()
	for _, s := range []Status{s1, s2} {
		if s.HeartbeatsSent == 0 || s.HeartbeatsReceived == 0 {
			t.Errorf("%s counters: sent %d received %d", s.Device, s.HeartbeatsSent, s.HeartbeatsReceived)
		}
	}
	if s2.Failovers != 2 || s1.Failovers != 1 {
		t.Errorf("failovers: lb1 %d lb2 %d, want 1 and 2", s1.Failovers, s2.Failovers)
	}
}

// TestPairFractionalTimeout: failover.nettimeout 0.2 works, and ForceStandby with no peer
// alive is refused.
func TestPairFractionalTimeout(t *testing.T) {
	timeout, err := ParseNetTimeout("0.2")
	if err != nil {
		t.Fatal(err)
	}
	p := newPair(t, timeout)
	lb1, lb2 := newDevice(t, p.cfg1, &recorder{}), newDevice(t, p.cfg2, &recorder{})
	stop1 := start(t, lb1)
	start(t, lb2)
	waitFor(t, "lb1 Active, lb2 Standby", func() bool {
		return state(lb1) == StateActive && state(lb2) == StateStandby && lb2.Status().PeerState == StateActive
	})
	stop1()
	waitFor(t, "lb2 Active", func() bool { return state(lb2) == StateActive })
	if s := lb2.Status(); s.Reason != "peer lb1 heartbeat lost after 200ms" {
		t.Errorf("lb2 reason %q", s.Reason)
	}
	err = lb2.ForceStandby()
	if !errors.Is(err, ErrNoPeer) {
		t.Fatalf("ForceStandby with no peer = %v, want ErrNoPeer", err)
	}
	t.Logf("ForceStandby with no peer: %v", err)
	if state(lb2) != StateActive {
		t.Fatal("lb2 left Active with no peer to take over")
	}
}

// TestPairReconfigureTimeout changes failover.nettimeout live: with a 10s timeout the
// standby would wait 10s; lowered to 250ms, it takes over long before.
func TestPairReconfigureTimeout(t *testing.T) {
	p := newPair(t, 10*time.Second)
	lb1, lb2 := newDevice(t, p.cfg1, &recorder{}), newDevice(t, p.cfg2, &recorder{})
	stop1 := start(t, lb1)
	start(t, lb2)
	waitFor(t, "lb1 Active by tie-break", func() bool {
		return state(lb1) == StateActive && state(lb2) == StateStandby && lb2.Status().PeerState == StateActive
	})
	if got := lb1.Status().Reason; got != "tie-break: both standby, lb1 < lb2" {
		t.Errorf("lb1 went active for %q", got)
	}
	cfg := p.cfg2
	cfg.Timeout = 250 * time.Millisecond
	if err := lb2.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	stop1()
	stopped := time.Now()
	waitFor(t, "lb2 Active", func() bool { return state(lb2) == StateActive })
	if d := time.Since(stopped); d >= 10*time.Second {
		t.Errorf("lb2 took %s: the new timeout was not used", d)
	}
	if s := lb2.Status(); s.Reason != "peer lb1 heartbeat lost after 250ms" {
		t.Errorf("lb2 reason %q", s.Reason)
	}
}

// TestPairPayload: each device sees the other's latest payload.
func TestPairPayload(t *testing.T) {
	p := newPair(t, time.Second)
	p.cfg1.Payload = func() []byte { return []byte("digest-lb1") }
	lb1, lb2 := newDevice(t, p.cfg1, &recorder{}), newDevice(t, p.cfg2, &recorder{})
	start(t, lb1)
	start(t, lb2)
	waitFor(t, "lb2 to see lb1's payload", func() bool { return string(lb2.Status().PeerPayload) == "digest-lb1" })
	if got := lb1.Status().PeerPayload; got != nil {
		t.Errorf("lb1 sees payload %q from lb2, which sends none", got)
	}
}

// TestRunLeavesNoGoroutines: once Run has returned, every goroutine it started has ended
// (listeners, hook calls, the notifier).
func TestRunLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	p := newPair(t, 200*time.Millisecond)
	lb1, lb2 := newDevice(t, p.cfg1, &recorder{}), newDevice(t, p.cfg2, &recorder{})
	lb1.Subscribe(func(Status) {})
	stop1, stop2 := start(t, lb1), start(t, lb2)
	waitFor(t, "lb1 Active", func() bool { return state(lb1) == StateActive && state(lb2) == StateStandby })
	stop1()
	stop2()
	waitFor(t, "the goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}

// TestPairWithPacerProcess: with the pacer as a process of its own, a pair forms, and when
// one device stops its pacer process stops with it, so the peer takes over.
func TestPairWithPacerProcess(t *testing.T) {
	p := newPair(t, 300*time.Millisecond)
	p.cfg1.PacerProcess, p.cfg2.PacerProcess = os.Args[0], os.Args[0]
	rec1, rec2 := &recorder{}, &recorder{}
	lb1, lb2 := newDevice(t, p.cfg1, rec1), newDevice(t, p.cfg2, rec2)
	stop1 := start(t, lb1)
	start(t, lb2)
	waitFor(t, "lb1 Active, lb2 Standby seeing it", func() bool {
		s2 := lb2.Status()
		return state(lb1) == StateActive && s2.State == StateStandby && s2.PeerState == StateActive && s2.PeerAlive
	})
	stop1()
	waitFor(t, "lb2 Active once lb1 and its pacer process are gone", func() bool { return state(lb2) == StateActive })
}
