package failover

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Hooks is what the machine drives; the daemon implements it over kernel/. The machine calls
// one hook at a time, from a goroutine of its own, with Run's context, and makes no other
// transition until the call has returned; heartbeats go on meanwhile.
type Hooks interface {
	// BecomeActive is called when this device must take traffic: the daemon stops receiving
	// the mirror stream, adds the floating addresses, sends gratuitous ARP and starts
	// mirroring to the peer. On error the device stays Standby, the error is logged (and
	// shown in Status.LastHookError), and the call is made again on a later tick if the
	// rules still say Active.
	BecomeActive(ctx context.Context, reason string) error
	// BecomeStandby is called when this device must stop taking traffic: the floating
	// addresses are removed and the mirror stream is received. It is called once when Run
	// starts, so that the kernel state is clean whatever an earlier run left. On error the
	// device is Standby all the same (claiming Active with a broken kernel state would be
	// worse); the error is logged and shown in Status.LastHookError.
	BecomeStandby(ctx context.Context, reason string) error
}

// Status is a snapshot of a Machine, for `show sys failover` and the tmsh prompt.
type Status struct {
	Device   string    // this device's name
	State    State     // our state
	Since    time.Time // when State was entered (zero before Run)
	Reason   string    // why the last transition was made
	Yielding bool      // we ran ForceStandby and have not yet seen the peer Active

	Peer          string         // the peer's device name; "" if never heard
	PeerAddr      netip.AddrPort // where its latest heartbeat came from
	PeerState     State          // its state in its latest heartbeat (Offline if never heard)
	PeerLastHeard time.Time      // when its latest heartbeat arrived; zero if never
	PeerAlive     bool           // heard within Timeout (as of the latest tick)
	PeerYielding  bool           // its yield flag in its latest heartbeat
	PeerPayload   []byte         // the payload of its latest heartbeat (a copy)

	HeartbeatsSent     uint64 // datagrams sent (one per peer address per round)
	HeartbeatsReceived uint64 // heartbeats accepted from the peer (copies over other paths not counted)
	HeartbeatsMissed   uint64 // gaps in the peer's sequence numbers: heartbeats lost or late
	HeartbeatsRejected uint64 // garbage, or datagrams from an address that is not a peer

	Transitions uint64 // every change of State made by the machine, the start included
	Failovers   uint64 // changes into or out of Active
	// FailoversByCause counts them by cause (FailoverCauses); they add up to Failovers.
	FailoversByCause [NumCauses]uint64
	LastHookError    string // the latest hook error; "" once a hook succeeds again

	// Version increases each time one of the fields that Subscribe reports on changes
	// (everything but the counters and PeerLastHeard).
	Version uint64
}

// Machine is the failover state machine of one device. Create it with New and start it with
// Run; its other methods may be called from any goroutine, before, during or after Run.
type Machine struct {
	device string
	hooks  Hooks
	logger *slog.Logger
	clock  clock
	bootID uint64
	retry  time.Duration // between attempts to bind a heartbeat socket
	pace   bool          // run the pacer (real clock only: it keeps real time)

	started  atomic.Bool
	reqs     chan chan error // ForceStandby: the loop answers on the channel (buffered 1)
	reconf   chan struct{}   // cap 1: cfg was changed
	loopDone chan struct{}   // closed once Run's loop takes no more requests
	notify   chan struct{}   // cap 1: status changed, wake the notifier

	mu        sync.Mutex
	cfg       Config // the latest config, read by the loop on reconf
	status    Status
	pending   bool // a hook call is in flight (tests use it to know the machine is settled)
	subs      []subscriber
	nextSub   int
	delivered uint64 // Status.Version last given to the subscribers
}

type subscriber struct {
	id int
	fn func(Status)
}

// New checks cfg and returns a Machine that does nothing until Run. A nil logger discards.
func New(cfg Config, hooks Hooks, logger *slog.Logger) (*Machine, error) {
	return newMachine(cfg, hooks, logger, realClock{})
}

func newMachine(cfg Config, hooks Hooks, logger *slog.Logger, clk clock) (*Machine, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if hooks == nil {
		return nil, fmt.Errorf("%w: nil hooks", ErrInvalidConfig)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var b [8]byte
	rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	_, realTime := clk.(realClock)
	return &Machine{
		pace:     realTime,
		device:   cfg.Device,
		hooks:    hooks,
		logger:   logger.With("component", "failover"), // the caller's logger names the device
		clock:    clk,
		bootID:   binary.BigEndian.Uint64(b[:]),
		retry:    500 * time.Millisecond,
		reqs:     make(chan chan error),
		reconf:   make(chan struct{}, 1),
		loopDone: make(chan struct{}),
		notify:   make(chan struct{}, 1),
		cfg:      cfg,
		status:   Status{Device: cfg.Device, State: StateOffline},
	}, nil
}

// Run binds the heartbeat sockets, sends heartbeats, receives the peer's and runs the state
// machine until ctx ends; then it stops every goroutine it started (waiting for a hook call
// in flight, which gets the cancelled ctx) and returns nil, leaving the machine Offline.
// It calls no hook on the way out and sends no farewell: the daemon decides what to do
// with the kernel state at shutdown, and the peer takes over after Timeout.
//
// Run starts Offline, calls BecomeStandby at once, and never goes Active for want of a peer
// before it has listened for one full Timeout. Run may be called once per Machine (a
// restarted device is a new Machine, with a new boot id); later calls return
// ErrAlreadyStarted.
func (m *Machine) Run(ctx context.Context) error {
	if !m.started.CompareAndSwap(false, true) {
		return ErrAlreadyStarted
	}
	stopNotifier, notifierDone := make(chan struct{}), make(chan struct{})
	go m.notifier(stopNotifier, notifierDone)

	l := newLoop(m)
	l.run(ctx)
	close(m.loopDone)
	l.shutdown()

	close(stopNotifier)
	<-notifierDone
	return nil
}

// Reconfigure changes the timeout, interval, peers, listen addresses and payload function
// at run time (sys db failover.nettimeout is modified live). It checks cfg as New does and
// returns an error wrapping ErrInvalidConfig, leaving the machine as it was, if cfg is bad
// or changes Device. It does not wait: Run applies the latest config on its next turn
// (before Run, Run starts with it). A shorter Timeout may make a silent peer failed at once.
func (m *Machine) Reconfigure(cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	if cfg.Device != m.device {
		return fmt.Errorf("%w: the device name cannot change from %q to %q at run time", ErrInvalidConfig, m.device, cfg.Device)
	}
	m.mu.Lock()
	m.cfg = cfg
	m.mu.Unlock()
	select {
	case m.reconf <- struct{}{}:
	default: // a signal is already pending; the loop will read the latest cfg
	}
	return nil
}

// ForceStandby implements `run sys failover standby`. On an Active device with a live peer
// that can take over (heard within Timeout and not Offline), it sets the yield flag, goes
// Standby (BecomeStandby) and returns once the hook has returned; the next heartbeat tells
// the peer, which goes Active without waiting for a timeout. The yielding device does not
// take Active back while the peer is alive; its yield ends when it sees the peer Active.
//
// Otherwise it changes nothing and returns an error wrapping ErrNotActive (not Active, or
// already changing state), ErrNoPeer (nobody to take over) or ErrNotRunning (Run is not
// running). If BecomeStandby fails, the device is Standby anyway and the error says so.
func (m *Machine) ForceStandby() error {
	if !m.started.Load() {
		return fmt.Errorf("cannot go standby: %w", ErrNotRunning)
	}
	reply := make(chan error, 1)
	select {
	case m.reqs <- reply:
	case <-m.loopDone:
		return fmt.Errorf("cannot go standby: %w", ErrNotRunning)
	}
	return <-reply // the loop always answers, at shutdown too
}

// Status returns a snapshot of the machine. It does not block on Run (the snapshot is
// refreshed after each event Run handles) and may be called at any time.
func (m *Machine) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.statusLocked()
}

func (m *Machine) statusLocked() Status {
	st := m.status
	st.PeerPayload = bytes.Clone(st.PeerPayload)
	return st
}

// Subscribe is how the daemon learns of changes without polling: fn is called with the new
// Status after each change of State, Reason, yield flags, peer name, peer state, peer
// liveness, peer payload or LastHookError (counters alone do not call it), and once more
// when Run ends. Calls are made from one goroutine that Run owns, one at a time, in order;
// changes made while fn runs are coalesced, so fn always gets the latest Status and
// Status.Version shows whether some were skipped. fn may call any method of the Machine
// (ForceStandby included) and should return soon, since it delays later calls.
//
// Subscribe may be called at any time; the returned func removes fn (a call already under
// way may still finish).
func (m *Machine) Subscribe(fn func(Status)) (unsubscribe func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nextSub++
	id := m.nextSub
	m.subs = append(m.subs, subscriber{id: id, fn: fn})
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		for i, s := range m.subs {
			if s.id == id {
				m.subs = append(m.subs[:i:i], m.subs[i+1:]...)
				return
			}
		}
	}
}

// notifier calls the subscribers after each change, until stop is closed; it then delivers
// a change still pending (the final Offline) and closes done.
func (m *Machine) notifier(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case <-m.notify:
			m.deliver()
		case <-stop:
			select {
			case <-m.notify:
				m.deliver()
			default:
			}
			return
		}
	}
}

func (m *Machine) deliver() {
	m.mu.Lock()
	st := m.status
	if st.Version == m.delivered {
		m.mu.Unlock()
		return // already delivered by an earlier wake-up
	}
	m.delivered = st.Version
	subs := append([]subscriber(nil), m.subs...)
	m.mu.Unlock()
	for _, s := range subs {
		c := st
		c.PeerPayload = bytes.Clone(st.PeerPayload) // each subscriber gets its own
		s.fn(c)
	}
}
