package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/openappliance/appliance/appliance/config"
	"github.com/openappliance/appliance/appliance/tmsh"
	"github.com/openappliance/appliance/ha/failover"
	"github.com/openappliance/appliance/ha/mirror"
	"github.com/openappliance/appliance/kernel/conntrack"
	"github.com/openappliance/appliance/kernel/link"
	"github.com/openappliance/appliance/kernel/tickle"
	"golang.org/x/sys/unix"
)

// Ports of the peer channels.
const (
	HeartbeatPort = 1026
	MirrorPort    = 1028
)

// eventBuffer is the conntrack event socket's receive buffer: large, so that a burst of new
// connections does not overrun it (an overrun is repaired by a full resync, but costs one).
const eventBuffer = 32 << 20

// eventLinger is Options.EventLinger's default: well inside a 5 ms lag budget. The reader
// lingers only under load (conntrack.Listener.SetLinger), where it then wakes at most a
// thousand times a second whatever the rate.
const eventLinger = time.Millisecond

// failoverConfig derives the failover machine's settings from the configuration.
func (d *Daemon) failoverConfig(c *config.Config) failover.Config {
	fc := failover.Config{
		Device:  c.Local.Device.Name,
		Timeout: c.NetTimeout(),
		Payload: func() []byte { return d.sharedDigest().payload },
		// A restarted standby listens for the mirror stream by the time its heartbeats
		// come: mirror to it now, not after the sender's next retry pause.
		PeerHeard: d.roles.redial,

		PacerProcess: d.opts.PacerProcess,
	}
	for _, a := range c.Local.Device.UnicastAddresses {
		fc.Listen = append(fc.Listen, netip.AddrPortFrom(a, HeartbeatPort))
	}
	if g, ok := c.FailoverGroup(); ok && g.NetworkFailover {
		if peer, ok := c.Peer(); ok {
			for _, a := range peer.UnicastAddresses {
				fc.Peers = append(fc.Peers, netip.AddrPortFrom(a, HeartbeatPort))
			}
		}
	}
	return fc
}

// hooks are what the failover machine drives.
type hooks struct{ d *Daemon }

// BecomeActive: the mirror stream stops, the floating addresses come up (the mirrored
// entries are already in this kernel, so there is no race with the first packets), one
// gratuitous ARP goes out at once, and mirroring to the peer starts.
func (h hooks) BecomeActive(ctx context.Context, reason string) error {
	d := h.d
	d.mu.Lock()
	defer d.mu.Unlock()
	d.logger.Info("becoming Active", "reason", reason)
	d.toActive.Add(1)
	d.active = true
	d.roles.stop()
	d.roles.setActive(true)
	cfg := d.Config()
	d.announce(d.addFloating(&cfg, nil))
	if !d.opts.NoTickle {
		d.roles.goActive(d.tickle)
	}
	d.roles.start(&cfg)
	return nil
}

// BecomeStandby: mirroring to the peer stops, the floating addresses go, and the device
// listens for the peer's mirror stream.
func (h hooks) BecomeStandby(ctx context.Context, reason string) error {
	d := h.d
	d.mu.Lock()
	defer d.mu.Unlock()
	d.logger.Info("becoming Standby", "reason", reason)
	d.toStandby.Add(1)
	d.active = false
	d.roles.setActive(false)
	d.roles.stop()
	cfg := d.Config()
	d.removeFloating(&cfg, nil)
	d.roles.start(&cfg)
	return nil
}

// ForceStandby runs `run sys failover standby`.
func (d *Daemon) ForceStandby(ctx context.Context) error {
	d.mu.Lock()
	fsm := d.fsm
	d.mu.Unlock()
	if fsm == nil {
		return fmt.Errorf("failover is not running yet")
	}
	if err := fsm.ForceStandby(); err != nil {
		return config.Invalid("%v", err)
	}
	return nil
}

// roleRunner runs what the device's role needs: on the Active, the conntrack event
// listener and the mirror sender; on the Standby, the mirror receiver. Its methods are
// called with Daemon.mu held.
type roleRunner struct {
	d    *Daemon
	base context.Context // the daemon's lifetime
	bg   sync.WaitGroup  // background work such as gratuitous ARP

	activeCtx    context.Context // the current Active term; nil when not Active
	activeCancel context.CancelFunc
	cancel       context.CancelFunc
	done         sync.WaitGroup
	key          string
	sender       *mirror.Sender
	receiver     *mirror.Receiver
	statsMu      sync.Mutex
}

// goActive runs fn until the device leaves Active (or the daemon stops).
func (r *roleRunner) goActive(fn func(ctx context.Context)) {
	if r.activeCtx == nil {
		return
	}
	ctx := r.activeCtx
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		fn(ctx)
	}()
}

// setActive starts or ends an Active term, whose context bounds work such as the
// gratuitous ARP repeats.
func (r *roleRunner) setActive(active bool) {
	if r.activeCancel != nil {
		r.activeCancel()
		r.activeCtx, r.activeCancel = nil, nil
	}
	if active && r.base != nil {
		r.activeCtx, r.activeCancel = context.WithCancel(r.base)
	}
}

func (r *roleRunner) roleKey(c *config.Config) string {
	if r.d.active {
		peers := senderPeers(c)
		return fmt.Sprint("active", peers)
	}
	return fmt.Sprint("standby", receiverAddrs(c))
}

func senderPeers(c *config.Config) []netip.AddrPort {
	peer, ok := c.Peer()
	if !ok {
		return nil
	}
	var out []netip.AddrPort
	for _, a := range []netip.Addr{peer.MirrorIP, peer.MirrorSecondaryIP} {
		if a.IsValid() {
			out = append(out, netip.AddrPortFrom(a, MirrorPort))
		}
	}
	return out
}

func receiverAddrs(c *config.Config) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range []netip.Addr{c.Local.Device.MirrorIP, c.Local.Device.MirrorSecondaryIP} {
		if a.IsValid() {
			out = append(out, netip.AddrPortFrom(a, MirrorPort))
		}
	}
	return out
}

// refresh restarts the role's workers if the addresses they use changed.
func (r *roleRunner) refresh(c *config.Config) {
	if r.base == nil || r.cancel == nil && r.key == "" {
		return
	}
	if r.roleKey(c) != r.key {
		r.stop()
		r.start(c)
	}
}

// resync makes the running sender, if any, send the whole table again.
func (r *roleRunner) resync() {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	if r.sender != nil {
		r.sender.Resync()
	}
}

// redial makes the running sender, if any, dial its peer at once.
func (r *roleRunner) redial() {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	if r.sender != nil {
		r.sender.Redial()
	}
}

func (r *roleRunner) stop() {
	if r.cancel != nil {
		r.cancel()
		r.done.Wait()
		r.cancel = nil
	}
	if r.receiver != nil {
		// The entries stay in the kernel: they are ours now, or the peer will resync them.
		r.receiver.Forget()
	}
	r.statsMu.Lock()
	r.sender, r.receiver = nil, nil
	r.statsMu.Unlock()
	r.key = ""
}

func (r *roleRunner) start(c *config.Config) {
	if r.base == nil {
		return
	}
	d := r.d
	r.key = r.roleKey(c)
	ctx, cancel := context.WithCancel(r.base)
	r.cancel = cancel
	logger := d.logger.With("component", "mirror")
	if d.active {
		peers := senderPeers(c)
		if len(peers) == 0 {
			return
		}
		// The listener's socket exists before the first dump, so no change falls between them.
		buf := d.opts.EventBuffer
		if buf <= 0 {
			buf = eventBuffer
		}
		listener, err := conntrack.NewListener(buf)
		if err != nil {
			logger.Error("conntrack events unavailable: mirroring stopped", slog.Any("err", err))
			return
		}
		// The handshakes and closing states of TCP connections are dropped in the kernel: no
		// read, no decode (see virtualIndex.mirrors).
		if err := listener.SetFilter(conntrack.EventFilter{EstablishedTCP: true}); err != nil {
			logger.Warn("conntrack events unfiltered: every TCP state change is read", slog.Any("err", err))
		}
		linger := d.opts.EventLinger
		switch {
		case linger == 0:
			linger = eventLinger
		case linger < 0:
			linger = 0
		}
		sender := mirror.NewSender(mirror.SenderConfig{
			Device:         c.Local.Device.Name,
			Peers:          peers,
			Snapshot:       d.snapshot,
			Logger:         d.logger, // the package names its component
			DigestInterval: d.opts.DigestInterval,
			// What the listener read in one go leaves in one write (SetBurstDone below).
			WakeOnFlush: true,
		})
		listener.SetLinger(linger)
		listener.SetBurstDone(sender.Flush)
		r.statsMu.Lock()
		r.sender = sender
		r.statsMu.Unlock()
		r.done.Add(2)
		go func() {
			defer r.done.Done()
			sender.Run(ctx)
		}()
		go func() {
			defer r.done.Done()
			defer listener.Close()
			err := listener.Run(ctx, func(ev conntrack.Event) { d.onEvent(sender, ev) })
			if err != nil && ctx.Err() == nil {
				logger.Error("conntrack event listener stopped", slog.Any("err", err))
			}
		}()
		logger.Info("mirroring to peer", "peers", peers)
		return
	}
	addrs := receiverAddrs(c)
	if len(addrs) == 0 {
		return
	}
	// The receiver checks its own kernel against what it injected at every digest: an entry
	// deleted or expired behind its back is repaired, one it never injected is removed.
	receiver := mirror.NewReceiver(mirror.ReceiverConfig{Listen: addrs, Table: flowWriter{d}, Snapshot: d.snapshot, Logger: d.logger})
	r.statsMu.Lock()
	r.receiver = receiver
	r.statsMu.Unlock()
	r.done.Add(1)
	go func() {
		defer r.done.Done()
		receiver.Run(ctx)
	}()
	logger.Info("receiving mirror stream", "listen", addrs)
}

// tickleMark marks the packets tickle sends; the ruleset exempts it from conntrack.
const tickleMark = 0x7e1c

// tickleDelay lets the first gratuitous ARP go out before the tickle's probes, whose answers
// must come to this device.
const tickleDelay = 10 * time.Millisecond

// tickle makes the established TCP connections of mirror-enabled virtuals, which this device
// has just taken over, resume at once rather than when their endpoints' retransmission timers,
// backed off during the outage, next fire (see kernel/tickle).
func (d *Daemon) tickle(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(tickleDelay):
	}
	t, err := conntrack.Open()
	if err != nil {
		d.logger.Warn("tickle: open conntrack", slog.Any("err", err))
		return
	}
	idx := d.mirror.Load()
	var conns []tickle.Conn
	err = t.Dump(ctx, func(f conntrack.Flow) error {
		if f.Proto == unix.IPPROTO_TCP && f.TCPState == conntrack.TCPStateEstablished && idx.mirrors(f) {
			conns = append(conns, tickle.Conn{
				A: tickle.Side{Local: f.Orig.Src, Remote: f.Orig.Dst},
				B: tickle.Side{Local: f.Reply.Src, Remote: f.Reply.Dst},
			})
		}
		return nil
	})
	t.Close()
	if err != nil {
		d.logger.Warn("tickle: dump conntrack", slog.Any("err", err))
		return
	}
	if len(conns) == 0 {
		return
	}
	st, err := tickle.Tickle(ctx, conns, tickle.Options{Mark: tickleMark})
	d.tickled.Add(uint64(st.Conns))
	d.tickleAns.Add(uint64(st.Answered))
	if err != nil && ctx.Err() == nil {
		d.logger.Warn("tickle", slog.Any("err", err))
	}
	d.logger.Info("connections tickled", "connections", st.Conns, "probes", st.Probes, "answered", st.Answered, "reverts", st.Reverts)
}

// onEvent mirrors one conntrack event, if it belongs to a mirror-enabled virtual.
func (d *Daemon) onEvent(sender *mirror.Sender, ev conntrack.Event) {
	switch ev.Type {
	case conntrack.EventOverrun:
		d.overruns.Add(1)
		d.logger.Warn("conntrack events lost (socket overrun): resyncing the peer", "overruns", d.overruns.Load())
		sender.Resync()
		return
	}
	if !d.mirror.Load().mirrors(ev.Flow) {
		return
	}
	if ev.Type == conntrack.EventDestroy {
		sender.Delete(toMirror(ev.Flow))
	} else {
		sender.Upsert(toMirror(ev.Flow))
	}
}

// snapshot gives the sender every flow of a mirror-enabled virtual, for a full sync.
func (d *Daemon) snapshot(ctx context.Context, fn func(mirror.Flow) error) error {
	// Each snapshot dumps on a socket of its own: the sender's full syncs, its digests and
	// the receiver's kernel checks may run at the same time, and one socket carries one dump.
	t, err := conntrack.Open()
	if err != nil {
		return fmt.Errorf("open conntrack for a snapshot: %w", err)
	}
	defer t.Close()
	idx := d.mirror.Load()
	var counts entryCounts
	err = t.Dump(ctx, func(f conntrack.Flow) error {
		if idx.mirrors(f) {
			counts.add(f)
			return fn(toMirror(f))
		}
		return nil
	})
	if err == nil {
		counts.at = time.Now()
		d.entries.Store(&counts)
	}
	return err
}

// flowWriter puts mirrored flows into this kernel.
type flowWriter struct{ d *Daemon }

func (w flowWriter) Inject(f mirror.Flow) error { return w.d.injTable.Inject(w.d.standbyFlow(f)) }
func (w flowWriter) Delete(f mirror.Flow) error { return w.d.injTable.Delete(toKernel(f)) }

// InjectBatch applies many mirrored flows in few netlink round trips (a full sync).
func (w flowWriter) InjectBatch(flows []mirror.Flow) []error {
	return w.d.injTable.InjectBatch(kernelFlows(flows, w.d.standbyFlow))
}

// DeleteBatch removes many mirrored flows in few netlink round trips.
func (w flowWriter) DeleteBatch(flows []mirror.Flow) []error {
	return w.d.injTable.DeleteBatch(kernelFlows(flows, toKernel))
}

func kernelFlows(flows []mirror.Flow, conv func(mirror.Flow) conntrack.Flow) []conntrack.Flow {
	k := make([]conntrack.Flow, len(flows))
	for i, f := range flows {
		k[i] = conv(f)
	}
	return k
}

var _ mirror.BatchWriter = flowWriter{}

// standbyFlow is the entry the standby's kernel holds for a mirrored flow. Its timer gets
// the state's full timeout: the active's timer is refreshed by every packet but sends no
// event for it, so the time it had left when the entry was mirrored (capped at 300 s while
// data is in flight) would let a quiet, healthy connection expire on the standby. An entry
// that really ends on the active is removed by its destroy event.
func (d *Daemon) standbyFlow(f mirror.Flow) conntrack.Flow {
	k := toKernel(f)
	state := k.TCPState
	if k.Proto == unix.IPPROTO_TCP && state == conntrack.TCPStateNone {
		// Not known (an event for a status change): the entry keeps its state, or is
		// created ESTABLISHED (conntrack.Flow).
		state = conntrack.TCPStateEstablished
	}
	if t := d.stateTimeout(k.Proto, state); t > k.Timeout {
		k.Timeout = t
	}
	if k.Proto == unix.IPPROTO_TCP {
		// Only assured connections are mirrored (virtualIndex.mirrors); assured, the entry
		// is also spared the kernel's early drop when its table is full.
		k.Status |= conntrack.StatusAssured | conntrack.StatusSeenReply
	}
	return k
}

// stateTimeout caches conntrack.DefaultTimeout per protocol and TCP state.
func (d *Daemon) stateTimeout(proto, state uint8) uint32 {
	d.timeoutMu.Lock()
	defer d.timeoutMu.Unlock()
	key := [2]uint8{proto, state}
	if t, ok := d.timeouts[key]; ok {
		return t
	}
	t, err := conntrack.DefaultTimeout(proto, state)
	if err != nil {
		d.logger.Warn("conntrack default timeout", "proto", proto, "state", state, slog.Any("err", err))
		return 0
	}
	d.timeouts[key] = t
	return t
}

func toMirror(f conntrack.Flow) mirror.Flow {
	return mirror.Flow{
		Proto:    f.Proto,
		Orig:     mirror.Tuple{Src: f.Orig.Src, Dst: f.Orig.Dst},
		Reply:    mirror.Tuple{Src: f.Reply.Src, Dst: f.Reply.Dst},
		TCPState: f.TCPState,
		Timeout:  f.Timeout,
		Mark:     f.Mark,
	}
}

func toKernel(f mirror.Flow) conntrack.Flow {
	return conntrack.Flow{
		Proto:    f.Proto,
		Orig:     conntrack.Tuple{Src: f.Orig.Src, Dst: f.Orig.Dst},
		Reply:    conntrack.Tuple{Src: f.Reply.Src, Dst: f.Reply.Dst},
		TCPState: f.TCPState,
		Timeout:  f.Timeout,
		Mark:     f.Mark,
	}
}

// virtualIndex finds the virtual a flow was sent to, by protocol and original destination.
type virtualIndex struct {
	byDest map[destKey]*config.Virtual
}

type destKey struct {
	proto uint8
	dest  netip.AddrPort
}

func newVirtualIndex(c *config.Config) *virtualIndex {
	idx := &virtualIndex{byDest: map[destKey]*config.Virtual{}}
	for i := range c.Shared.Virtuals {
		v := &c.Shared.Virtuals[i]
		idx.byDest[destKey{protoNumber(v.IPProtocol), v.Destination}] = v
	}
	return idx
}

// sameMirroring reports whether both indexes mirror the same destinations.
func (x *virtualIndex) sameMirroring(y *virtualIndex) bool {
	mirrored := func(i *virtualIndex) map[destKey]bool {
		m := map[destKey]bool{}
		for k, v := range i.byDest {
			if v.Mirror {
				m[k] = true
			}
		}
		return m
	}
	a, b := mirrored(x), mirrored(y)
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func (x *virtualIndex) lookup(proto uint8, dst netip.AddrPort) *config.Virtual {
	if v := x.byDest[destKey{proto, dst}]; v != nil {
		return v
	}
	return x.byDest[destKey{proto, netip.AddrPortFrom(dst.Addr(), 0)}]
}

// mirrors reports whether f is mirrored: an entry of a mirror-enabled virtual and, for TCP,
// an assured connection (its handshake done). The event listener's kernel filter
// (EstablishedTCP) drops the events of the same handshakes, so the stream, full syncs,
// digests and `show sys connection type mirror` agree on what the peer holds. A connection
// still in its handshake at a failover is not kept; its client retries (as conntrackd's
// usual "State Accept { ESTABLISHED ... }" filter does too).
func (x *virtualIndex) mirrors(f conntrack.Flow) bool {
	v := x.lookup(f.Proto, f.Orig.Dst)
	// A status of 0 is one the kernel did not report (a confirmed entry has IPS_CONFIRMED).
	return v != nil && v.Mirror && (f.Proto != unix.IPPROTO_TCP || f.Status&conntrack.StatusAssured != 0 || f.Status == 0)
}

// Connections streams the kernel's entries of virtual servers; see tmsh.Core.
func (d *Daemon) Connections(ctx context.Context, f tmsh.ConnFilter, fn func(tmsh.Connection) error) error {
	t, err := conntrack.Open()
	if err != nil {
		return fmt.Errorf("open conntrack: %w", err)
	}
	defer t.Close()
	return d.eachConnection(ctx, t, f, func(_ conntrack.Flow, c tmsh.Connection) error { return fn(c) })
}

// DeleteConnections removes the kernel's entries of virtual servers that match f; see
// tmsh.Core. Each entry is deleted as the dump reaches it, so a table of a million entries
// is never held. On the active device the deletions reach the standby as mirrored deletes.
func (d *Daemon) DeleteConnections(ctx context.Context, f tmsh.ConnFilter) (int, error) {
	t, err := conntrack.Open()
	if err != nil {
		return 0, fmt.Errorf("open conntrack: %w", err)
	}
	defer t.Close()
	n := 0
	err = d.eachConnection(ctx, t, f, func(fl conntrack.Flow, _ tmsh.Connection) error {
		if err := t.Delete(fl); err != nil {
			return err
		}
		n++
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("delete connections: %w", err)
	}
	d.logger.Info("connections deleted", "count", n)
	return n, nil
}

// eachConnection dumps t and calls fn for each entry of a virtual server that matches f.
// fn may call t's methods other than Dump.
func (d *Daemon) eachConnection(ctx context.Context, t *conntrack.Table, f tmsh.ConnFilter, fn func(conntrack.Flow, tmsh.Connection) error) error {
	idx := d.mirror.Load()
	defaults := map[[2]uint8]uint32{}
	unacked := unackedTimeout()
	return t.Dump(ctx, func(fl conntrack.Flow) error {
		v := idx.lookup(fl.Proto, fl.Orig.Dst)
		if v == nil {
			return nil
		}
		c := tmsh.Connection{
			Protocol: fl.Proto,
			CSClient: fl.Orig.Src,
			CSServer: fl.Orig.Dst,
			SSClient: fl.Reply.Dst,
			SSServer: fl.Reply.Src,
			State:    tcpStateName(fl),
			Offload:  offloadName(fl.Status),
			Virtual:  v.Name,
			Mirrored: idx.mirrors(fl),
		}
		k := [2]uint8{fl.Proto, fl.TCPState}
		def, ok := defaults[k]
		if !ok {
			def, _ = conntrack.DefaultTimeout(fl.Proto, fl.TCPState)
			defaults[k] = def
		}
		c.Idle = idleSeconds(def, unacked, fl)
		if !f.Match(c) {
			return nil
		}
		return fn(fl, c)
	})
}

// idleSeconds is how long ago the entry's timer was last refreshed by a packet. While a TCP
// connection has data in flight the kernel caps its timer at
// nf_conntrack_tcp_timeout_unacknowledged (nf_conntrack_proto_tcp.c), so a timer below that
// cap counts from the cap, not from the state's timeout.
func idleSeconds(stateTimeout, unacked uint32, f conntrack.Flow) uint32 {
	base := stateTimeout
	if f.Proto == 6 && unacked > 0 && f.Timeout <= unacked && unacked < base {
		base = unacked
	}
	if base > f.Timeout {
		return base - f.Timeout
	}
	return 0
}

func unackedTimeout() uint32 {
	v, err := link.GetSysctl("net.netfilter.nf_conntrack_tcp_timeout_unacknowledged")
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}

// offloadName is the Linux counterpart of BIG-IP's flow acceleration column: whether the
// entry is offloaded to an nftables flowtable (IPS_OFFLOAD) or to hardware (IPS_HW_OFFLOAD).
func offloadName(status uint32) string {
	const offload, hwOffload = 1 << 14, 1 << 15
	switch {
	case status&hwOffload != 0:
		return "hw-offload"
	case status&offload != 0:
		return "sw-offload"
	}
	return "none"
}

// Failover reports the HA state; see tmsh.Core.
func (d *Daemon) Failover() tmsh.FailoverStatus {
	cfg := d.Config()
	d.mu.Lock()
	fsm := d.fsm
	d.mu.Unlock()
	st := tmsh.FailoverStatus{Device: cfg.Local.Device.Name, State: "Offline", NetTimeout: cfg.NetTimeout(),
		GARPsSent: d.announcer.Sent()}
	if len(cfg.Local.Device.UnicastAddresses) > 0 {
		st.LocalAddress = netip.AddrPortFrom(cfg.Local.Device.UnicastAddresses[0], HeartbeatPort).String()
	}
	if peer, ok := cfg.Peer(); ok {
		st.Peer = peer.Name
		if len(peer.UnicastAddresses) > 0 {
			st.PeerAddress = netip.AddrPortFrom(peer.UnicastAddresses[0], HeartbeatPort).String()
		}
	}
	if g, ok := cfg.FailoverGroup(); ok {
		st.Group = g.Name
	}
	var peerDigest string
	if fsm != nil {
		fs := fsm.Status()
		st.State = fs.State.String()
		st.Since = fs.Since
		st.Reason = fs.Reason
		st.PeerAlive = fs.PeerAlive
		st.PeerState = fs.PeerState.String()
		st.PeerLastHeard = fs.PeerLastHeard
		st.Failovers = fs.Failovers
		for _, c := range failover.FailoverCauses() {
			if n := fs.FailoversByCause[c]; n > 0 {
				st.FailoverCauses = append(st.FailoverCauses, tmsh.CauseCount{Cause: c.String(), Count: n})
			}
		}
		st.HeartbeatsSent = fs.HeartbeatsSent
		st.HeartbeatsRecv = fs.HeartbeatsReceived
		st.HeartbeatsLost = fs.HeartbeatsMissed
		if fs.Peer != "" && st.Peer == "" {
			st.Peer = fs.Peer
		}
		peerDigest = string(fs.PeerPayload)
	}
	switch {
	case st.Group == "":
		st.SyncStatus, st.SyncSummary = "Standalone", "This device is not in a sync-failover device group"
	case !st.PeerAlive:
		st.SyncStatus, st.SyncSummary = "Disconnected", "The peer device is not reachable"
	case peerDigest == d.sharedDigest().digest:
		st.SyncStatus, st.SyncSummary = "In Sync", "All devices in the device group are in sync"
	default:
		st.SyncStatus, st.SyncSummary = "Changes Pending", "There is a possible change conflict between "+strings.Join([]string{cfg.Local.Device.Name, st.Peer}, " and ")
	}
	st.Mirror = d.mirrorStatus()
	return st
}

func (d *Daemon) mirrorStatus() tmsh.MirrorStatus {
	m := tmsh.MirrorStatus{Role: "none", Overruns: d.overruns.Load()}
	if c := d.entries.Load(); c != nil {
		m.Entries, m.EntriesAt = c.rows(), c.at
	}
	d.roles.statsMu.Lock()
	sender, receiver := d.roles.sender, d.roles.receiver
	d.roles.statsMu.Unlock()
	if sender != nil {
		ss := sender.Stats()
		m.Role, m.Connected, m.FlowsSent, m.DeletesSent = "sender", ss.Connected, ss.FlowsSent, ss.DeletesSent
		m.Syncs, m.QueueDepth, m.Overflows = ss.Syncs, ss.QueueLen, ss.Overflows
		m.DigestsSent, m.ResyncsRequested = ss.DigestsSent, ss.ResyncsRequested
		m.LagLast, m.LagMax = ss.LagLast, ss.LagMax
		if ss.Peer.IsValid() {
			m.Peer = ss.Peer.String()
		}
	}
	if receiver != nil {
		rs := receiver.Stats()
		m.Role, m.Connected, m.FlowsHeld, m.Applied = "receiver", rs.Connected, rs.Flows, rs.Applied
		m.InjectErrors, m.StaleDeleted, m.Syncs = rs.InjectErrors, rs.StaleDeleted+rs.StrayDeleted, rs.Syncs
		m.DigestsChecked, m.DriftDetected, m.Repairs = rs.DigestsChecked, rs.DriftDetected, rs.Repairs
		m.LastDrift, m.LastDigestMatch = rs.LastDrift, rs.LastDigestMatch
		if rs.PeerDevice != "" {
			m.Peer = rs.PeerDevice + " (" + rs.PeerAddr.String() + ")"
		}
	}
	return m
}

// PromptStatus is what the shell's prompt shows.
func (d *Daemon) PromptStatus() (host, state, sync string) {
	st := d.Failover()
	return st.Device, st.State, st.SyncStatus
}

// onConfigChange calls fn after each configuration change; the returned func stops that.
func (d *Daemon) onConfigChange(fn func()) func() {
	d.watchMu.Lock()
	defer d.watchMu.Unlock()
	id := d.nextWatch
	d.nextWatch++
	d.watchers[id] = fn
	return func() {
		d.watchMu.Lock()
		defer d.watchMu.Unlock()
		delete(d.watchers, id)
	}
}

func (d *Daemon) notifyWatchers() {
	d.watchMu.Lock()
	fns := make([]func(), 0, len(d.watchers))
	for _, fn := range d.watchers {
		fns = append(fns, fn)
	}
	d.watchMu.Unlock()
	for _, fn := range fns {
		fn()
	}
}
