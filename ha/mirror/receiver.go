package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ReceiverConfig configures a Receiver.
type ReceiverConfig struct {
	// Listen holds our mirror-ip:1028 and, if configured, mirror-secondary-ip:1028. An address
	// not yet configured on this host is retried until it can be bound.
	Listen []netip.AddrPort
	// Table is the standby's kernel table; it is called from one goroutine at a time.
	Table FlowWriter
	// Logger receives the Receiver's logs; nil discards them.
	Logger *slog.Logger
}

// ReceiverStats is a snapshot of a Receiver's counters.
type ReceiverStats struct {
	Flows        int            // mirrored flows currently held (see Receiver.Flows)
	Frames       uint64         // frames received, keepalives included
	Upserts      uint64         // FlowUpsert frames received
	Deletes      uint64         // FlowDelete frames received
	Applied      uint64         // Inject and Delete calls that succeeded
	InjectErrors uint64         // Inject calls that failed
	DeleteErrors uint64         // Delete calls that failed (stream and stale deletes)
	StaleDeleted uint64         // flows deleted at a SyncEnd because the sync did not carry them
	Syncs        uint64         // full syncs completed (SyncEnd received)
	Connected    bool           // a sender is connected now
	PeerDevice   string         // the connected (or last) sender's device name
	PeerAddr     netip.AddrPort // the connected (or last) sender's address
	LastError    error          // the last connection or table error, nil if none yet
}

// Receiver accepts the active device's mirroring stream and writes it into the standby's table.
// Create it with NewReceiver and start Run; Flows, Stats, Addrs and Forget may be called from any
// goroutine at any time. The set of keys it has injected lives in the Receiver, not in Run, so it
// survives Run being stopped and started again.
type Receiver struct {
	cfg ReceiverConfig
	log *slog.Logger

	readTimeout, bindRetry time.Duration // tests shorten them

	// mu orders table writes with Forget, and guards held and epoch.
	mu    sync.Mutex
	held  map[packedKey]uint32 // injected keys -> the sync epoch they were last carried in
	epoch uint32               // incremented by every SyncBegin
	nheld atomic.Int64         // len(held), for Stats without mu

	frames, upserts, deletes, applied, injectErrs, deleteErrs, stale, syncs atomic.Uint64

	errLog logLimiter // used by the connection goroutine only

	infoMu     sync.Mutex // guards the fields below
	connected  bool
	peerDevice string
	peerAddr   netip.AddrPort
	lastErr    error
	bound      []netip.AddrPort
}

// NewReceiver returns a Receiver for cfg. It does no I/O.
func NewReceiver(cfg ReceiverConfig) *Receiver {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Receiver{
		cfg:         cfg,
		log:         log.With("component", "mirror-receiver"),
		readTimeout: readTimeout,
		bindRetry:   bindRetry,
		held:        make(map[packedKey]uint32),
	}
}

// Flows returns the number of mirrored flows currently held: injected and neither deleted by
// the stream, nor found stale at a SyncEnd, nor forgotten. Safe for concurrent use.
func (r *Receiver) Flows() int { return int(r.nheld.Load()) }

// Forget clears the remembered key set: the device has become active, and the entries it
// injected stay in the kernel as its own. It waits for a table write in progress. Safe for
// concurrent use.
func (r *Receiver) Forget() {
	r.mu.Lock()
	clear(r.held)
	r.held = make(map[packedKey]uint32) // give a large map's memory back
	r.nheld.Store(0)
	r.mu.Unlock()
}

// Addrs returns the addresses the Receiver is listening on now (with the actual port when a
// Listen port was 0). Safe for concurrent use.
func (r *Receiver) Addrs() []netip.AddrPort {
	r.infoMu.Lock()
	defer r.infoMu.Unlock()
	return slices.Clone(r.bound)
}

// Stats returns the Receiver's counters. Safe for concurrent use.
func (r *Receiver) Stats() ReceiverStats {
	st := ReceiverStats{
		Flows:        r.Flows(),
		Frames:       r.frames.Load(),
		Upserts:      r.upserts.Load(),
		Deletes:      r.deletes.Load(),
		Applied:      r.applied.Load(),
		InjectErrors: r.injectErrs.Load(),
		DeleteErrors: r.deleteErrs.Load(),
		StaleDeleted: r.stale.Load(),
		Syncs:        r.syncs.Load(),
	}
	r.infoMu.Lock()
	st.Connected, st.PeerDevice, st.PeerAddr, st.LastError = r.connected, r.peerDevice, r.peerAddr, r.lastErr
	r.infoMu.Unlock()
	return st
}

func (r *Receiver) setErr(err error) {
	r.infoMu.Lock()
	r.lastErr = err
	r.infoMu.Unlock()
}

// Run listens on every Listen address and serves one sender at a time: a newer connection
// replaces an older one, which is closed first, so that table writes stay in one stream's order.
// It returns nil when ctx is cancelled, having closed its listeners and connection and stopped
// every goroutine it started, or an error at once for an unusable configuration. Run may be
// called again after it returns, but not concurrently.
func (r *Receiver) Run(ctx context.Context) error {
	if len(r.cfg.Listen) == 0 {
		return errors.New("mirror receiver: no listen addresses")
	}
	if r.cfg.Table == nil {
		return errors.New("mirror receiver: no table")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	conns := make(chan net.Conn)
	var listeners sync.WaitGroup
	for _, a := range r.cfg.Listen {
		listeners.Go(func() { r.listen(ctx, a, conns) })
	}

	var (
		cur  net.Conn
		done chan struct{} // closed when cur's goroutine has ended
	)
	stopCur := func() {
		if cur != nil {
			cur.Close()
			<-done
			cur, done = nil, nil
		}
	}
	for {
		select {
		case <-ctx.Done():
			stopCur()
			listeners.Wait()
			return nil
		case c := <-conns:
			if cur != nil {
				r.log.Info("new mirror connection replaces the current one", "old", cur.RemoteAddr(), "new", c.RemoteAddr())
			}
			stopCur()
			cur, done = c, make(chan struct{})
			go func(c net.Conn, done chan struct{}) {
				defer close(done)
				r.serveConn(c)
			}(c, done)
		case <-done: // nil (blocks) while no connection
			cur, done = nil, nil
		}
	}
}

// listen binds addr (retrying until ctx ends: the mirror address may not be configured yet) and
// hands accepted connections to conns.
func (r *Receiver) listen(ctx context.Context, addr netip.AddrPort, conns chan<- net.Conn) {
	lc := net.ListenConfig{KeepAliveConfig: tcpKeepAlive(), Control: setUserTimeout}
	var ln net.Listener
	for logged := false; ; logged = true {
		var err error
		ln, err = lc.Listen(ctx, "tcp", addr.String())
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		if !logged {
			r.log.Warn("cannot listen yet, retrying", "addr", addr, slog.Any("err", err))
		}
		if !sleepCtx(ctx, r.bindRetry) {
			return
		}
	}
	local := ln.Addr().(*net.TCPAddr).AddrPort()
	r.infoMu.Lock()
	r.bound = append(r.bound, local)
	r.infoMu.Unlock()
	r.log.Info("listening", "addr", local)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer func() {
		stop()
		ln.Close()
		r.infoMu.Lock()
		r.bound = slices.DeleteFunc(r.bound, func(a netip.AddrPort) bool { return a == local })
		r.infoMu.Unlock()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.log.Warn("accept failed", "addr", local, slog.Any("err", err))
			if !sleepCtx(ctx, 100*time.Millisecond) {
				return
			}
			continue
		}
		select {
		case conns <- c:
		case <-ctx.Done():
			c.Close()
			return
		}
	}
}

// serveConn runs one connection until it fails or is closed.
func (r *Receiver) serveConn(c net.Conn) {
	defer c.Close()
	tuneConn(c)
	var remote netip.AddrPort
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		remote = ta.AddrPort()
	}
	err := r.stream(c, remote)
	r.infoMu.Lock()
	r.connected = false
	if err != nil && !errors.Is(err, net.ErrClosed) {
		r.lastErr = err
	}
	r.infoMu.Unlock()
	switch {
	case err == nil:
		r.log.Info("mirror peer disconnected", "peer", remote)
	case errors.Is(err, net.ErrClosed):
		r.log.Info("mirror connection closed", "peer", remote)
	default:
		r.log.Warn("mirror connection failed", "peer", remote, slog.Any("err", err))
	}
}

// syncState tracks the full sync in progress on one connection.
type syncState struct {
	active bool
	id     uint32
	count  uint64 // upserts received since SyncBegin
}

// stream reads frames and applies them; it returns nil at a clean end of stream.
func (r *Receiver) stream(c net.Conn, remote netip.AddrPort) error {
	dec := newDecoder(&deadlineReader{c: c, timeout: r.readTimeout}, bufSize)
	var fr frame
	if err := dec.next(&fr); err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	if fr.typ != frameHello {
		return fmt.Errorf("%w: %v before hello", ErrProtocol, fr.typ)
	}
	r.infoMu.Lock()
	r.connected, r.peerDevice, r.peerAddr = true, fr.hello.device, remote
	r.infoMu.Unlock()
	r.log.Info("mirror peer connected", "peer", remote, "device", fr.hello.device,
		"session", fmt.Sprintf("%016x", fr.hello.session))

	var cur syncState
	for {
		if err := dec.next(&fr); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		r.frames.Add(1)
		switch fr.typ {
		case frameUpsert:
			r.upserts.Add(1)
			if cur.active {
				cur.count++
			}
			r.inject(&fr.flow)
		case frameDelete:
			r.deletes.Add(1)
			r.delete(&fr.flow)
		case frameSyncBegin:
			if cur.active {
				r.log.Info("full sync restarted by the peer", "old_sync_id", cur.id, "sync_id", fr.syncID)
			}
			cur = syncState{active: true, id: fr.syncID}
			r.mu.Lock()
			r.epoch++
			r.mu.Unlock()
		case frameSyncEnd:
			if !cur.active || fr.syncID != cur.id {
				return fmt.Errorf("%w: sync-end %d without its sync-begin", ErrProtocol, fr.syncID)
			}
			if fr.count != cur.count {
				// Frames were lost or invented: the sweep would be wrong. Drop the connection;
				// the peer reconnects and syncs again.
				return fmt.Errorf("%w: sync %d carried %d flows, sync-end says %d", ErrProtocol, cur.id, cur.count, fr.count)
			}
			cur.active = false
			n := r.sweep()
			r.syncs.Add(1)
			r.log.Info("full sync received", "sync_id", fr.syncID, "flows", fr.count, "stale_deleted", n)
		case frameKeepalive:
		case frameHello:
			return fmt.Errorf("%w: second hello", ErrProtocol)
		}
	}
}

// inject applies a FlowUpsert. A failure is counted and logged and does not stop the stream.
// A key already held stays held even when its update fails: the older entry is still in the
// kernel, and still better than none at failover.
func (r *Receiver) inject(f *Flow) {
	fam, _ := flowFamily(f) // decoded flows are valid
	k := packKey(f.Proto, fam, f.Orig)
	r.mu.Lock()
	err := r.cfg.Table.Inject(*f)
	_, had := r.held[k]
	if err == nil || had {
		r.held[k] = r.epoch
		if !had {
			r.nheld.Add(1)
		}
	}
	r.mu.Unlock()
	if err != nil {
		r.injectErrs.Add(1)
		r.tableError("inject failed", f, err)
		return
	}
	r.applied.Add(1)
}

// delete applies a FlowDelete.
func (r *Receiver) delete(f *Flow) {
	fam, _ := family(f.Orig.Src, f.Orig.Dst)
	k := packKey(f.Proto, fam, f.Orig)
	r.mu.Lock()
	err := r.cfg.Table.Delete(*f)
	if _, had := r.held[k]; had {
		delete(r.held, k)
		r.nheld.Add(-1)
	}
	r.mu.Unlock()
	if err != nil {
		r.deleteErrs.Add(1)
		r.tableError("delete failed", f, err)
		return
	}
	r.applied.Add(1)
}

// sweep deletes the held flows that the sync just ended did not carry, and returns how many.
// The table calls happen outside mu, so that a Forget at failover does not wait for them.
func (r *Receiver) sweep() int {
	r.mu.Lock()
	var stale []packedKey
	for k, e := range r.held {
		if e != r.epoch {
			stale = append(stale, k)
			delete(r.held, k)
		}
	}
	r.nheld.Add(-int64(len(stale)))
	r.mu.Unlock()
	for i := range stale {
		f := stale[i].flow()
		if err := r.cfg.Table.Delete(f); err != nil {
			r.deleteErrs.Add(1)
			r.tableError("stale delete failed", &f, err)
			continue
		}
		r.stale.Add(1)
	}
	return len(stale)
}

// tableError logs a failed table write with its flow, at most logBurst times a second: a
// failing table must not turn 100,000 flows/s into as many log lines. The counters keep the total.
func (r *Receiver) tableError(msg string, f *Flow, err error) {
	r.setErr(fmt.Errorf("%s for %v: %w", msg, f.Orig, err))
	if ok, suppressed := r.errLog.allow(time.Now()); ok {
		r.log.Warn(msg, slog.Any("flow", *f), slog.Any("err", err), "suppressed", suppressed)
	}
}

const logBurst = 10

// logLimiter lets logBurst lines through per second and counts the rest. Not safe for
// concurrent use.
type logLimiter struct {
	window     time.Time
	n          int
	suppressed int
}

// allow reports whether to log now, and how many lines were suppressed since the last one logged.
func (l *logLimiter) allow(now time.Time) (ok bool, suppressed int) {
	if now.Sub(l.window) >= time.Second {
		l.window, l.n = now, 0
	}
	if l.n >= logBurst {
		l.suppressed++
		return false, 0
	}
	l.n++
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}
