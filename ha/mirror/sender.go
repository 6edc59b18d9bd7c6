package mirror

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// SenderConfig configures a Sender.
type SenderConfig struct {
	// Device is our device name, sent in the Hello (at most 255 bytes).
	Device string
	// Peers are tried in order: the peer's mirror-ip:1028 first, then its
	// mirror-secondary-ip:1028 (the fallback path).
	Peers []netip.AddrPort
	// Snapshot calls fn for every flow to mirror (the daemon has already filtered them), one call
	// at a time, and stops and returns fn's error (wrapped or not) when fn returns one, or
	// when ctx ends. The Sender calls it once per full sync and once per digest (see
	// DigestInterval), never twice at once, a digest's from a goroutine of its own; it must
	// not call Sender methods other than Upsert, Delete, Resync and Stats, and must not stall
	// for longer than a few seconds between flows during a full sync (the peer drops a silent
	// connection).
	Snapshot func(ctx context.Context, fn func(Flow) error) error
	// Logger receives the Sender's logs; nil discards them.
	Logger *slog.Logger
	// DialTimeout bounds one connection attempt (default 1s). RetryInterval is the longest
	// pause between attempts (default 500ms): after a connection is lost, or every peer has
	// failed, the Sender tries again after firstRetry and doubles the pause up to it, so that
	// a peer that restarts (the standby's daemon) is reached as soon as it listens. A
	// connection that lasted RetryInterval starts the doubling again.
	DialTimeout, RetryInterval time.Duration
	// MaxQueue is the number of distinct pending flows beyond which the queue overflows: it is
	// dropped and a full sync is forced (default 1<<20).
	MaxQueue int
	// DigestInterval is the pause between two anti-entropy digests on a connection (see
	// doc.go): each costs one Snapshot, and the Sender keeps 16 bytes per flow for them. Zero
	// means the default, 10s; a negative value sends no digests. The peer asks for a digest
	// early when the last one did not match, whatever the interval (but not when disabled).
	DigestInterval time.Duration
	// WakeOnFlush is for a producer that queues changes in bursts (the active's event reader,
	// a socket read at a time): Upsert and Delete then leave the Sender asleep, and the
	// producer calls Flush once it has queued a burst, which leaves in one write instead of
	// its first change waking the Sender to write alone (a thread switch and a write each).
	// A Sender already awake still takes what is queued; Resync wakes it at once.
	WakeOnFlush bool
}

// digestCostRatio bounds the share of time that digests take: the pause before the next is
// at least this many times as long as the last one took (its snapshot dumps the whole
// kernel table, a few seconds for a million entries), whatever DigestInterval says.
const digestCostRatio = 20

// DefaultDigestInterval is SenderConfig.DigestInterval's default.
const DefaultDigestInterval = 10 * time.Second

// SenderStats is a snapshot of a Sender's counters.
type SenderStats struct {
	Connected   bool
	Peer        netip.AddrPort // the peer connected to, zero when not connected
	FlowsSent   uint64         // FlowUpsert frames written, full syncs included
	DeletesSent uint64         // FlowDelete frames written
	Syncs       uint64         // full syncs completed (SyncEnd written)
	Overflows   uint64         // times the queue overflowed and was replaced by a full sync
	Invalid     uint64         // flows that could not be mirrored (invalid or mixed-family addresses)
	QueueLen    int            // distinct flows waiting to be sent
	LastError   error          // the last connection error, nil if none yet

	DigestsSent      uint64    // Digest frames written
	DigestRequests   uint64    // early digests the peer asked for (after a mismatch)
	ResyncsRequested uint64    // full syncs the peer asked for (it found drift); each was sent
	LastDigest       time.Time // when the last Digest was written, zero if none yet

	// Mirror lag (lag.go): from the queueing of a change to the peer's word that its kernel
	// has it, sampled about ten times a second while changes flow.
	LagSamples uint64
	LagSum     time.Duration // of every sample
	LagLast    time.Duration // the latest sample, 0 if none yet
	LagMax     time.Duration // the highest sample of the last minute, 0 if none
	LagBuckets []uint64      // cumulative: samples at most LagBounds()[i]
}

// Sender streams the active device's flows to its peer. Create it with NewSender and start Run
// once; Upsert, Delete, Resync and Stats may be called from any goroutine at any time, before,
// during and after Run, and never block on the network.
type Sender struct {
	cfg     SenderConfig
	log     *slog.Logger
	q       *queue
	session uint64 // random, sent in every Hello: lets the peer tell our restarts apart

	// Timing; tests shorten them.
	keepalive, writeTimeout time.Duration
	digestSettle            time.Duration // see sendDigest
	digestCostRatio         int           // see the constant; tests that race digests set 0
	lastDigestTook          time.Duration // the last digest's snapshot and send, rests left out, for its interval

	resync    atomic.Bool   // a full sync is due on the current connection
	digestReq atomic.Bool   // the peer asked for an early digest
	redial    chan struct{} // Redial's wake-up, one at most
	syncID    uint32        // owned by Run's goroutine

	// Owned by Run's goroutine: when release last handed memory back, whether dropped
	// buffers wait for the next time, and how (tests count).
	lastFree    time.Time
	freePending bool
	freeMemory  func()

	// Owned by Run's goroutine: the digest's working memory, kept between digests.
	digestID uint32                  // per connection
	dumped   []dumpedFlow            // the flows of the digest's snapshot
	window   map[uint64]windowChange // keyHash -> the last change sent since the snapshot began

	lastDigest atomic.Int64 // unix nanoseconds of the last Digest, 0 if none

	lag *lagMeter

	flowsSent, deletesSent, syncs, overflows, invalid atomic.Uint64
	digestsSent, digestRequests, resyncsRequested     atomic.Uint64

	// The stream, for Flush to write on the producer's goroutine (writeDirect). Run's
	// goroutine holds streamMu whenever it uses the stream, except while it waits with
	// nothing in progress; parked is the stream then, and nil otherwise.
	streamMu  sync.Mutex
	parked    *parkedStream
	directErr error // a write error that writeDirect met, for Run to return

	mu        sync.Mutex // guards the fields below
	connected bool
	peer      netip.AddrPort
	lastErr   error
}

// NewSender returns a Sender for cfg, filling in defaults. It does no I/O.
func NewSender(cfg SenderConfig) *Sender {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = time.Second
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 500 * time.Millisecond
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = 1 << 20
	}
	if cfg.DigestInterval == 0 {
		cfg.DigestInterval = DefaultDigestInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sender{
		cfg:             cfg,
		log:             log.With("component", "mirror-sender"),
		q:               newQueue(cfg.MaxQueue, !cfg.WakeOnFlush),
		session:         rand.Uint64(),
		keepalive:       keepaliveInterval,
		writeTimeout:    writeTimeout,
		digestSettle:    digestSettle,
		digestCostRatio: digestCostRatio,
		window:          make(map[uint64]windowChange),
		redial:          make(chan struct{}, 1),
		freeMemory:      debug.FreeOSMemory,
		lag:             newLagMeter(lagProbeEvery),
	}
}

// Upsert queues a created or updated flow. Changes to one key coalesce while queued (the latest
// wins) and keys are sent in the order they were first queued. An invalid flow is counted and
// logged, not sent. Safe for concurrent use; never blocks on the network.
func (s *Sender) Upsert(f Flow) {
	fam, err := flowFamily(&f)
	if err != nil {
		s.reject(f, err)
		return
	}
	s.push(change{op: opUpsert, key: packKey(f.Proto, fam, f.Orig), flow: f})
}

// Delete queues the removal of the flow with f's key (only Proto and Orig are used); it coalesces
// with a queued Upsert of the same key. Safe for concurrent use; never blocks on the network.
func (s *Sender) Delete(f Flow) {
	fam, err := family(f.Orig.Src, f.Orig.Dst)
	if err != nil {
		s.reject(f, err)
		return
	}
	s.push(change{op: opDelete, key: packKey(f.Proto, fam, f.Orig), flow: Flow{Proto: f.Proto, Orig: f.Orig}})
}

func (s *Sender) reject(f Flow, err error) {
	s.invalid.Add(1)
	s.log.Warn("flow not mirrored", slog.Any("flow", f), slog.Any("err", err))
}

func (s *Sender) push(c change) {
	if s.q.push(c) {
		s.overflows.Add(1)
		s.resync.Store(true)
		s.log.Warn("mirror queue overflowed: dropped it, a full sync follows", "max_queue", s.cfg.MaxQueue)
	}
}

// Flush sends what is queued: with SenderConfig.WakeOnFlush, the producer calls it at the
// end of each burst. When Run waits with nothing in progress and the burst is small, Flush
// writes it itself (writeDirect), else it wakes Run. Safe for concurrent use; never blocks
// on the network.
func (s *Sender) Flush() {
	if !s.writeDirect() {
		s.q.flush()
	}
}

// parkedStream is the stream of the connection that Run waits on.
type parkedStream struct {
	enc *encoder
	w   *deadlineWriter
}

// directMax is the largest burst that Flush writes on the producer's goroutine: a few
// tens of microseconds of encoding, and at most a few kilobytes kept for Run when the
// socket does not take them at once.
const directMax = 256

// writeDirect writes the queue on the caller's goroutine if Run waits with nothing in
// progress (no full sync, no digest, none due) and the queue is small, and reports whether
// it did. Handing the burst to Run's goroutine instead costs the active a thread wake-up
// per burst, a tenth of its CPU time under load in the lab. The write does not wait: what
// the socket does not take, Run writes; a write error goes to Run too.
func (s *Sender) writeDirect() bool {
	if !s.streamMu.TryLock() {
		return false
	}
	defer s.streamMu.Unlock()
	p := s.parked
	if p == nil || s.resync.Load() || s.digestReq.Load() || s.q.len() > directMax {
		return false
	}
	b := s.q.take()
	if len(b.items) == 0 {
		return true
	}
	p.w.noWait = true
	err := s.sendBatch(p.enc, b)
	if err == nil {
		err = p.enc.flush()
	}
	p.w.noWait = false
	s.release(b)
	switch {
	case err != nil:
		s.directErr, s.parked = fmt.Errorf("flush: %w", err), nil
		s.q.signal()
	case len(p.w.spill) > 0:
		s.parked = nil // until Run has written the rest
		s.q.signal()
	}
	return true
}

// Resync forces a full sync on the current connection (or on the next one, which does one
// anyway); the daemon calls it after a conntrack event overrun. Safe for concurrent use;
// never blocks.
func (s *Sender) Resync() {
	s.resync.Store(true)
	s.q.signal()
}

// Stats returns the Sender's counters. Safe for concurrent use.
func (s *Sender) Stats() SenderStats {
	st := SenderStats{
		FlowsSent:   s.flowsSent.Load(),
		DeletesSent: s.deletesSent.Load(),
		Syncs:       s.syncs.Load(),
		Overflows:   s.overflows.Load(),
		Invalid:     s.invalid.Load(),
		QueueLen:    s.q.len(),

		DigestsSent:      s.digestsSent.Load(),
		DigestRequests:   s.digestRequests.Load(),
		ResyncsRequested: s.resyncsRequested.Load(),
	}
	if t := s.lastDigest.Load(); t != 0 {
		st.LastDigest = time.Unix(0, t)
	}
	s.lag.stats(&st, time.Now())
	s.mu.Lock()
	st.Connected, st.Peer, st.LastError = s.connected, s.peer, s.lastErr
	s.mu.Unlock()
	return st
}

func (s *Sender) setConnected(peer netip.AddrPort) {
	s.mu.Lock()
	s.connected, s.peer = true, peer
	s.mu.Unlock()
}

func (s *Sender) setDisconnected(err error) {
	s.mu.Lock()
	s.connected, s.peer = false, netip.AddrPort{}
	if err != nil {
		s.lastErr = err
	}
	s.mu.Unlock()
}

// Run connects to a peer (trying Peers in order, and retrying for ever), sends a Hello and a full
// sync, then streams queued changes; when the connection fails it reconnects and syncs in full
// again. It returns nil when ctx is cancelled, having closed the connection and stopped every
// goroutine it started, or an error at once for an unusable configuration. Call it once.
func (s *Sender) Run(ctx context.Context) error {
	if len(s.cfg.Peers) == 0 {
		return errors.New("mirror sender: no peers")
	}
	if s.cfg.Snapshot == nil {
		return errors.New("mirror sender: no snapshot function")
	}
	if len(s.cfg.Device) > maxDeviceLen {
		return fmt.Errorf("mirror sender: device name longer than %d bytes", maxDeviceLen)
	}
	failures := 0 // failed attempts, and connections shorter than RetryInterval, in a row
	for {
		conn, peer, ok := s.dial(ctx, &failures)
		if !ok {
			return nil
		}
		s.setConnected(peer)
		s.log.Info("mirror peer connected", "peer", peer)
		connected := time.Now()
		err := s.serve(ctx, conn)
		if ctx.Err() != nil {
			s.setDisconnected(nil)
			return nil
		}
		s.setDisconnected(err)
		s.log.Warn("mirror connection lost", "peer", peer, slog.Any("err", err))
		if time.Since(connected) >= s.cfg.RetryInterval {
			failures = 0 // a peer that drops each connection at once is not redialled faster than that
		}
		if !s.pause(ctx, &failures) {
			return nil
		}
	}
}

// Redial makes a Sender that waits between connection attempts dial at once, and as
// soon as it can after a failed attempt. The daemon calls it when it hears the peer
// again: a restarted standby listens for the stream by the time it sends heartbeats. A
// call while connected is kept for the pause after the connection ends.
func (s *Sender) Redial() {
	select {
	case s.redial <- struct{}{}:
	default:
	}
}

// pause waits retryPause's time before the next attempt, or until Redial; false when
// ctx has ended.
func (s *Sender) pause(ctx context.Context, failures *int) bool {
	t := time.NewTimer(s.retryPause(failures))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
	case <-s.redial:
		*failures = 0
	}
	return true
}

// release gives a sent batch back to the queue. A burst's buffers, dropped, are hundreds of
// megabytes after a million changes; with little allocation afterwards the runtime would
// collect them only at its forced collection, two minutes later, and return the memory after
// that. So they go back at once, at most every freeEvery; what is dropped meanwhile goes back
// when freeEvery has passed (freeIfDue), even if the queue has gone quiet by then.
func (s *Sender) release(b batch) {
	if s.q.release(b) {
		s.freePending = true
	}
	s.freeIfDue()
}

// freeIfDue hands the memory of dropped buffers back if some wait and freeEvery has passed.
// Run's goroutine calls it after each batch and at each keepalive tick.
func (s *Sender) freeIfDue() {
	if s.freePending && time.Since(s.lastFree) >= freeEvery {
		s.freePending, s.lastFree = false, time.Now()
		s.freeMemory()
	}
}

// freeEvery bounds how often release hands memory back: a collection costs milliseconds,
// and an overloaded sender may drop burst buffers at every batch.
const freeEvery = 10 * time.Second

// firstRetry is the pause before the first attempt after a failure (see RetryInterval).
const firstRetry = 20 * time.Millisecond

// retryPause returns the pause before the next attempt after *failures failures in a row, and
// counts one more.
func (s *Sender) retryPause(failures *int) time.Duration {
	d := min(firstRetry<<min(*failures, 16), s.cfg.RetryInterval)
	*failures++
	return d
}

// dial tries every peer in order until one answers, pausing after each failed round as
// retryPause says; ok is false when ctx has ended.
func (s *Sender) dial(ctx context.Context, failures *int) (conn net.Conn, peer netip.AddrPort, ok bool) {
	d := net.Dialer{Timeout: s.cfg.DialTimeout, KeepAliveConfig: tcpKeepAlive(), Control: setUserTimeout}
	for attempt := 0; ; attempt++ {
		for _, p := range s.cfg.Peers {
			c, err := d.DialContext(ctx, "tcp", p.String())
			if err == nil {
				return c, p, true
			}
			if ctx.Err() != nil {
				return nil, netip.AddrPort{}, false
			}
			s.setDisconnected(err)
			// Log the first failed round at warn, the rest of an outage at debug.
			lvl := slog.LevelDebug
			if attempt == 0 {
				lvl = slog.LevelWarn
			}
			s.log.Log(ctx, lvl, "cannot reach mirror peer", "peer", p, slog.Any("err", err))
		}
		if !s.pause(ctx, failures) {
			return nil, netip.AddrPort{}, false
		}
	}
}

// serve runs one connection until it fails or ctx ends, and closes it.
func (s *Sender) serve(ctx context.Context, conn net.Conn) error {
	tuneConn(conn)
	s.lag.forget() // a probe of the last connection is never answered
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Closing the connection is what interrupts a blocked write when ctx ends or the peer goes.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	// The back channel: the peer sends ResyncRequest and DigestRequest frames, rarely, and
	// answers lag probes, ten times a second at most. A read also returns when the peer
	// closes the connection or it fails, and that should stop us at once rather than at the
	// next failed write.
	var wg sync.WaitGroup
	wg.Go(func() { cancel(s.readBack(conn)) })

	w := &deadlineWriter{c: conn, timeout: s.writeTimeout}
	enc := &encoder{w: bufio.NewWriterSize(w, bufSize)}
	err := s.stream(ctx, enc, w)
	conn.Close()
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil && !(err != nil && errors.Is(cause, net.ErrClosed)) {
		// A write failure is usually the symptom of what the reader (or ctx) saw; but a
		// reader that failed because the stream closed the connection saw only that.
		err = cause
	}
	return err
}

// readBack reads the peer's back-channel frames until the connection fails or closes, and
// returns why it stopped.
func (s *Sender) readBack(conn net.Conn) error {
	dec := newDecoder(conn, 0)
	var fr frame
	for {
		if err := dec.next(&fr); err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("peer closed the connection")
			}
			return err
		}
		switch fr.typ {
		case frameResyncRequest:
			s.resyncsRequested.Add(1)
			s.log.Warn("peer found drift and asks for a full sync", "reason", fr.reason.String())
			s.Resync()
		case frameDigestRequest:
			s.digestRequests.Add(1)
			s.log.Debug("peer asks for an early digest")
			s.digestReq.Store(true)
			s.q.signal()
		case frameLagAck:
			if lag, warn, ok := s.lag.answer(fr.probe, time.Now()); warn {
				s.log.Warn("mirror lag high: the standby's kernel holds changes late", "lag", lag)
			} else if !ok {
				s.log.Debug("answer to no lag probe in flight", "probe", fr.probe)
			}
		default:
			return fmt.Errorf("%w: peer sent %v", ErrProtocol, fr.typ)
		}
	}
}

// stream sends the Hello and a full sync, then the queue and, every DigestInterval, a digest,
// until an error.
func (s *Sender) stream(ctx context.Context, enc *encoder, w *deadlineWriter) error {
	s.streamMu.Lock()
	defer s.streamMu.Unlock()
	s.directErr = nil
	var parked *parkedStream
	if w.canSkipWait() {
		parked = &parkedStream{enc: enc, w: w}
	}
	if err := enc.hello(hello{version: protocolVersion, session: s.session, device: s.cfg.Device}); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	ticker := time.NewTicker(s.keepalive)
	defer ticker.Stop()
	var digestC <-chan time.Time // nil (never ready) when digests are off
	var digestTimer *time.Timer
	if s.cfg.DigestInterval > 0 {
		digestTimer = time.NewTimer(s.cfg.DigestInterval)
		defer digestTimer.Stop()
		digestC = digestTimer.C
	}
	s.digestID = 0
	s.digestReq.Store(false) // a request from an earlier connection is moot: this one syncs
	synced, digestDue := false, false
	for {
		if !synced || s.resync.Load() {
			err := s.fullSync(ctx, enc)
			if errors.Is(err, errRestartSync) {
				continue
			}
			if err != nil {
				return err
			}
			synced = true
			// The peer has just been sent the whole table: a digest now would only dump it
			// again (seconds of the kernel's time for a million entries) and find nothing.
			if digestTimer != nil {
				digestTimer.Reset(s.cfg.DigestInterval)
				digestDue = false
			}
		}
		// A busy queue must not starve the digest, so look at its timer on every round.
		select {
		case <-digestC:
			digestDue = true
		default:
		}
		if digestTimer != nil && (digestDue || s.digestReq.Load()) {
			digestDue = false
			s.digestReq.Store(false)
			err := s.sendDigest(ctx, enc)
			if err != nil && !errors.Is(err, errRestartSync) {
				return err
			}
			// After a digest, or a full sync that interrupted one: the next after an interval,
			// longer when the table is so large that digests would cost too much.
			digestTimer.Reset(max(s.cfg.DigestInterval, time.Duration(s.digestCostRatio)*s.lastDigestTook))
			continue
		}
		b := s.q.take()
		if len(b.items) == 0 {
			// The queue ran empty: put what is buffered on the wire, then wait.
			if err := enc.flush(); err != nil {
				return fmt.Errorf("flush: %w", err)
			}
			// Flush may write while Run waits here (writeDirect).
			s.parked = parked
			s.streamMu.Unlock()
			tick := false
			select {
			case <-ctx.Done():
			case <-s.q.wake:
			case <-digestC:
				digestDue = true
			case <-ticker.C:
				tick = true
			}
			s.streamMu.Lock()
			s.parked = nil
			switch {
			case ctx.Err() != nil:
				return context.Cause(ctx)
			case s.directErr != nil:
				return s.directErr
			}
			if err := w.drain(); err != nil {
				return fmt.Errorf("flush: %w", err)
			}
			if tick {
				if err := enc.keepalive(); err != nil {
					return fmt.Errorf("send keepalive: %w", err)
				}
				s.freeIfDue()
			}
			continue
		}
		err := s.sendBatch(enc, b)
		s.release(b)
		if err != nil {
			return err
		}
	}
}

// sendBatch writes queued changes, and a lag probe after them when one is due; on a write
// error it puts the unwritten changes back.
func (s *Sender) sendBatch(enc *encoder, b batch) error {
	items := b.items
	for i := range items {
		c := &items[i]
		var err error
		if c.op == opUpsert {
			err = enc.upsert(&c.flow)
		} else {
			err = enc.delete(c.flow.Key())
		}
		if err != nil {
			s.q.putBack(items[i:], b.since)
			return fmt.Errorf("send %v: %w", c.flow.Orig, err)
		}
		if c.op == opUpsert {
			s.flowsSent.Add(1)
		} else {
			s.deletesSent.Add(1)
		}
	}
	if id, ok := s.lag.probe(b.since, time.Now()); ok {
		if err := enc.lagProbe(id); err != nil {
			return fmt.Errorf("send lag probe: %w", err)
		}
	}
	return nil
}

// fullSync sends SyncBegin, every flow of a snapshot and SyncEnd. It returns errRestartSync,
// having sent no SyncEnd, when a resync is requested (or the queue overflows) meanwhile: the
// Receiver abandons a sync that a new SyncBegin interrupts. Changes queued during the snapshot
// stay queued and go out after SyncEnd, since they may be newer than what the snapshot saw.
func (s *Sender) fullSync(ctx context.Context, enc *encoder) error {
	s.resync.Store(false)
	s.syncID++
	id := s.syncID
	start := time.Now()
	if err := enc.syncBegin(id); err != nil {
		return fmt.Errorf("send sync-begin: %w", err)
	}
	// Keep the stream moving while a long snapshot fills the buffer slowly: flush once per
	// keepalive interval. The flag costs one atomic load per flow; a clock read would cost more.
	var due atomic.Bool
	tm := time.AfterFunc(s.keepalive, func() { due.Store(true) })
	defer tm.Stop()

	var count uint64
	restarted := false
	err := s.cfg.Snapshot(ctx, func(f Flow) error {
		if s.resync.Load() {
			restarted = true
			return errRestartSync
		}
		if due.Load() {
			due.Store(false)
			if err := enc.flush(); err != nil {
				return err
			}
			tm.Reset(s.keepalive)
		}
		if err := enc.upsert(&f); err != nil {
			if errors.Is(err, ErrInvalidFlow) {
				s.reject(f, err)
				return nil
			}
			return err
		}
		count++
		s.flowsSent.Add(1)
		return nil
	})
	if restarted || errors.Is(err, errRestartSync) {
		// Even if Snapshot swallowed the error: the sync is incomplete and must not end.
		s.log.Info("full sync restarted", "sync_id", id, "flows", count)
		return errRestartSync
	}
	if err != nil {
		return fmt.Errorf("full sync %d: %w", id, err)
	}
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	if err := enc.syncEnd(id, count); err != nil {
		return fmt.Errorf("send sync-end: %w", err)
	}
	if err := enc.flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	s.syncs.Add(1)
	s.log.Info("full sync sent", "sync_id", id, "flows", count, "duration", time.Since(start))
	return nil
}

// digestSettle is how long the Sender waits between the end of a digest's snapshot and taking
// the queue for the last time: the conntrack event of a change that the dump already saw should
// be queued by then (events trail the kernel's change by microseconds; see doc.go). Changes
// queued meanwhile are sent as they come.
const digestSettle = 20 * time.Millisecond

// dumpedFlow is one flow of a digest's snapshot: 16 bytes, no pointers.
type dumpedFlow struct {
	key  uint64 // keyHash
	hash uint64 // flowHash
}

// windowChange is the last change to a key sent while a digest is being computed.
type windowChange struct {
	upsert bool
	hash   uint64 // flowHash of the upsert
}

// sendDigest computes the digest of the active's flows as of a point in the stream and writes
// it there, so that the Receiver can compare it exactly with the set it holds at that point.
//
// A snapshot is not atomic: while it runs, the kernel keeps changing and the changes keep being
// queued. The dump may show a changed key before or after its change; the stream carries the
// change either way. So the Sender keeps sending the queue during the snapshot, remembers the
// last change it sent for every key meanwhile (the window), and, once the snapshot is done and
// the queue sent for a last time, sums the dumped flows whose keys did not change in the window
// plus the window's upserts: the state of every key as of the last change written before the
// Digest frame, which is what the Receiver holds when it reads the frame. A key that changed
// just before the dump saw it, but whose event reaches the queue later than digestSettle after
// the dump ended, still makes a false mismatch; the Receiver asks for a confirmation digest
// before it acts.
//
// It returns errRestartSync, having sent no digest, when a full sync becomes due meanwhile.
func (s *Sender) sendDigest(ctx context.Context, enc *encoder) error {
	start := time.Now()
	clear(s.window)
	sendQueue := func() error {
		b := s.q.take()
		if len(b.items) == 0 {
			return nil
		}
		for i := range b.items {
			c := &b.items[i]
			wc := windowChange{upsert: c.op == opUpsert}
			if wc.upsert {
				wc.hash = flowHash(&c.key, c.flow.Reply)
			}
			s.window[keyHash(&c.key)] = wc
		}
		err := s.sendBatch(enc, b)
		s.release(b)
		if err != nil {
			return err
		}
		return enc.flush()
	}
	// The snapshot runs in a goroutine of its own, at the lowest priority, while this one
	// goes on streaming the changes as they come: a stream that waited for the dump's next
	// flow went at the kernel's pace of dumping, and held a burst of changes back as long.
	dumpCtx, cancelDump := context.WithCancel(ctx)
	defer cancelDump()
	type dumpResult struct {
		dumped []dumpedFlow
		rested time.Duration
		err    error
	}
	done := make(chan dumpResult, 1)
	go runInBackground(func() {
		dumped := s.dumped[:0]
		rested, err := pacedSnapshot(dumpCtx, s.cfg.Snapshot, func(f Flow) error {
			if s.resync.Load() || dumpCtx.Err() != nil { // abandoned: the result is not read
				return errRestartSync
			}
			fam, err := flowFamily(&f)
			if err != nil {
				return nil // never mirrored (a full sync counts it as invalid)
			}
			k := packKey(f.Proto, fam, f.Orig)
			dumped = append(dumped, dumpedFlow{key: keyHash(&k), hash: flowHash(&k, f.Reply)})
			return nil
		})
		done <- dumpResult{dumped, rested, err}
	})
	// abandon stops the snapshot if it still runs and waits for it, before an early return.
	dumping := true
	abandon := func(err error) error {
		if dumping {
			cancelDump()
			<-done
		}
		return err
	}
	// Until the snapshot is done and then for the settle, changes go out as they come (into
	// the window); the stream is kept alive as in a full sync.
	keepalive := time.NewTicker(s.keepalive)
	defer keepalive.Stop()
	var settled <-chan time.Time // nil until the snapshot is done
	var dumped []dumpedFlow
	var rested time.Duration
	for settling := true; settling; {
		select {
		case <-ctx.Done():
			return abandon(context.Cause(ctx))
		case res := <-done:
			dumping, dumped, rested = false, res.dumped, res.rested
			// Keep the buffer for the next digest, unless a past peak left it far larger
			// than needed.
			if cap(res.dumped) > 4*len(res.dumped)+1<<16 {
				s.dumped = nil
			} else {
				s.dumped = res.dumped
			}
			if errors.Is(res.err, errRestartSync) || s.resync.Load() {
				s.log.Debug("digest abandoned for a full sync")
				return errRestartSync
			}
			if res.err != nil {
				return fmt.Errorf("digest: %w", res.err)
			}
			settle := time.NewTimer(s.digestSettle)
			defer settle.Stop()
			settled = settle.C
		case <-settled:
			settling = false
		case <-s.q.wake:
			if s.resync.Load() {
				return abandon(errRestartSync)
			}
			if err := sendQueue(); err != nil {
				return abandon(err)
			}
		case <-keepalive.C:
			if err := enc.keepalive(); err != nil {
				return abandon(err)
			}
			if err := enc.flush(); err != nil {
				return abandon(err)
			}
		}
	}
	if s.resync.Load() {
		return errRestartSync
	}
	if err := sendQueue(); err != nil {
		return err
	}
	var d digest
	for _, df := range dumped {
		if _, changed := s.window[df.key]; !changed {
			d.add(df.hash)
		}
	}
	for _, wc := range s.window {
		if wc.upsert {
			d.add(wc.hash)
		}
	}
	s.digestID++
	if err := enc.digest(digestMsg{id: s.digestID, d: d}); err != nil {
		return fmt.Errorf("send digest: %w", err)
	}
	if err := enc.flush(); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	s.digestsSent.Add(1)
	s.lastDigest.Store(time.Now().UnixNano())
	s.lastDigestTook = time.Since(start) - s.digestSettle - rested
	s.log.Debug("digest sent", "digest_id", s.digestID, "flows", d.count, "changed_meanwhile", len(s.window),
		"duration", time.Since(start))
	if len(s.window) > 1<<16 {
		s.window = make(map[uint64]windowChange) // give a burst's memory back
	}
	return nil
}
