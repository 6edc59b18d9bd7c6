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
	// at a time, and stops and returns fn's error (wrapped or not) when fn returns one. It is
	// called from the Sender's goroutine, once per full sync; it must not call Sender methods
	// other than Upsert, Delete, Resync and Stats, and must not stall for longer than a few
	// seconds between flows (the peer drops a silent connection).
	Snapshot func(ctx context.Context, fn func(Flow) error) error
	// Logger receives the Sender's logs; nil discards them.
	Logger *slog.Logger
	// DialTimeout bounds one connection attempt (default 1s); RetryInterval is the pause after
	// every peer has failed, and after a connection is lost (default 500ms).
	DialTimeout, RetryInterval time.Duration
	// MaxQueue is the number of distinct pending flows beyond which the queue overflows: it is
	// dropped and a full sync is forced (default 1<<20).
	MaxQueue int
}

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

	resync atomic.Bool // a full sync is due on the current connection
	syncID uint32      // owned by Run's goroutine

	flowsSent, deletesSent, syncs, overflows, invalid atomic.Uint64

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
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sender{
		cfg:          cfg,
		log:          log.With("component", "mirror-sender"),
		q:            newQueue(cfg.MaxQueue),
		session:      rand.Uint64(),
		keepalive:    keepaliveInterval,
		writeTimeout: writeTimeout,
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

// Resync forces a full sync on the current connection (or on the next one, which does one
// anyway); the daemon calls it after a conntrack event overrun. Safe for concurrent use;
// never blocks.
func (s *Sender) Resync() {
	s.resync.Store(true)
	select {
	case s.q.wake <- struct{}{}:
	default:
	}
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
	}
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
	for {
		conn, peer, ok := s.dial(ctx)
		if !ok {
			return nil
		}
		s.setConnected(peer)
		s.log.Info("mirror peer connected", "peer", peer)
		err := s.serve(ctx, conn)
		if ctx.Err() != nil {
			s.setDisconnected(nil)
			return nil
		}
		s.setDisconnected(err)
		s.log.Warn("mirror connection lost", "peer", peer, slog.Any("err", err))
		if !sleepCtx(ctx, s.cfg.RetryInterval) {
			return nil
		}
	}
}

// dial tries every peer in order until one answers; ok is false when ctx has ended.
func (s *Sender) dial(ctx context.Context) (conn net.Conn, peer netip.AddrPort, ok bool) {
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
		if !sleepCtx(ctx, s.cfg.RetryInterval) {
			return nil, netip.AddrPort{}, false
		}
	}
}

// serve runs one connection until it fails or ctx ends, and closes it.
func (s *Sender) serve(ctx context.Context, conn net.Conn) error {
	tuneConn(conn)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Closing the connection is what interrupts a blocked write when ctx ends or the peer goes.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	// The peer never sends anything: a read returns only when the peer closes the connection or
	// it fails, and that should stop us at once rather than at the next failed write.
	var wg sync.WaitGroup
	wg.Go(func() {
		var b [1]byte
		_, err := conn.Read(b[:])
		if err == nil {
			err = fmt.Errorf("%w: peer sent data", ErrProtocol)
		} else if errors.Is(err, io.EOF) {
			err = errors.New("peer closed the connection")
		}
		cancel(err)
	})

	enc := &encoder{w: bufio.NewWriterSize(&deadlineWriter{c: conn, timeout: s.writeTimeout}, bufSize)}
	err := s.stream(ctx, enc)
	conn.Close()
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil {
		// A write failure is usually the symptom of what the reader (or ctx) saw.
		err = cause
	}
	return err
}

// stream sends the Hello and a full sync, then the queue, until an error.
func (s *Sender) stream(ctx context.Context, enc *encoder) error {
	if err := enc.hello(hello{version: protocolVersion, session: s.session, device: s.cfg.Device}); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	ticker := time.NewTicker(s.keepalive)
	defer ticker.Stop()
	synced := false
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
		}
		b := s.q.take()
		if len(b.items) == 0 {
			// The queue ran empty: put what is buffered on the wire, then wait.
			if err := enc.flush(); err != nil {
				return fmt.Errorf("flush: %w", err)
			}
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			case <-s.q.wake:
			case <-ticker.C:
				if err := enc.keepalive(); err != nil {
					return fmt.Errorf("send keepalive: %w", err)
				}
			}
			continue
		}
		err := s.sendBatch(enc, b.items)
		s.q.release(b)
		if err != nil {
			return err
		}
	}
}

// sendBatch writes queued changes; on a write error it puts the unwritten ones back.
func (s *Sender) sendBatch(enc *encoder, items []change) error {
	for i := range items {
		c := &items[i]
		var err error
		if c.op == opUpsert {
			err = enc.upsert(&c.flow)
		} else {
			err = enc.delete(c.flow.Key())
		}
		if err != nil {
			s.q.putBack(items[i:])
			return fmt.Errorf("send %v: %w", c.flow.Orig, err)
		}
		if c.op == opUpsert {
			s.flowsSent.Add(1)
		} else {
			s.deletesSent.Add(1)
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
