package failover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// loop is the state of a running Machine. It is owned by the goroutine of Run: every field
// is read and written there only; other goroutines talk to it through channels.
type loop struct {
	m      *Machine
	logger *slog.Logger
	cfg    Config
	tick   ticker

	events   chan event      // from the listener goroutines
	hookDone chan hookResult // cap 1: the one hook call in flight has returned

	listeners map[netip.AddrPort]listener
	conns     map[netip.AddrPort]*net.UDPConn // bound sockets, by listen address
	gen       uint64                          // generation of the latest listener started
	wg        sync.WaitGroup                  // listener goroutines
	waitFrom  time.Time                       // when the wait for a peer began (first socket bound, or Run start with nothing to bind); zero before

	state       State
	since       time.Time
	reason      string
	yielding    bool
	pending     *transition // the hook call in flight, if any
	replies     []reply     // ForceStandby answers, sent once the new state is published
	transitions uint64
	failovers   uint64
	byCause     [NumCauses]uint64 // failovers by cause
	lastErr     string

	seq                            *atomic.Uint64 // shared with the pacer
	pacer                          roundPacer     // nil with a fake clock
	buf                            []byte
	lastAdvert                     advert
	sent, received, missed, reject uint64
	sendFailing                    map[netip.AddrPort]bool // logged once per failing destination
	payloadErrLogged               bool
	sameNameLogged                 bool

	peer      peerInfo
	peerAlive bool // as of the latest evaluation
	// turnAt is when the loop last finished handling something. With a tick every Interval,
	// a gap of a Timeout or more means that the loop did not run: the daemon was starved of
	// CPU, or its runtime stopped every goroutine.
	turnAt time.Time

	version     uint64
	lastKey     statusKey
	lastPayload []byte
}

// peerInfo is what the latest accepted heartbeat said.
type peerInfo struct {
	name      string
	addr      netip.AddrPort
	bootID    uint64
	seq       uint64
	state     State
	yielding  bool
	lastHeard time.Time
	// heardSince is when this run of heartbeats began (first heard, restarted, or heard
	// again after falling silent).
	heardSince time.Time
	payload    []byte // never modified once stored
}

type listener struct {
	gen    uint64
	cancel context.CancelFunc
}

type eventKind uint8

const (
	evBound    eventKind = iota // a heartbeat socket was bound
	evUnbound                   // it failed and was closed
	evDatagram                  // a datagram arrived (hb, or err if it did not decode)
)

type event struct {
	kind eventKind
	gen  uint64
	addr netip.AddrPort // the listen address
	conn *net.UDPConn
	from netip.AddrPort
	hb   heartbeat
	err  error
}

// transition is a hook call in flight.
type transition struct {
	from, to State
	cause    Cause
	reason   string
	reply    chan error // ForceStandby's, or nil
}

type reply struct {
	to  chan error
	err error
}

type hookResult struct {
	t   *transition
	err error
}

// advert is what our heartbeats say about us.
type advert struct {
	state State
	yield bool
}

// statusKey is the part of Status whose change notifies the subscribers (with the payload).
type statusKey struct {
	state        State
	reason       string
	transitions  uint64
	yielding     bool
	peer         string
	peerState    State
	peerAlive    bool
	peerYielding bool
	lastErr      string
}

func newLoop(m *Machine) *loop {
	m.mu.Lock()
	cfg := m.cfg
	m.mu.Unlock()
	l := &loop{
		m:           m,
		logger:      m.logger,
		cfg:         cfg,
		events:      make(chan event, 16),
		hookDone:    make(chan hookResult, 1),
		listeners:   make(map[netip.AddrPort]listener),
		conns:       make(map[netip.AddrPort]*net.UDPConn),
		sendFailing: make(map[netip.AddrPort]bool),
		state:       StateOffline,
		since:       m.clock.Now(),
		reason:      "starting",
		lastAdvert:  advert{state: StateOffline},
		seq:         new(atomic.Uint64),
	}
	if m.pace {
		l.pacer = &pacer{seq: l.seq, logger: l.logger}
		if cfg.PacerProcess != "" {
			pp, err := newProcPacer(cfg.PacerProcess, l.logger)
			if err != nil {
				l.logger.Warn("heartbeat pacer runs as a thread: it may run late when the CPU is saturated", slog.Any("err", err))
			} else {
				l.pacer, l.seq = pp, pp.seq()
			}
		}
	}
	return l
}

// run handles events until ctx ends.
func (l *loop) run(ctx context.Context) {
	l.tick = l.m.clock.NewTicker(l.cfg.Interval)
	defer l.tick.Stop()
	l.logger.Info("failover starting", "timeout", l.cfg.Timeout, "interval", l.cfg.Interval,
		"listen", l.cfg.Listen, "peers", l.cfg.Peers)
	for _, a := range l.cfg.Listen {
		l.startListener(ctx, a)
	}
	if l.pacer != nil {
		l.wg.Go(func() { l.pacer.run(ctx) })
	}
	now := l.m.clock.Now()
	l.standalone(now)
	l.evaluate(ctx, now) // Offline → Standby: the first BecomeStandby
	l.publish()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.tick.C():
			now = l.m.clock.Now()
			l.evaluate(ctx, now)
			l.send()
		case ev := <-l.events:
			now = l.m.clock.Now()
			l.onEvent(ctx, ev, now)
		case res := <-l.hookDone:
			now = l.m.clock.Now()
			l.finish(ctx, res, now)
			l.evaluate(ctx, now)
		case answer := <-l.m.reqs:
			now = l.m.clock.Now()
			l.force(ctx, answer, now)
		case <-l.m.reconf:
			now = l.m.clock.Now()
			l.reconfigure(ctx, now)
		}
		if l.advert() != l.lastAdvert {
			l.send() // tell the peer at once rather than at the next tick
		}
		l.publish()
		l.turnAt = now
	}
}

// shutdown ends the listeners, waits for a hook call in flight and leaves the machine Offline.
func (l *loop) shutdown() {
	for _, lst := range l.listeners {
		lst.cancel()
	}
	if l.pending != nil {
		res := <-l.hookDone
		l.finish(nil, res, l.m.clock.Now())
	}
	l.wg.Wait()
	if l.state != StateOffline {
		l.logger.Info("failover state change", "from", l.state, "to", StateOffline, "reason", "stopped")
	}
	l.state, l.since, l.reason = StateOffline, l.m.clock.Now(), "stopped"
	l.peerAlive = false
	l.publish()
}

func (l *loop) onEvent(ctx context.Context, ev event, now time.Time) {
	if l.apply(ev, now) {
		l.evaluate(ctx, now)
	}
}

// apply takes in one event from a listener and says whether it was current.
func (l *loop) apply(ev event, now time.Time) bool {
	if lst, ok := l.listeners[ev.addr]; !ok || lst.gen != ev.gen {
		return false // from a listener that was stopped by Reconfigure
	}
	switch ev.kind {
	case evBound:
		l.conns[ev.addr] = ev.conn
		if l.waitFrom.IsZero() {
			l.waitFrom = now // the wait for a peer starts when we can hear one
		}
	case evUnbound:
		if l.conns[ev.addr] == ev.conn {
			delete(l.conns, ev.addr)
		}
	case evDatagram:
		l.onDatagram(ev, now)
	}
	return true
}

// late says whether the peer's heartbeats have arrived but not yet been read: when the
// daemon is starved of CPU, the tick that finds the peer silent can run before the
// listeners. Datagrams already read are taken in; one still waiting in a socket defers the
// verdict to its delivery. The deferral is bounded by twice the timeout, so that a stream
// of datagrams that are not the peer's cannot hold a failover off; but not after the loop
// itself did not run for a timeout or more, since then the silence is the loop's own. (In
// the lab, at failover.nettimeout 0.02 with the CPU saturated, a standby's loop missed
// 212 ms and took over from a peer whose heartbeats were waiting in its socket.) Once the
// loop runs on time again, the bound holds again.
func (l *loop) late(now time.Time) bool {
	for {
		select {
		case ev := <-l.events:
			l.apply(ev, now)
			continue
		default:
		}
		break
	}
	if now.Sub(l.peer.lastHeard) < l.cfg.Timeout {
		return true
	}
	stalled := !l.turnAt.IsZero() && now.Sub(l.turnAt) >= l.cfg.Timeout
	if now.Sub(l.peer.lastHeard) >= 2*l.cfg.Timeout && !stalled {
		return false
	}
	for _, c := range l.conns {
		if datagramWaiting(c) {
			return true
		}
	}
	return false
}

// datagramWaiting asks the kernel whether a datagram is queued on c. It does not read, so
// it does not contend with the listener's read.
func datagramWaiting(c *net.UDPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	cerr := rc.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return cerr == nil && err == nil && n > 0
}

func (l *loop) onDatagram(ev event, now time.Time) {
	from := unmap(ev.from)
	if ev.err != nil {
		l.reject++
		l.logger.Debug("heartbeat rejected", "from", from, slog.Any("err", ev.err))
		return
	}
	hb := ev.hb
	if hb.BootID == l.m.bootID && hb.Name == l.cfg.Device {
		return // our own
	}
	if len(l.cfg.Peers) > 0 && !slices.ContainsFunc(l.cfg.Peers, func(p netip.AddrPort) bool { return p.Addr() == from.Addr() }) {
		l.reject++
		l.logger.Debug("heartbeat rejected: the sender is not a peer address", "from", from, "peer", hb.Name)
		return
	}
	if hb.Name == l.cfg.Device {
		l.reject++
		if !l.sameNameLogged {
			l.logger.Warn("heartbeat rejected: the peer has our device name; the two devices need different names", "from", from)
			l.sameNameLogged = true
		}
		return
	}
	p := &l.peer
	since := p.heardSince
	fresh := p.name != hb.Name || p.bootID != hb.BootID || now.Sub(p.lastHeard) >= l.cfg.Timeout
	if fresh {
		since = now
	}
	switch {
	case p.name == "":
	case hb.Name != p.name:
		l.logger.Warn("heartbeat from another peer", "peer", hb.Name, "previous_peer", p.name, "from", from)
	case hb.BootID != p.bootID:
		l.logger.Info("peer restarted", "peer", hb.Name, "from", from)
	case hb.Seq <= p.seq:
		return // a copy that came over another path, or a late one
	default:
		l.missed += hb.Seq - p.seq - 1
	}
	*p = peerInfo{name: hb.Name, addr: from, bootID: hb.BootID, seq: hb.Seq, state: hb.State,
		yielding: hb.Yield, lastHeard: now, heardSince: since, payload: hb.Payload}
	l.received++
	if fresh && l.cfg.PeerHeard != nil {
		l.cfg.PeerHeard()
	}
	if hb.State == StateActive && l.yielding {
		l.yielding = false
		l.logger.Info("peer is active; no longer yielding", "peer", hb.Name)
	}
}

// standalone starts the wait for a peer when there is no address to bind (a device not yet
// given a unicast address): with nothing to hear a peer on, it goes Active after Timeout.
func (l *loop) standalone(now time.Time) {
	if len(l.cfg.Listen) == 0 && l.waitFrom.IsZero() {
		l.waitFrom = now
	}
}

// view gathers the facts for next.
func (l *loop) view(now time.Time) view {
	v := view{self: l.cfg.Device, yielding: l.yielding, timeout: l.cfg.Timeout, settle: 2 * l.cfg.Interval}
	if !l.waitFrom.IsZero() {
		v.listening, v.listened = true, now.Sub(l.waitFrom)
	}
	if p := l.peer; p.name != "" {
		v.peer = peerView{name: p.name, alive: now.Sub(p.lastHeard) < l.cfg.Timeout, state: p.state, yielding: p.yielding,
			heardFor: now.Sub(p.heardSince)}
	}
	return v
}

// evaluate runs the transition function and starts the transition it asks for, unless a
// hook call is already in flight (the next evaluation after it returns will see).
func (l *loop) evaluate(ctx context.Context, now time.Time) {
	v := l.view(now)
	if l.peerAlive && !v.peer.alive && l.late(now) {
		if v = l.view(now); !v.peer.alive {
			return // a heartbeat is waiting to be read; its delivery evaluates again
		}
	}
	if v.peer.alive != l.peerAlive {
		l.peerAlive = v.peer.alive
		if v.peer.alive {
			l.logger.Info("peer heartbeat heard", "peer", v.peer.name, "peer_state", v.peer.state, "from", l.peer.addr)
		} else {
			l.logger.Warn("peer heartbeat lost", "peer", v.peer.name, "silent", now.Sub(l.peer.lastHeard), "timeout", l.cfg.Timeout)
		}
	}
	if l.pending != nil || ctx.Err() != nil {
		return
	}
	if to, cause, reason := next(l.state, v); to != l.state {
		l.begin(ctx, to, cause, reason, nil)
	}
}

// begin calls the hook for a transition in a goroutine of its own, so that heartbeats go on
// while the daemon moves addresses; the result comes back on hookDone.
func (l *loop) begin(ctx context.Context, to State, cause Cause, reason string, answer chan error) {
	t := &transition{from: l.state, to: to, cause: cause, reason: reason, reply: answer}
	l.pending = t
	l.logger.Debug("failover hook called", "from", t.from, "to", to, "reason", reason)
	hooks, done := l.m.hooks, l.hookDone
	go func() {
		var err error
		if to == StateActive {
			err = hooks.BecomeActive(ctx, reason)
		} else {
			err = hooks.BecomeStandby(ctx, reason)
		}
		done <- hookResult{t: t, err: err}
	}()
}

// finish completes a transition when its hook has returned. ctx is nil at shutdown.
func (l *loop) finish(ctx context.Context, res hookResult, now time.Time) {
	t := res.t
	l.pending = nil
	var replyErr error
	if res.err != nil {
		level := slog.LevelError
		if ctx == nil || ctx.Err() != nil || errors.Is(res.err, context.Canceled) {
			level = slog.LevelInfo // stopping
		}
		l.lastErr = fmt.Sprintf("become %s: %v", strings.ToLower(t.to.String()), res.err)
		if t.to == StateActive {
			l.logger.Log(context.Background(), level, "cannot become active; will retry",
				"from", t.from, "to", t.to, "reason", t.reason, slog.Any("err", res.err))
			if t.reply != nil {
				l.replies = append(l.replies, reply{t.reply, fmt.Errorf("become active: %w", res.err)})
			}
			return
		}
		l.logger.Log(context.Background(), level, "standby hook failed; standby all the same",
			"from", t.from, "to", t.to, "reason", t.reason, slog.Any("err", res.err))
		replyErr = fmt.Errorf("standby, but the standby hook failed: %w", res.err)
	} else {
		l.lastErr = ""
	}
	from := l.state
	l.state, l.since, l.reason = t.to, now, t.reason
	l.transitions++
	if from == StateActive || t.to == StateActive {
		l.failovers++
		l.byCause[t.cause]++
	}
	if t.to == StateActive {
		l.yielding = false
	}
	l.logger.Info("failover state change", "from", from, "to", t.to, "reason", t.reason, "cause", t.cause)
	if t.reply != nil {
		l.replies = append(l.replies, reply{t.reply, replyErr})
	}
}

// force handles ForceStandby.
func (l *loop) force(ctx context.Context, answer chan error, now time.Time) {
	if l.pending != nil {
		answer <- fmt.Errorf("cannot go standby: %s is changing from %s to %s: %w", l.cfg.Device, l.state, l.pending.to, ErrNotActive)
		return
	}
	if l.state != StateActive {
		answer <- fmt.Errorf("cannot go standby: %s is %s: %w", l.cfg.Device, l.state, ErrNotActive)
		return
	}
	p := l.view(now).peer
	var why string
	switch {
	case p.name == "":
		why = "no peer has been heard"
	case !p.alive:
		why = fmt.Sprintf("peer %s last heard %s ago", p.name, now.Sub(l.peer.lastHeard).Round(time.Millisecond))
	case p.state == StateOffline:
		why = fmt.Sprintf("peer %s is %s", p.name, p.state)
	}
	if why != "" {
		answer <- fmt.Errorf("cannot go standby: %s: %w", why, ErrNoPeer)
		return
	}
	l.yielding = true
	l.begin(ctx, StateStandby, CauseForced, "forced to standby (run sys failover standby)", answer)
}

// reconfigure applies the latest Config given to Reconfigure.
func (l *loop) reconfigure(ctx context.Context, now time.Time) {
	l.m.mu.Lock()
	cfg := l.m.cfg
	l.m.mu.Unlock()
	old := l.cfg
	l.cfg = cfg
	if cfg.Interval != old.Interval {
		l.tick.Reset(cfg.Interval)
	}
	for a, lst := range l.listeners {
		if !slices.Contains(cfg.Listen, a) {
			lst.cancel()
			delete(l.listeners, a)
			delete(l.conns, a)
		}
	}
	for _, a := range cfg.Listen {
		if _, ok := l.listeners[a]; !ok {
			l.startListener(ctx, a)
		}
	}
	l.standalone(now)
	l.logger.Info("failover reconfigured", "timeout", cfg.Timeout, "interval", cfg.Interval,
		"listen", cfg.Listen, "peers", cfg.Peers)
	l.evaluate(ctx, now)
}

// advert is the state our heartbeats claim: a device going Active claims it as soon as it
// has decided, and a device leaving Active keeps claiming it until its hook has returned,
// so the peer never takes addresses that are still in use.
func (l *loop) advert() advert {
	a := advert{state: l.state, yield: l.yielding}
	if l.pending != nil && l.pending.to == StateActive {
		a.state = StateActive
	}
	return a
}

// send sends one heartbeat round: the same sequence number to every peer address.
func (l *loop) send() {
	a := l.advert()
	l.lastAdvert = a
	targets := l.cfg.Peers
	if len(targets) == 0 && l.peer.addr.IsValid() {
		targets = []netip.AddrPort{l.peer.addr}
	}
	if len(targets) == 0 || len(l.conns) == 0 {
		return
	}
	hb := heartbeat{Name: l.cfg.Device, State: a.state, Yield: a.yield, BootID: l.m.bootID}
	if l.cfg.Payload != nil {
		hb.Payload = l.cfg.Payload()
	}
	if _, err := hb.AppendBinary(l.buf[:0]); err != nil { // a payload too long
		if !l.payloadErrLogged {
			l.logger.Warn("heartbeat sent without its payload", slog.Any("err", err))
			l.payloadErrLogged = true
		}
		hb.Payload = nil
	} else {
		l.payloadErrLogged = false
	}
	var sends []pacedSend
	for _, to := range targets {
		if c := l.connFor(to); c != nil {
			sends = append(sends, pacedSend{conn: c, to: to})
		}
	}
	if l.pacer != nil {
		// Published before the sequence number is taken: see pacer.send.
		round := &pacedRound{hb: hb, interval: l.cfg.Interval, sends: sends}
		round.hb.Payload = bytes.Clone(hb.Payload)
		l.pacer.publish(round)
	}
	hb.Seq = l.seq.Add(1)
	b, err := hb.AppendBinary(l.buf[:0])
	if err != nil {
		return // cannot happen: the name was checked by New
	}
	l.buf = b
	for _, s := range sends {
		c, to := s.conn, s.to
		if _, err := c.WriteToUDPAddrPort(b, to); err != nil {
			if !l.sendFailing[to] {
				l.logger.Warn("cannot send heartbeat", "to", to, slog.Any("err", err))
				l.sendFailing[to] = true
			}
			continue
		}
		if l.sendFailing[to] {
			l.logger.Info("sending heartbeats again", "to", to)
			delete(l.sendFailing, to)
		}
		l.sent++
	}
	if l.pacer != nil {
		l.pacer.sentAt(time.Now())
	}
}

func (l *loop) pacedSent() uint64 {
	if l.pacer == nil {
		return 0
	}
	return l.pacer.sentCount()
}

// connFor picks the bound socket to send to a peer address from: same address family, the
// longest common prefix (the HA link's own subnet), the first in Listen on a tie.
func (l *loop) connFor(to netip.AddrPort) *net.UDPConn {
	var best *net.UDPConn
	bestBits := -1
	for _, a := range l.cfg.Listen {
		c := l.conns[a]
		if c == nil || a.Addr().Is4() != to.Addr().Is4() {
			continue
		}
		if n := commonPrefixBits(a.Addr(), to.Addr()); n > bestBits {
			best, bestBits = c, n
		}
	}
	return best
}

func commonPrefixBits(a, b netip.Addr) int {
	x, y := a.As16(), b.As16()
	n := 0
	for i := range x {
		if d := x[i] ^ y[i]; d != 0 {
			return n + bits.LeadingZeros8(d)
		}
		n += 8
	}
	return n
}

// publish refreshes the snapshot that Status returns and wakes the notifier on a change.
func (l *loop) publish() {
	p := l.peer
	st := Status{
		Device: l.cfg.Device, State: l.state, Since: l.since, Reason: l.reason, Yielding: l.yielding,
		Peer: p.name, PeerAddr: p.addr, PeerState: p.state, PeerLastHeard: p.lastHeard,
		PeerAlive: l.peerAlive, PeerYielding: p.yielding, PeerPayload: p.payload,
		HeartbeatsSent: l.sent + l.pacedSent(), HeartbeatsReceived: l.received, HeartbeatsMissed: l.missed,
		HeartbeatsRejected: l.reject, Transitions: l.transitions, Failovers: l.failovers,
		FailoversByCause: l.byCause, LastHookError: l.lastErr,
	}
	key := statusKey{state: st.State, reason: st.Reason, transitions: st.Transitions, yielding: st.Yielding,
		peer: st.Peer, peerState: st.PeerState, peerAlive: st.PeerAlive, peerYielding: st.PeerYielding,
		lastErr: st.LastHookError}
	changed := key != l.lastKey || !bytes.Equal(p.payload, l.lastPayload)
	if changed {
		l.version++
		l.lastKey, l.lastPayload = key, p.payload
	}
	st.Version = l.version
	l.m.mu.Lock()
	l.m.status = st
	l.m.pending = l.pending != nil
	l.m.mu.Unlock()
	if changed {
		select {
		case l.m.notify <- struct{}{}:
		default:
		}
	}
	// Answer ForceStandby only now, so that its caller reads the new state in Status.
	for _, r := range l.replies {
		r.to <- r.err
	}
	l.replies = nil
}

func (l *loop) startListener(ctx context.Context, addr netip.AddrPort) {
	l.gen++
	gen := l.gen
	lctx, cancel := context.WithCancel(ctx)
	l.listeners[addr] = listener{gen: gen, cancel: cancel}
	l.wg.Go(func() { l.m.listen(lctx, addr, gen, l.events) })
}

// listen binds addr (again and again until it works: the address may not exist yet),
// reports the socket and passes on every datagram, until ctx ends. It runs in a goroutine
// of its own and closes its socket before it returns.
func (m *Machine) listen(ctx context.Context, addr netip.AddrPort, gen uint64, events chan<- event) {
	logger := m.logger.With("listen", addr)
	failing := false
	for ctx.Err() == nil {
		conn, err := bindUDP(addr)
		if err != nil {
			if !failing {
				logger.Warn("cannot bind heartbeat socket; retrying", slog.Any("err", err))
				failing = true
			}
			sleep(ctx, m.retry)
			continue
		}
		failing = false
		logger.Info("heartbeat socket bound")
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		if deliver(ctx, events, event{kind: evBound, gen: gen, addr: addr, conn: conn}) {
			err = readHeartbeats(ctx, conn, addr, gen, events)
		}
		stop()
		conn.Close()
		if ctx.Err() != nil {
			return
		}
		logger.Warn("heartbeat socket failed; binding it again", slog.Any("err", err))
		deliver(ctx, events, event{kind: evUnbound, gen: gen, addr: addr, conn: conn})
		sleep(ctx, m.retry)
	}
}

func bindUDP(addr netip.AddrPort) (*net.UDPConn, error) {
	network := "udp6"
	if addr.Addr().Is4() {
		network = "udp4"
	}
	conn, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("bind heartbeat socket %s: %w", addr, err)
	}
	return conn, nil
}

// readHeartbeats decodes datagrams until a read fails (the socket is closed when ctx ends).
func readHeartbeats(ctx context.Context, conn *net.UDPConn, addr netip.AddrPort, gen uint64, events chan<- event) error {
	buf := make([]byte, maxHeartbeatLen+1) // one more, so that a longer datagram is seen as such
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return fmt.Errorf("read heartbeat on %s: %w", addr, err)
		}
		hb, err := decodeHeartbeat(buf[:n]) // copies what it keeps
		if !deliver(ctx, events, event{kind: evDatagram, gen: gen, addr: addr, from: from, hb: hb, err: err}) {
			return ctx.Err()
		}
	}
}

func deliver(ctx context.Context, events chan<- event, ev event) bool {
	select {
	case events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
