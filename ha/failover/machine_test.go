package failover

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// harness runs one Machine on a fake clock, on loopback, and lets the test play its peer
// from a socket of its own: every transition is driven by the test's ticks and heartbeats,
// with no sleeping on timers.
type harness struct {
	t        *testing.T
	m        *Machine
	rec      *recorder
	clk      *fakeClock
	tk       *fakeTicker
	self     netip.AddrPort // the machine's heartbeat address
	peer     *net.UDPConn   // the test's socket, playing the peer
	peerName string
	bootID   uint64
	seq      uint64
	stop     func()
}

func newHarness(t *testing.T, device, peerName string, timeout time.Duration, rec *recorder) *harness {
	t.Helper()
	return newHarnessWith(t, device, peerName, timeout, rec, nil)
}

// newHarnessWith calls prep, if not nil, between New and Run.
func newHarnessWith(t *testing.T, device, peerName string, timeout time.Duration, rec *recorder, prep func(*Machine)) *harness {
	t.Helper()
	self, peerAddr := freeAddr(t, "127.0.0.2"), freeAddr(t, "127.0.0.1")
	h := &harness{t: t, rec: rec, clk: newFakeClock(), self: self, peerName: peerName, bootID: 0xb007}
	h.peer = listenUDP(t, peerAddr)
	m, err := newMachine(Config{Device: device, Listen: []netip.AddrPort{self}, Peers: []netip.AddrPort{peerAddr}, Timeout: timeout},
		rec, testLogger(t), h.clk)
	if err != nil {
		t.Fatal(err)
	}
	m.retry = 10 * time.Millisecond
	if prep != nil {
		prep(m)
	}
	h.m = m
	h.stop = start(t, m)
	select {
	case h.tk = <-h.clk.tickers:
	case <-time.After(bound):
		t.Fatal("Run made no ticker")
	}
	return h
}

// tick fires one tick; it returns once the loop has taken it.
func (h *harness) tick() {
	h.t.Helper()
	select {
	case h.tk.c <- h.clk.Now():
	case <-time.After(bound):
		h.t.Fatal("the loop took no tick")
	}
}

// settle makes sure that every event sent so far has been handled and that no hook call is
// in flight, and returns the status.
func (h *harness) settle() Status {
	h.t.Helper()
	for {
		h.tick()
		h.tick() // taken only once the first tick has been handled
		waitFor(h.t, "the hook call to return", h.m.settled)
		// The hook's end is handled with an evaluation that may start another transition:
		// one more tick, and done if none is in flight.
		h.tick()
		if h.m.settled() {
			return h.m.Status()
		}
	}
}

// waitBound ticks until the machine's heartbeat reaches the test's socket.
func (h *harness) waitBound() heartbeat {
	h.t.Helper()
	deadline := time.Now().Add(bound)
	for time.Now().Before(deadline) {
		h.tick()
		if hb, ok := h.read(20 * time.Millisecond); ok {
			return hb
		}
	}
	h.t.Fatal("no heartbeat from the machine")
	return heartbeat{}
}

func (h *harness) read(wait time.Duration) (heartbeat, bool) {
	h.t.Helper()
	buf := make([]byte, 2048)
	h.peer.SetReadDeadline(time.Now().Add(wait))
	n, _, err := h.peer.ReadFromUDPAddrPort(buf)
	if err != nil {
		return heartbeat{}, false
	}
	hb, err := decodeHeartbeat(buf[:n])
	if err != nil {
		h.t.Fatalf("the machine sent a bad heartbeat: %v", err)
	}
	return hb, true
}

// expectHeartbeat ticks and reads until a heartbeat of the machine satisfies ok.
func (h *harness) expectHeartbeat(what string, ok func(heartbeat) bool) heartbeat {
	h.t.Helper()
	deadline := time.Now().Add(bound)
	for time.Now().Before(deadline) {
		for {
			hb, got := h.read(time.Millisecond)
			if !got {
				break
			}
			if ok(hb) {
				return hb
			}
		}
		h.tick()
	}
	h.t.Fatalf("no heartbeat %s from the machine", what)
	return heartbeat{}
}

// send sends a heartbeat as the peer, skipping skip sequence numbers, and waits until the
// machine has accepted it.
func (h *harness) send(st State, yield bool, skip uint64) {
	h.t.Helper()
	h.seq += 1 + skip
	before := h.m.Status().HeartbeatsReceived
	h.sendRaw(heartbeat{Name: h.peerName, State: st, Yield: yield, BootID: h.bootID, Seq: h.seq, Payload: []byte("digest-1")})
	waitFor(h.t, "the heartbeat to be received", func() bool { return h.m.Status().HeartbeatsReceived > before })
}

func (h *harness) sendRaw(hb heartbeat) {
	h.t.Helper()
	b, err := hb.AppendBinary(nil)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.peer.WriteToUDPAddrPort(b, h.self); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) expect(st State, reason string) Status {
	h.t.Helper()
	s := h.settle()
	if s.State != st || (reason != "" && s.Reason != reason) {
		h.t.Fatalf("machine is %s (%q), want %s (%q)", s.State, s.Reason, st, reason)
	}
	return s
}

// TestMachineFakeClock walks one machine (lb2) through every rule with a fake clock while
// the test plays its peer lb1.
func TestMachineFakeClock(t *testing.T) {
	const timeout = 300 * time.Millisecond
	rec := &recorder{}
	h := newHarness(t, "lb2", "lb1", timeout, rec)

	// Starts Standby (cleaning the kernel state), and says so.
	h.expect(StateStandby, "starting")
	h.waitBound()
	if hb := h.expectHeartbeat("saying Standby", func(hb heartbeat) bool { return hb.State == StateStandby }); hb.Name != "lb2" || hb.Yield {
		t.Fatalf("heartbeat %+v", hb)
	}

	// Does not go Active before a full timeout with no peer.
	h.clk.Advance(timeout - time.Millisecond)
	h.expect(StateStandby, "starting")

	// Hears an active peer: stays Standby as long as it is heard.
	h.send(StateActive, false, 0)
	s := h.expect(StateStandby, "starting")
	if s.Peer != "lb1" || s.PeerState != StateActive || !s.PeerAlive || string(s.PeerPayload) != "digest-1" ||
		s.PeerLastHeard != h.clk.Now() || s.PeerAddr != netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), h.peer.LocalAddr().(*net.UDPAddr).AddrPort().Port()) {
		t.Fatalf("peer status %+v", s)
	}
	h.clk.Advance(timeout - time.Millisecond)
	h.expect(StateStandby, "starting")

	// The peer is silent for the full timeout: failover.
	h.clk.Advance(time.Millisecond)
	s = h.expect(StateActive, "peer lb1 heartbeat lost after 300ms")
	if s.PeerAlive || s.Failovers != 1 {
		t.Fatalf("after failover: %+v", s)
	}
	h.expectHeartbeat("saying Active", func(hb heartbeat) bool { return hb.State == StateActive })

	// The peer comes back Active (split brain healed), two heartbeats later: lb2 > lb1 yields.
	h.send(StateActive, false, 2)
	s = h.expect(StateStandby, "split brain: peer lb1 is also active, lb1 < lb2 stays active")
	if s.HeartbeatsMissed != 2 {
		t.Errorf("missed %d heartbeats, want 2", s.HeartbeatsMissed)
	}

	// The peer yields: lb2 goes Active at once, and stays Active when the peer is Standby.
	h.send(StateStandby, true, 0)
	h.expect(StateActive, "peer lb1 yielded")
	h.send(StateStandby, false, 0)
	h.expect(StateActive, "peer lb1 yielded")

	// run sys failover standby: Standby at once, and the heartbeats say it yields.
	if err := h.m.ForceStandby(); err != nil {
		t.Fatalf("ForceStandby: %v", err)
	}
	if s := h.m.Status(); s.State != StateStandby || !s.Yielding {
		t.Fatalf("after ForceStandby: %s yielding=%v", s.State, s.Yielding)
	}
	h.expectHeartbeat("saying Standby and yield", func(hb heartbeat) bool { return hb.State == StateStandby && hb.Yield })
	if err := h.m.ForceStandby(); !errors.Is(err, ErrNotActive) {
		t.Fatalf("ForceStandby on a standby = %v, want ErrNotActive", err)
	}

	// Yielding: stays Standby with the peer Standby, and the yield ends once the peer is
	// seen Active.
	h.send(StateStandby, false, 0)
	if s := h.expect(StateStandby, ""); !s.Yielding {
		t.Fatal("yield flag cleared before the peer went active")
	}
	h.send(StateActive, false, 0)
	if s := h.expect(StateStandby, ""); s.Yielding {
		t.Fatal("yield flag still set with the peer active")
	}

	// Reconfigure the timeout live, to 2s: the interval follows (Timeout/10 clamped), and a
	// silence of 1s no longer fails the peer; 2s does.
	cfg := h.m.cfgSnapshot()
	cfg.Timeout, cfg.Interval = 2*time.Second, 0
	if err := h.m.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	h.settle()
	if got := h.tk.interval(); got != 200*time.Millisecond {
		t.Errorf("interval after Reconfigure = %s, want 200ms", got)
	}
	h.clk.Advance(time.Second)
	h.expect(StateStandby, "")
	h.clk.Advance(time.Second)
	h.expect(StateActive, "peer lb1 heartbeat lost after 2s")

	// Nobody to take over: BIG-IP keeps the traffic, so do we.
	err := h.m.ForceStandby()
	if !errors.Is(err, ErrNoPeer) || !strings.Contains(err.Error(), "peer lb1 last heard 2s ago") {
		t.Fatalf("ForceStandby with the peer lost = %v, want ErrNoPeer", err)
	}

	want := []call{
		{StateStandby, "starting"},
		{StateActive, "peer lb1 heartbeat lost after 300ms"},
		{StateStandby, "split brain: peer lb1 is also active, lb1 < lb2 stays active"},
		{StateActive, "peer lb1 yielded"},
		{StateStandby, "forced to standby (run sys failover standby)"},
		{StateActive, "peer lb1 heartbeat lost after 2s"},
	}
	if diff := cmp.Diff(want, rec.Calls()); diff != "" {
		t.Errorf("hook calls (-want +got):\n%s", diff)
	}
	h.stop()
	if s := h.m.Status(); s.State != StateOffline || s.Reason != "stopped" || s.Transitions != 6 || s.Failovers != 5 {
		t.Errorf("after Run: %s %q transitions=%d failovers=%d", s.State, s.Reason, s.Transitions, s.Failovers)
	}
	var byCause [NumCauses]uint64
	byCause[CausePeerLost], byCause[CauseSplitBrain], byCause[CausePeerYielded], byCause[CauseForced] = 2, 1, 1, 1
	if got := h.m.Status().FailoversByCause; got != byCause {
		t.Errorf("failovers by cause %v, want %v", got, byCause)
	}
	if err := h.m.ForceStandby(); !errors.Is(err, ErrNotRunning) {
		t.Errorf("ForceStandby after Run = %v, want ErrNotRunning", err)
	}
}

// TestMachineTieBreakAndOffline: lb1 wins the tie-break against a standby peer, and a
// starting (Offline) peer is waited for during the initial wait.
func TestMachineTieBreakAndOffline(t *testing.T) {
	h := newHarness(t, "lb1", "lb2", 300*time.Millisecond, &recorder{})
	h.expect(StateStandby, "starting")
	h.waitBound()
	h.send(StateOffline, false, 0)
	h.expect(StateStandby, "starting")
	h.send(StateStandby, false, 0)
	h.expect(StateStandby, "starting")
	// The tie-break waits until the peer has been heard for two intervals (30 ms each).
	h.clk.Advance(60 * time.Millisecond)
	h.send(StateStandby, false, 0)
	h.expect(StateActive, "tie-break: both standby, lb1 < lb2")
	h.send(StateStandby, false, 0)
	h.expect(StateActive, "tie-break: both standby, lb1 < lb2")
}

// TestMachineFiltersDatagrams: garbage, strangers, our own name and copies are not heard.
func TestMachineFiltersDatagrams(t *testing.T) {
	h := newHarness(t, "lb2", "lb1", time.Second, &recorder{})
	h.expect(StateStandby, "starting")
	h.waitBound()

	stranger := listenUDP(t, freeAddr(t, "127.0.0.3"))
	b, _ := heartbeat{Name: "lb9", State: StateActive, BootID: 9, Seq: 1}.AppendBinary(nil)
	if _, err := stranger.WriteToUDPAddrPort(b, h.self); err != nil {
		t.Fatal(err)
	}
	if _, err := h.peer.WriteToUDPAddrPort([]byte("garbage"), h.self); err != nil {
		t.Fatal(err)
	}
	h.sendRaw(heartbeat{Name: "lb2", State: StateActive, BootID: 3, Seq: 1}) // our own name
	waitFor(t, "three rejected datagrams", func() bool { return h.m.Status().HeartbeatsRejected == 3 })

	h.send(StateActive, false, 0)
	h.sendRaw(heartbeat{Name: "lb1", State: StateStandby, BootID: h.bootID, Seq: h.seq}) // a copy over another path
	h.send(StateActive, false, 0)
	s := h.settle()
	if s.Peer != "lb1" || s.HeartbeatsReceived != 2 || s.HeartbeatsMissed != 0 || s.PeerState != StateActive {
		t.Fatalf("status %+v", s)
	}

	// The peer restarts: a new boot id starts its sequence again.
	h.bootID, h.seq = 0xbeef, 0
	h.send(StateStandby, false, 0)
	if s := h.settle(); s.HeartbeatsReceived != 3 || s.PeerState != StateStandby {
		t.Fatalf("after the peer restarted: %+v", s)
	}
}

// TestMachineHookFailureRetried: a failed BecomeActive leaves the device Standby and is
// tried again on the next tick.
func TestMachineHookFailureRetried(t *testing.T) {
	rec := &recorder{failActive: 1}
	h := newHarness(t, "lb1", "lb2", 200*time.Millisecond, rec)
	h.expect(StateStandby, "starting")
	h.waitBound()
	h.clk.Advance(aloneWait)

	// The first tick's BecomeActive fails; the transition is retried and then succeeds.
	h.tick()
	h.tick()
	waitFor(t, "two BecomeActive calls", func() bool { return len(rec.Calls()) >= 3 })
	s := h.expect(StateActive, "no peer heard within 1s")
	if s.LastHookError != "" {
		t.Errorf("LastHookError = %q after a successful hook", s.LastHookError)
	}
	want := []call{
		{StateStandby, "starting"},
		{StateActive, "no peer heard within 1s"},
		{StateActive, "no peer heard within 1s"},
	}
	if diff := cmp.Diff(want, rec.Calls()); diff != "" {
		t.Errorf("hook calls (-want +got):\n%s", diff)
	}
}

// TestMachineWaitStartsAtBind: while the unicast address cannot be bound the device stays
// Standby however long; the wait for a peer starts once the socket is bound, and lasts
// aloneWait when that is longer than the timeout.
func TestMachineWaitStartsAtBind(t *testing.T) {
	self, peerAddr := freeAddr(t, "127.0.0.2"), freeAddr(t, "127.0.0.1")
	blocker := listenUDP(t, self) // the address is "not there yet"
	clk := newFakeClock()
	m, err := newMachine(Config{Device: "lb1", Listen: []netip.AddrPort{self}, Peers: []netip.AddrPort{peerAddr}, Timeout: 300 * time.Millisecond},
		&recorder{}, testLogger(t), clk)
	if err != nil {
		t.Fatal(err)
	}
	m.retry = 5 * time.Millisecond
	start(t, m)
	h := &harness{t: t, m: m, clk: clk, tk: <-clk.tickers, self: self, peer: listenUDP(t, peerAddr)}
	h.clk.Advance(time.Minute)
	h.expect(StateStandby, "starting")

	blocker.Close()
	h.waitBound()
	h.clk.Advance(aloneWait - time.Millisecond)
	h.expect(StateStandby, "starting")
	h.clk.Advance(time.Millisecond)
	h.expect(StateActive, "no peer heard within 1s")
}

// TestSubscribe: subscribers see each change in order, the final Offline included.
func TestSubscribe(t *testing.T) {
	var mu sync.Mutex
	var states []State
	var versions []uint64
	h := newHarnessWith(t, "lb1", "lb2", time.Second, &recorder{}, func(m *Machine) {
		m.Subscribe(func(s Status) {
			mu.Lock()
			defer mu.Unlock()
			if len(states) == 0 || states[len(states)-1] != s.State {
				states = append(states, s.State)
			}
			versions = append(versions, s.Version)
		})
		unsubscribe := m.Subscribe(func(Status) { t.Error("unsubscribed callback called") })
		unsubscribe()
	})
	h.expect(StateStandby, "starting")
	h.waitBound()
	h.clk.Advance(time.Second)
	h.expect(StateActive, "no peer heard within 1s")
	h.stop()
	mu.Lock()
	defer mu.Unlock()
	if len(states) < 3 {
		t.Fatalf("states seen: %v", states)
	}
	if diff := cmp.Diff([]State{StateStandby, StateActive, StateOffline}, states[len(states)-3:]); diff != "" {
		t.Errorf("states seen (-want +got):\n%s", diff)
	}
	for i := 1; i < len(versions); i++ {
		if versions[i] <= versions[i-1] {
			t.Errorf("versions not increasing: %v", versions)
		}
	}
}

// TestMachineStandalone: with no unicast address the device sends nothing and goes Active
// after one Timeout; given an address and a peer by Reconfigure, it starts heartbeating.
func TestMachineStandalone(t *testing.T) {
	clk := newFakeClock()
	m, err := newMachine(Config{Device: "lb1", Timeout: time.Second}, &recorder{}, testLogger(t), clk)
	if err != nil {
		t.Fatal(err)
	}
	start(t, m)
	h := &harness{t: t, m: m, clk: clk, tk: <-clk.tickers}
	h.expect(StateStandby, "starting") // Run has started: its wait began at the fake time 0
	h.clk.Advance(999 * time.Millisecond)
	h.expect(StateStandby, "starting")
	h.clk.Advance(time.Millisecond)
	h.expect(StateActive, "no peer heard within 1s")
	if s := m.Status(); s.HeartbeatsSent != 0 {
		t.Errorf("standalone sent %d heartbeats", s.HeartbeatsSent)
	}

	h.self, h.peerName, h.bootID = freeAddr(t, "127.0.0.2"), "lb2", 5
	h.peer = listenUDP(t, freeAddr(t, "127.0.0.1"))
	peerAddr := h.peer.LocalAddr().(*net.UDPAddr).AddrPort()
	if err := m.Reconfigure(Config{Device: "lb1", Timeout: time.Second, Listen: []netip.AddrPort{h.self}, Peers: []netip.AddrPort{peerAddr}}); err != nil {
		t.Fatal(err)
	}
	h.waitBound()
	h.expectHeartbeat("saying Active", func(hb heartbeat) bool { return hb.State == StateActive && hb.Name == "lb1" })
	h.send(StateStandby, false, 0)
	h.expect(StateActive, "no peer heard within 1s")
}

func TestNewAndRunErrors(t *testing.T) {
	listen := []netip.AddrPort{freeAddr(t, "127.0.0.2")}
	if _, err := New(Config{Device: "lb1", Listen: listen}, nil, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New with nil hooks = %v", err)
	}
	if _, err := New(Config{Listen: listen}, &recorder{}, nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New with no device = %v", err)
	}
	m, err := New(Config{Device: "lb1", Listen: listen}, &recorder{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ForceStandby(); !errors.Is(err, ErrNotRunning) {
		t.Errorf("ForceStandby before Run = %v", err)
	}
	if err := m.Reconfigure(Config{Device: "lb9", Listen: listen}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Reconfigure changing the device = %v", err)
	}
	if err := m.Reconfigure(Config{Device: "lb1", Listen: listen, Timeout: -1}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Reconfigure with a bad timeout = %v", err)
	}
	if s := m.Status(); s.State != StateOffline || s.Device != "lb1" {
		t.Errorf("status before Run: %+v", s)
	}
	stop := start(t, m)
	waitFor(t, "Standby", func() bool { return m.Status().State == StateStandby })
	if err := m.Run(t.Context()); !errors.Is(err, ErrAlreadyStarted) {
		t.Errorf("second Run = %v", err)
	}
	stop()
}

// TestMachinePeerHeard proves that Config.PeerHeard is called when the peer is heard after
// not being heard (its first heartbeat, after a silence of Timeout, after a restart) and
// not for the heartbeats in between.
func TestMachinePeerHeard(t *testing.T) {
	const timeout = 300 * time.Millisecond
	var heard atomic.Int32
	h := newHarnessWith(t, "lb2", "lb1", timeout, &recorder{}, func(m *Machine) {
		m.cfg.PeerHeard = func() { heard.Add(1) }
	})
	h.expect(StateStandby, "starting")
	h.waitBound()
	steps := []struct {
		what string
		do   func()
		want int32
	}{
		{"first heartbeat", func() { h.send(StateActive, false, 0) }, 1},
		{"the next ones", func() {
			for range 3 {
				h.clk.Advance(timeout / 3)
				h.send(StateActive, false, 0)
			}
		}, 1},
		{"a heartbeat after a silence of Timeout", func() {
			h.clk.Advance(timeout)
			h.send(StateActive, false, 0)
		}, 2},
		{"the restarted peer's first", func() {
			h.bootID++
			h.seq = 0
			h.send(StateActive, false, 0)
		}, 3},
		{"its next", func() { h.send(StateActive, false, 0) }, 3},
	}
	for _, st := range steps {
		st.do()
		if got := heard.Load(); got != st.want {
			t.Fatalf("after %s: PeerHeard called %d times, want %d", st.what, got, st.want)
		}
	}
}
