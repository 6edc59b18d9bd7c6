package failover

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type decision struct {
	State  State
	Cause  Cause
	Reason string
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{StateOffline: "Offline", StateStandby: "Standby", StateActive: "Active", 9: "State(9)"} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String() = %q, want %q", uint8(s), got, want)
		}
	}
}

// TestNextStates is the transition table: current state and facts → next state and reason.
func TestNextStates(t *testing.T) {
	const T = 3 * time.Second
	// settled: lb1, bound long ago, no peer heard.
	settled := func(self string) view {
		return view{self: self, listening: true, listened: time.Minute, timeout: T}
	}
	with := func(v view, p peerView) view { v.peer = p; return v }
	alive := func(name string, st State) peerView { return peerView{name: name, alive: true, state: st} }
	yielding := func(p peerView) peerView { p.yielding = true; return p }
	selfYields := func(v view) view { v.yielding = true; return v }
	listened := func(v view, d time.Duration) view { v.listened = d; return v }
	timeout := func(v view, d time.Duration) view { v.timeout = d; return v }

	tests := []struct {
		name string
		cur  State
		v    view
		want decision
	}{
		// Offline.
		{"offline starts standby", StateOffline, view{self: "lb1", timeout: T}, decision{StateStandby, CauseStarting, "starting"}},
		{"offline starts standby whatever the peer", StateOffline, with(settled("lb1"), alive("lb2", StateStandby)), decision{StateStandby, CauseStarting, "starting"}},

		// Standby, a peer just heard: its Standby state is not yet acted on (a burst of
		// heartbeats queued while the link was down arrives oldest first).
		{"standby, peer standby, not yet settled", StateStandby,
			func() view {
				v := with(settled("lb1"), alive("lb2", StateStandby))
				v.settle = 200 * time.Millisecond
				return v
			}(),
			decision{StateStandby, CauseNone, "listening to peer lb2"}},
		{"standby, peer standby, settled", StateStandby,
			func() view {
				v := with(settled("lb1"), alive("lb2", StateStandby))
				v.settle, v.peer.heardFor = 200*time.Millisecond, 200*time.Millisecond
				return v
			}(),
			decision{StateActive, CauseTieBreak, "tie-break: both standby, lb1 < lb2"}},
		{"standby, peer active at once", StateStandby,
			func() view {
				v := with(settled("lb1"), alive("lb2", StateActive))
				v.settle = 200 * time.Millisecond
				return v
			}(),
			decision{StateStandby, CauseNone, "peer lb2 is active"}},

		// Standby, no live peer.
		{"standby before any socket is bound", StateStandby, view{self: "lb1", timeout: T},
			decision{StateStandby, CauseNone, "waiting for a heartbeat socket to bind"}},
		{"standby during the initial wait", StateStandby, listened(settled("lb1"), T-time.Millisecond),
			decision{StateStandby, CauseNone, "waiting 3s to hear a peer"}},
		{"standby after the initial wait, nobody heard", StateStandby, listened(settled("lb1"), T),
			decision{StateActive, CauseNoPeer, "no peer heard within 3s"}},
		// A short timeout: a device that has just started still listens for aloneWait, long
		// enough for both kernels to resolve each other's addresses (ARP).
		{"short timeout: standby during the initial wait", StateStandby, timeout(listened(settled("lb1"), 500*time.Millisecond), 50*time.Millisecond),
			decision{StateStandby, CauseNone, "waiting 1s to hear a peer"}},
		{"short timeout: standby after aloneWait, nobody heard", StateStandby, timeout(listened(settled("lb1"), aloneWait), 50*time.Millisecond),
			decision{StateActive, CauseNoPeer, "no peer heard within 1s"}},
		{"short timeout: a peer heard and then lost is failed after the timeout", StateStandby,
			timeout(listened(with(settled("lb1"), peerView{name: "lb2", state: StateActive}), 100*time.Millisecond), 50*time.Millisecond),
			decision{StateActive, CausePeerLost, "peer lb2 heartbeat lost after 50ms"}},
		{"standby peer lost", StateStandby, with(settled("lb1"), peerView{name: "lb2", state: StateActive}),
			decision{StateActive, CausePeerLost, "peer lb2 heartbeat lost after 3s"}},
		{"standby peer lost, fractional timeout", StateStandby, with(timeout(settled("lb2"), 200*time.Millisecond), peerView{name: "lb1", state: StateActive}),
			decision{StateActive, CausePeerLost, "peer lb1 heartbeat lost after 200ms"}},
		{"standby yielding, peer lost", StateStandby, with(selfYields(settled("lb2")), peerView{name: "lb1", state: StateStandby}),
			decision{StateActive, CausePeerLost, "peer lb1 heartbeat lost after 3s"}},

		// Standby, live peer.
		{"standby peer active", StateStandby, with(settled("lb1"), alive("lb2", StateActive)),
			decision{StateStandby, CauseNone, "peer lb2 is active"}},
		{"restarted old active hears an active peer: no fail-back", StateStandby, with(listened(settled("lb1"), 0), alive("lb2", StateActive)),
			decision{StateStandby, CauseNone, "peer lb2 is active"}},
		{"standby peer active and still yielding", StateStandby, with(settled("lb1"), yielding(alive("lb2", StateActive))),
			decision{StateStandby, CauseNone, "peer lb2 is active"}},
		{"standby peer offline during the wait", StateStandby, with(listened(settled("lb2"), time.Second), alive("lb1", StateOffline)),
			decision{StateStandby, CauseNone, "peer lb1 is starting"}},
		{"standby peer offline after the wait", StateStandby, with(settled("lb2"), alive("lb1", StateOffline)),
			decision{StateActive, CausePeerOffline, "peer lb1 is offline"}},
		{"standby yielding, peer standby", StateStandby, with(selfYields(settled("lb1")), alive("lb2", StateStandby)),
			decision{StateStandby, CauseNone, "yielded to peer lb2"}},
		{"standby, peer yielded", StateStandby, with(settled("lb2"), yielding(alive("lb1", StateStandby))),
			decision{StateActive, CausePeerYielded, "peer lb1 yielded"}},
		{"standby, peer yielded, during the wait", StateStandby, with(listened(settled("lb2"), 0), yielding(alive("lb1", StateStandby))),
			decision{StateActive, CausePeerYielded, "peer lb1 yielded"}},
		{"tie-break: lower name goes active", StateStandby, with(settled("lb1"), alive("lb2", StateStandby)),
			decision{StateActive, CauseTieBreak, "tie-break: both standby, lb1 < lb2"}},
		{"tie-break: higher name stays standby", StateStandby, with(settled("lb2"), alive("lb1", StateStandby)),
			decision{StateStandby, CauseNone, "tie-break: both standby, lb1 < lb2"}},
		{"tie-break needs no wait once the peer is heard", StateStandby, with(listened(settled("lb1"), 0), alive("lb2", StateStandby)),
			decision{StateActive, CauseTieBreak, "tie-break: both standby, lb1 < lb2"}},
		{"tie-break: both yielding, lower", StateStandby, with(selfYields(settled("lb1")), yielding(alive("lb2", StateStandby))),
			decision{StateActive, CauseTieBreak, "tie-break: both standby, lb1 < lb2"}},
		{"tie-break: both yielding, higher", StateStandby, with(selfYields(settled("lb2")), yielding(alive("lb1", StateStandby))),
			decision{StateStandby, CauseNone, "tie-break: both standby, lb1 < lb2"}},
		{"tie-break compares bytes, not numbers", StateStandby, with(settled("lb10"), alive("lb9", StateStandby)),
			decision{StateActive, CauseTieBreak, "tie-break: both standby, lb10 < lb9"}},

		// Active.
		{"active, no peer ever", StateActive, settled("lb1"), decision{StateActive, CauseNone, "no peer alive"}},
		{"active, peer lost", StateActive, with(settled("lb2"), peerView{name: "lb1", state: StateActive}), decision{StateActive, CauseNone, "no peer alive"}},
		{"active, peer standby", StateActive, with(settled("lb2"), alive("lb1", StateStandby)), decision{StateActive, CauseNone, "peer lb1 is Standby"}},
		{"active, peer standby yielding", StateActive, with(settled("lb1"), yielding(alive("lb2", StateStandby))), decision{StateActive, CauseNone, "peer lb2 is Standby"}},
		{"active, peer offline", StateActive, with(settled("lb1"), alive("lb2", StateOffline)), decision{StateActive, CauseNone, "peer lb2 is Offline"}},
		{"split brain healed: lower stays active", StateActive, with(settled("lb1"), alive("lb2", StateActive)),
			decision{StateActive, CauseNone, "split brain: peer lb2 is also active, lb1 < lb2 stays active"}},
		{"split brain healed: higher goes standby", StateActive, with(settled("lb2"), alive("lb1", StateActive)),
			decision{StateStandby, CauseSplitBrain, "split brain: peer lb1 is also active, lb1 < lb2 stays active"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, cause, reason := next(tt.cur, tt.v)
			if diff := cmp.Diff(tt.want, decision{st, cause, reason}); diff != "" {
				t.Errorf("next(%s, %+v) (-want +got):\n%s", tt.cur, tt.v, diff)
			}
		})
	}
}

// device is one side of the simulated pair in TestPairAgrees.
type device struct {
	name  string
	state State
	yield bool
}

// TestPairAgrees runs the transition function on both devices at once, as both run it on
// the heartbeats they exchange, from every starting point two live devices can be in. It
// proves that the pair always settles with exactly one Active device within two rounds,
// and that a pair that already has exactly one Active device never changes states (only a
// stale yield flag clears).
func TestPairAgrees(t *testing.T) {
	var starts []device
	for _, st := range []State{StateStandby, StateActive} {
		for _, y := range []bool{false, true} {
			if st == StateActive && y {
				continue // a device stops yielding when it goes Active
			}
			starts = append(starts, device{state: st, yield: y})
		}
	}
	actives := func(a, b device) int {
		n := 0
		for _, d := range []device{a, b} {
			if d.state == StateActive {
				n++
			}
		}
		return n
	}
	for _, s1 := range starts {
		for _, s2 := range starts {
			a, b := s1, s2
			a.name, b.name = "lb1", "lb2"
			t.Run(fmt.Sprintf("%s/%v-%s/%v", a.state, a.yield, b.state, b.yield), func(t *testing.T) {
				settledAtStart := actives(a, b) == 1
				for round := 1; round <= 3; round++ {
					na, nb := step(a, b), step(b, a)
					if settledAtStart && (na.state != a.state || nb.state != b.state) {
						t.Fatalf("a settled pair moved: %+v %+v → %+v %+v", a, b, na, nb)
					}
					if na == a && nb == b {
						break
					}
					a, b = na, nb
				}
				if n := actives(a, b); n != 1 {
					t.Fatalf("settled with %d active devices: %+v %+v", n, a, b)
				}
				if step(a, b) != a || step(b, a) != b {
					t.Fatalf("did not settle in 3 rounds: %+v %+v", a, b)
				}
			})
		}
	}
}

// step is one evaluation by d of the heartbeat of its live peer p, with the yield rules of
// the machine: a yield ends when the peer is seen Active, or when d goes Active.
func step(d, p device) device {
	if p.state == StateActive {
		d.yield = false
	}
	v := view{self: d.name, yielding: d.yield, listening: true, listened: time.Minute, timeout: time.Second,
		peer: peerView{name: p.name, alive: true, state: p.state, yielding: p.yield}}
	d.state, _, _ = next(d.state, v)
	if d.state == StateActive {
		d.yield = false
	}
	return d
}
