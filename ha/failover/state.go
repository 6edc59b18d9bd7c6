package failover

import (
	"fmt"
	"strconv"
	"time"
)

// State is a device's failover state. Its String is BIG-IP's word for it, as used in the
// tmsh prompt.
type State uint8

const (
	// StateOffline is a device that takes no part: Run has not started (or has ended), or
	// the first BecomeStandby has not finished yet.
	StateOffline State = iota
	// StateStandby is a device that takes no traffic and receives the mirror stream.
	StateStandby
	// StateActive is the device that owns the floating addresses and takes traffic.
	StateActive
)

// String returns "Offline", "Standby" or "Active".
func (s State) String() string {
	switch s {
	case StateOffline:
		return "Offline"
	case StateStandby:
		return "Standby"
	case StateActive:
		return "Active"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

func (s State) valid() bool { return s <= StateActive }

// Cause classifies why the machine changes state; it labels the failover counters
// (Status.FailoversByCause), where the reason's text is too varied to count by.
type Cause uint8

const (
	CauseNone        Cause = iota // the state is kept
	CauseStarting                 // Offline to Standby at the start
	CauseNoPeer                   // no peer heard since the start: Active
	CausePeerLost                 // the peer's heartbeats stopped: Active
	CausePeerOffline              // the peer is heard but Offline: Active
	CausePeerYielded              // the peer ran run sys failover standby: Active
	CauseTieBreak                 // both Standby: the lower device name goes Active
	CauseForced                   // run sys failover standby on this device: Standby
	CauseSplitBrain               // both Active: the higher device name goes Standby
	// NumCauses is the number of causes, the length of Status.FailoversByCause.
	NumCauses
)

var causeNames = [NumCauses]string{"none", "starting", "no_peer", "peer_lost", "peer_offline",
	"peer_yielded", "tie_break", "forced", "split_brain"}

// String returns the cause's metric label, such as "peer_lost".
func (c Cause) String() string {
	if c < NumCauses {
		return causeNames[c]
	}
	return "cause_" + strconv.Itoa(int(c))
}

// FailoverCauses are the causes of changes into or out of Active.
func FailoverCauses() []Cause {
	return []Cause{CauseNoPeer, CausePeerLost, CausePeerOffline, CausePeerYielded, CauseTieBreak, CauseForced, CauseSplitBrain}
}

// view is everything the transition function may look at: the facts one device has, at
// one instant, about itself and its peer.
type view struct {
	self      string        // this device's name
	yielding  bool          // we have yielded (ForceStandby) and the peer has not yet been seen Active
	listening bool          // at least one heartbeat socket has been bound
	listened  time.Duration // time since the first socket was bound
	timeout   time.Duration // failover.nettimeout
	// settle is how long the peer must have been heard before its Standby state is acted
	// on. Heartbeats queued in the kernel while a link was down (waiting for ARP) arrive
	// in a burst when it comes back, oldest first: a device that decided on the first of
	// them would take Active from a peer that has long been Active.
	settle time.Duration
	peer   peerView
}

// peerView is what was heard from the peer.
type peerView struct {
	name     string        // "" if no peer has been heard
	alive    bool          // heard within timeout
	state    State         // its state in its latest heartbeat
	yielding bool          // its yield flag in its latest heartbeat
	heardFor time.Duration // how long its current run of heartbeats has lasted
}

// next is the transition function: given the current state and the facts, the state to be
// in, the cause of a change (CauseNone when the state is kept) and why. It is pure, so both
// devices compute the same answer from the same facts (the tie-breaks are by device name).
// A reason is returned even when the state is kept.
func next(cur State, v view) (State, Cause, string) {
	switch cur {
	case StateStandby:
		return standby(v)
	case StateActive:
		return active(v)
	default:
		return offline(v)
	}
}

// offline: Run has just started; BecomeStandby is called so that the kernel state is clean
// whatever an earlier run left behind.
func offline(view) (State, Cause, string) {
	return StateStandby, CauseStarting, "starting"
}

// aloneWait is the least time a device listens before it concludes that no peer is there
// (or that a starting peer will not become Standby), whatever failover.nettimeout says. A
// device that has just started hears its peer's first heartbeats only once both kernels
// have resolved each other's addresses again (ARP): at a timeout of 50 ms it would
// otherwise take Active from a peer that is Active, and with a table it has not yet
// received.
const aloneWait = time.Second

func standby(v view) (State, Cause, string) {
	p := v.peer
	wait := max(v.timeout, aloneWait)
	waited := v.listening && v.listened >= wait
	if !p.alive {
		switch {
		case !v.listening:
			return StateStandby, CauseNone, "waiting for a heartbeat socket to bind"
		case p.name != "":
			return StateActive, CausePeerLost, fmt.Sprintf("peer %s heartbeat lost after %s", p.name, v.timeout)
		case !waited:
			return StateStandby, CauseNone, fmt.Sprintf("waiting %s to hear a peer", wait)
		default:
			return StateActive, CauseNoPeer, fmt.Sprintf("no peer heard within %s", wait)
		}
	}
	switch p.state {
	case StateActive:
		return StateStandby, CauseNone, fmt.Sprintf("peer %s is active", p.name)
	case StateOffline:
		// The peer has just started; give it the same chance to become Standby that a
		// silent peer gets, then take over (an Offline device cannot take traffic).
		if !waited {
			return StateStandby, CauseNone, fmt.Sprintf("peer %s is starting", p.name)
		}
		return StateActive, CausePeerOffline, fmt.Sprintf("peer %s is offline", p.name)
	}
	// Both Standby. A yield is a fresh, deliberate act (run sys failover standby) and is
	// followed at once; the tie-break waits until the peer's state has settled.
	switch {
	case v.yielding && !p.yielding:
		return StateStandby, CauseNone, fmt.Sprintf("yielded to peer %s", p.name)
	case p.yielding && !v.yielding:
		return StateActive, CausePeerYielded, fmt.Sprintf("peer %s yielded", p.name)
	}
	if p.heardFor < v.settle {
		return StateStandby, CauseNone, fmt.Sprintf("listening to peer %s", p.name)
	}
	if v.self < p.name {
		return StateActive, CauseTieBreak, fmt.Sprintf("tie-break: both standby, %s < %s", v.self, p.name)
	}
	return StateStandby, CauseNone, fmt.Sprintf("tie-break: both standby, %s < %s", p.name, v.self)
}

func active(v view) (State, Cause, string) {
	p := v.peer
	switch {
	case !p.alive:
		return StateActive, CauseNone, "no peer alive"
	case p.state != StateActive:
		return StateActive, CauseNone, fmt.Sprintf("peer %s is %s", p.name, p.state)
	case v.self > p.name:
		return StateStandby, CauseSplitBrain, fmt.Sprintf("split brain: peer %s is also active, %s < %s stays active", p.name, p.name, v.self)
	default:
		return StateActive, CauseNone, fmt.Sprintf("split brain: peer %s is also active, %s < %s stays active", p.name, v.self, p.name)
	}
}
