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
	// Table is the standby's kernel table; it is called from one goroutine at a time. When it
	// implements BatchWriter, runs of upserts are applied with InjectBatch.
	Table FlowWriter
	// Snapshot, when set, calls fn for every entry of a mirror-enabled virtual in the
	// standby's own kernel table (the same filter as the active's SenderConfig.Snapshot), one
	// call at a time, and stops and returns fn's error (wrapped or not) when fn returns one. It
	// must end soon after ctx does. It is called from a goroutine of its own, at most once per
	// Digest frame and never twice at once, concurrently with Table's methods. With it the
	// Receiver also notices entries that vanished from the kernel (expired, deleted by an
	// operator), entries with another reply tuple, and entries it did not inject; see doc.go.
	Snapshot func(ctx context.Context, fn func(Flow) error) error
	// RefreshBelow: a kernel check (Snapshot) rewrites the held entries it finds with less
	// than this left on their timer. The active's kernel restarts an entry's timer with every
	// packet and tells no one, so a long-lived flow without state changes (a UDP flow above
	// all) would otherwise expire on the standby while it lives on the active; the Table
	// gives a rewritten entry its full timeout. Zero means 60 seconds; negative, never.
	RefreshBelow time.Duration
	// Logger receives the Receiver's logs; nil discards them.
	Logger *slog.Logger
}

// ReceiverStats is a snapshot of a Receiver's counters.
type ReceiverStats struct {
	Flows        int            // mirrored flows currently held (see Receiver.Flows)
	Frames       uint64         // frames received, keepalives included
	Upserts      uint64         // FlowUpsert frames received
	Deletes      uint64         // FlowDelete frames received
	Applied      uint64         // flows written: Inject (or InjectBatch entries) and Delete calls that succeeded
	InjectErrors uint64         // Inject calls (or InjectBatch entries) that failed
	DeleteErrors uint64         // Delete calls that failed (stream, stale and stray deletes)
	StaleDeleted uint64         // flows deleted at a SyncEnd because the sync did not carry them
	Refreshed    uint64         // held entries rewritten by a kernel check before they expired (RefreshBelow)
	Syncs        uint64         // full syncs completed (SyncEnd received)
	Connected    bool           // a sender is connected now
	PeerDevice   string         // the connected (or last) sender's device name
	PeerAddr     netip.AddrPort // the connected (or last) sender's address
	LastError    error          // the last connection or table error, nil if none yet

	// Batching and lag.
	Batches     uint64    // runs of upserts written: InjectBatch calls, or runs of Inject calls
	Coalesced   uint64    // upserts not written because a later one of the same key was in the same run
	LastApplied time.Time // when a table write last succeeded, zero if none yet

	// Anti-entropy (see doc.go).
	DigestsChecked   uint64    // Digest frames compared with the remembered set
	DigestMismatches uint64    // digests that did not match; each is followed by a confirmation digest
	KernelChecks     uint64    // checks of the kernel table (ReceiverConfig.Snapshot) completed
	DriftDetected    uint64    // drift found: confirmed mismatches, and checks that found stray entries
	ResyncsRequested uint64    // ResyncRequest frames sent to the peer
	Repairs          uint64    // full syncs that answered a ResyncRequest, and checks that deleted stray entries
	StrayDeleted     uint64    // kernel entries of mirrored virtuals that the Receiver did not inject, deleted
	LastDrift        time.Time // when drift was last found, zero if never
	LastDigestMatch  time.Time // when a digest last matched, zero if never
}

// Receiver accepts the active device's mirroring stream and writes it into the standby's table.
// Create it with NewReceiver and start Run; Flows, Stats, Addrs and Forget may be called from any
// goroutine at any time. The set of keys it has injected lives in the Receiver, not in Run, so it
// survives Run being stopped and started again.
type Receiver struct {
	cfg   ReceiverConfig
	batch BatchWriter // cfg.Table, if it is one
	log   *slog.Logger

	// Timing; tests shorten them.
	readTimeout, bindRetry, writeTimeout time.Duration
	resyncGapMin, resyncGapMax           time.Duration // see link.drift
	refreshBelow                         time.Duration // cfg.RefreshBelow with its default; 0: never

	// writeMu is held while a run of changes is written: Forget waits for it. mu guards the
	// fields below; it is taken after writeMu.
	writeMu  sync.Mutex
	mu       sync.Mutex
	held     heldSet                // injected keys
	sum      uint64                 // the sum of held's hashes: with len(held), the remembered set's digest
	epoch    uint32                 // incremented by every SyncBegin
	gen      uint64                 // incremented by Forget, SyncBegin and SyncEnd: a kernel check spanning one is void
	checkSeq uint32                 // the id of the last kernel check
	touched  map[packedKey]struct{} // keys written since the running kernel check began; nil when none runs
	nheld    atomic.Int64           // len(held), for Stats without mu

	frames, upserts, deletes, applied, injectErrs, deleteErrs, stale, syncs atomic.Uint64
	batches, coalesced, refreshed                                           atomic.Uint64
	digests, mismatches, checks, drifts, resyncReqs, repairs, strays        atomic.Uint64
	lastApplied, lastDrift, lastMatch                                       atomic.Int64 // unix nanoseconds

	// Owned by the connection goroutine (Run serves one connection at a time).
	errLog     logLimiter
	resyncGap  time.Duration // the pause after the last ResyncRequest, doubled while drift persists
	nextResync time.Time     // no ResyncRequest before then

	infoMu     sync.Mutex // guards the fields below
	connected  bool
	peerDevice string
	peerAddr   netip.AddrPort
	lastErr    error
	bound      []netip.AddrPort
}

// Bounds of the resync back-off: a drift that a full sync does not cure (a flow the standby's
// kernel refuses, say) is reported at every digest, but asks for a full sync at most after
// these pauses, doubling from the first to the second while the drift persists.
const defaultRefreshBelow = time.Minute

const (
	resyncGapMin = 30 * time.Second
	resyncGapMax = 10 * time.Minute
)

// NewReceiver returns a Receiver for cfg. It does no I/O.
func NewReceiver(cfg ReceiverConfig) *Receiver {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bw, _ := cfg.Table.(BatchWriter)
	refreshBelow := cfg.RefreshBelow
	switch {
	case refreshBelow == 0:
		refreshBelow = defaultRefreshBelow
	case refreshBelow < 0:
		refreshBelow = 0
	}
	return &Receiver{
		refreshBelow: refreshBelow,
		cfg:          cfg,
		batch:        bw,
		log:          log.With("component", "mirror-receiver"),
		readTimeout:  readTimeout,
		bindRetry:    bindRetry,
		writeTimeout: writeTimeout,
		resyncGapMin: resyncGapMin,
		resyncGapMax: resyncGapMax,
		held:         newHeldSet(),
	}
}

// Flows returns the number of mirrored flows currently held: injected and neither deleted by
// the stream, nor found stale at a SyncEnd, nor forgotten. Safe for concurrent use.
func (r *Receiver) Flows() int { return int(r.nheld.Load()) }

// Forget clears the remembered key set: the device has become active, and the entries it
// injected stay in the kernel as its own. It waits for a table write in progress. Safe for
// concurrent use.
func (r *Receiver) Forget() {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	r.mu.Lock()
	r.held = newHeldSet() // give a large map's memory back
	r.sum = 0
	r.gen++
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
		Refreshed:    r.refreshed.Load(),
		Syncs:        r.syncs.Load(),

		Batches:   r.batches.Load(),
		Coalesced: r.coalesced.Load(),

		DigestsChecked:   r.digests.Load(),
		DigestMismatches: r.mismatches.Load(),
		KernelChecks:     r.checks.Load(),
		DriftDetected:    r.drifts.Load(),
		ResyncsRequested: r.resyncReqs.Load(),
		Repairs:          r.repairs.Load(),
		StrayDeleted:     r.strays.Load(),
	}
	st.LastApplied = unixTime(r.lastApplied.Load())
	st.LastDrift = unixTime(r.lastDrift.Load())
	st.LastDigestMatch = unixTime(r.lastMatch.Load())
	r.infoMu.Lock()
	st.Connected, st.PeerDevice, st.PeerAddr, st.LastError = r.connected, r.peerDevice, r.peerAddr, r.lastErr
	r.infoMu.Unlock()
	return st
}

// unixTime converts unix nanoseconds to a time, 0 to the zero time.
func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
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

// link is one connection's state, owned by its goroutine.
type link struct {
	r    *Receiver
	c    net.Conn
	rd   *deadlineReader
	dec  *decoder
	sync syncState

	// The run of changes being filled is fill. A full run is booked in the held set and
	// handed to a writer goroutine (toWriter), which writes runs one at a time, in order,
	// and hands them back (written); meanwhile the next fills another buffer, so that
	// decoding and booking overlap the kernel's work: a full sync is as fast as the kernel
	// takes entries. With one run written and the next already queued, the writer goes
	// from one to the next without waiting to be woken.
	bufs     [3]changeBatch
	fill     *changeBatch
	free     []*changeBatch // reset, to fill next
	writing  []*changeBatch // handed to the writer and not yet back, oldest first
	toWriter chan *changeBatch
	written  chan *changeBatch
	writer   sync.WaitGroup

	synced        bool                   // a full sync has ended on this connection
	digestSuspect bool                   // the last digest did not match
	suspectGap    int64                  // held minus active flows at that digest
	recounts      int                    // digests asked again since, the gap shrinking
	digestAsked   bool                   // a DigestRequest is outstanding
	repairPending bool                   // a ResyncRequest was sent: the next SyncEnd repairs
	check         *kernelCheck           // the kernel check running, nil if none
	suspects      map[packedKey]struct{} // missing or changed at the last kernel check
}

// stream reads frames and applies them; it returns nil at a clean end of stream.
func (r *Receiver) stream(c net.Conn, remote netip.AddrPort) error {
	l := &link{r: r, c: c, rd: &deadlineReader{c: c, timeout: r.readTimeout}}
	l.dec = newDecoder(l.rd, bufSize)
	l.startWriter()
	defer l.stopWriter()
	defer l.stopCheck()
	// Frames that arrived whole are applied even when the stream then fails.
	defer l.flush()

	var fr frame
	if err := l.dec.next(&fr); err != nil {
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

	for {
		if !l.dec.frameBuffered() {
			// The next read may wait for the network: write the pending changes first.
			l.handOff()
		}
		if err := l.pollCheck(); err != nil {
			return err
		}
		if err := l.dec.next(&fr); err != nil {
			if errors.Is(err, errWoken) {
				continue // the kernel check is done
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		r.frames.Add(1)
		if err := l.handle(&fr); err != nil {
			return err
		}
	}
}

// handle applies one frame after the Hello.
func (l *link) handle(fr *frame) error {
	r := l.r
	switch fr.typ {
	case frameUpsert:
		r.upserts.Add(1)
		if l.sync.active {
			l.sync.count++
		}
		if l.pending().add(&fr.flow) {
			r.coalesced.Add(1)
		}
		if l.pending().full() {
			l.flushBackground()
		}
		return nil
	case frameDelete:
		r.deletes.Add(1)
		if l.pending().addDelete(&fr.flow) {
			r.coalesced.Add(1)
		}
		if l.pending().full() {
			l.flushBackground()
		}
		return nil
	case frameKeepalive:
		return nil // does not break a run of changes
	}
	// Any other frame is ordered after the changes before it.
	l.flush()
	switch fr.typ {
	case frameSyncBegin:
		if l.sync.active {
			r.log.Info("full sync restarted by the peer", "old_sync_id", l.sync.id, "sync_id", fr.syncID)
		}
		l.sync = syncState{active: true, id: fr.syncID}
		r.mu.Lock()
		r.epoch++
		r.gen++
		r.mu.Unlock()
	case frameSyncEnd:
		if !l.sync.active || fr.syncID != l.sync.id {
			return fmt.Errorf("%w: sync-end %d without its sync-begin", ErrProtocol, fr.syncID)
		}
		if fr.count != l.sync.count {
			// Frames were lost or invented: the sweep would be wrong. Drop the connection;
			// the peer reconnects and syncs again.
			return fmt.Errorf("%w: sync %d carried %d flows, sync-end says %d", ErrProtocol, l.sync.id, l.sync.count, fr.count)
		}
		l.sync.active = false
		l.synced = true
		n := r.sweep()
		r.syncs.Add(1)
		r.log.Info("full sync received", "sync_id", fr.syncID, "flows", fr.count, "stale_deleted", n)
		if l.repairPending {
			l.repairPending = false
			r.repairs.Add(1)
			r.log.Info("mirror drift repaired by a full sync", "sync_id", fr.syncID, "flows", fr.count, "stale_deleted", n)
		}
	case frameDigest:
		return l.onDigest(fr.digest)
	case frameLagProbe:
		// Every change before the probe is in the kernel now (flushed above).
		var buf [backFrameSize]byte
		return l.send(appendLagProbe(buf[:0], frameLagAck, fr.probe))
	case frameHello:
		return fmt.Errorf("%w: second hello", ErrProtocol)
	default: // back-channel frames, which only a Receiver sends
		return fmt.Errorf("%w: %v from the sender", ErrProtocol, fr.typ)
	}
	return nil
}

// pending is the run of changes being filled.
func (l *link) pending() *changeBatch { return l.fill }

func (l *link) startWriter() {
	for i := range l.bufs {
		l.bufs[i].init()
		l.free = append(l.free, &l.bufs[i])
	}
	l.fill, l.free = l.free[0], l.free[1:]
	l.toWriter = make(chan *changeBatch, len(l.bufs))
	l.written = make(chan *changeBatch, len(l.bufs))
	l.writer.Go(func() {
		for b := range l.toWriter {
			l.r.writeBooked(b)
			l.written <- b
		}
	})
}

// stopWriter ends the writer goroutine, once the runs handed to it are written.
func (l *link) stopWriter() {
	close(l.toWriter)
	l.writer.Wait()
}

// flush writes the pending run of changes, after those being written in the background:
// when it returns, every change received so far is applied.
func (l *link) flush() {
	b := l.fill
	l.book(b)
	l.wait()
	l.r.writeBooked(b)
	b.reset()
}

// handOff has the pending run written: by the writer if it is busy, so that decoding goes
// on meanwhile (a full sync's reads find the buffer empty every few thousand flows, and
// waiting there would leave the kernel idle while the next runs are decoded); else here,
// which spares waking it.
func (l *link) handOff() {
	l.reap()
	switch {
	case len(l.fill.flows) == 0:
	case len(l.writing) > 0:
		l.flushBackground()
	default:
		l.flush()
	}
}

// reap takes back the runs the writer is done with, without waiting.
func (l *link) reap() {
	for len(l.writing) > 0 {
		select {
		case b := <-l.written:
			l.taken(b)
		default:
			return
		}
	}
}

// flushBackground books the pending run, hands it to the writer and starts filling another
// buffer.
func (l *link) flushBackground() {
	b := l.fill
	l.book(b)
	l.toWriter <- b // never blocks: it holds every buffer
	l.writing = append(l.writing, b)
	if len(l.free) == 0 {
		l.takeWritten()
	}
	l.fill, l.free = l.free[len(l.free)-1], l.free[:len(l.free)-1]
}

// book books b in the held set, while the runs before are being written if it may (so that
// the bookings' cache misses do not wait for the kernel): when b has no key of those runs,
// whose outcome the booking must know.
func (l *link) book(b *changeBatch) {
	if len(l.writing) > 0 && l.sharesWriting(b) {
		l.wait()
	}
	l.r.bookBatch(b)
}

func (l *link) sharesWriting(b *changeBatch) bool {
	for _, w := range l.writing {
		if b.shares(w) {
			return true
		}
	}
	return false
}

// takeWritten waits for the oldest run handed to the writer and makes its buffer free.
func (l *link) takeWritten() {
	l.taken(<-l.written)
}

// taken makes the buffer of the oldest run handed to the writer, b, free.
func (l *link) taken(b *changeBatch) {
	l.writing = l.writing[1:]
	b.reset()
	l.free = append(l.free, b)
}

// wait returns once the runs handed to the writer are written.
func (l *link) wait() {
	for len(l.writing) > 0 {
		l.takeWritten()
	}
}

// changeBatch is a run of consecutive upserts and deletes waiting to be written, one per key
// (the latest). Its keys are distinct, so their order does not matter to the table.
type changeBatch struct {
	flows  []Flow // a delete's carries Proto and Orig
	keys   []packedKey
	hashes []uint64 // 0 for a delete
	del    []bool
	index  map[packedKey]int

	// Scratch for bookBatch and writeBooked: the deletes and the upserts, split out, and
	// their positions; what the held set had for each upsert; the bookings' net count.
	delFlows, upFlows []Flow
	delPos, upPos     []int
	delErrs, upErrs   []error // for a Table without BatchWriter
	before            []heldBefore
	added, removed    int
	gen               uint64 // Receiver.gen when booked
}

// heldBefore is what the held set had for an upsert's key before it was booked.
type heldBefore struct {
	e   heldEntry
	had bool
}

// maxBatch bounds a run of changes: enough to amortise a system call, little enough that a
// batch is written within a millisecond or so.
const maxBatch = 256

func (b *changeBatch) init() {
	b.flows = make([]Flow, 0, maxBatch)
	b.keys = make([]packedKey, 0, maxBatch)
	b.hashes = make([]uint64, 0, maxBatch)
	b.del = make([]bool, 0, maxBatch)
	b.index = make(map[packedKey]int, maxBatch)
}

// add queues a decoded (so valid) upsert; it reports whether it replaced a queued change.
func (b *changeBatch) add(f *Flow) (coalesced bool) {
	fam, _ := flowFamily(f)
	k := packKey(f.Proto, fam, f.Orig)
	return b.put(k, f, flowHash(&k, f.Reply), false)
}

// addDelete queues a decoded delete; it reports whether it replaced a queued change.
func (b *changeBatch) addDelete(f *Flow) (coalesced bool) {
	fam, _ := family(f.Orig.Src, f.Orig.Dst)
	k := packKey(f.Proto, fam, f.Orig)
	return b.put(k, &Flow{Proto: f.Proto, Orig: f.Orig}, 0, true)
}

func (b *changeBatch) put(k packedKey, f *Flow, h uint64, del bool) (coalesced bool) {
	if i, ok := b.index[k]; ok {
		b.flows[i], b.hashes[i], b.del[i] = *f, h, del
		return true
	}
	b.index[k] = len(b.flows)
	b.flows = append(b.flows, *f)
	b.keys = append(b.keys, k)
	b.hashes = append(b.hashes, h)
	b.del = append(b.del, del)
	return false
}

func (b *changeBatch) full() bool { return len(b.flows) >= maxBatch }

// shares reports whether b and o have a key in common.
func (b *changeBatch) shares(o *changeBatch) bool {
	small, large := b, o
	if len(o.keys) < len(b.keys) {
		small, large = o, b
	}
	for i := range small.keys {
		if _, ok := large.index[small.keys[i]]; ok {
			return true
		}
	}
	return false
}

func (b *changeBatch) reset() {
	clear(b.flows) // drop address zone pointers
	clear(b.delFlows)
	clear(b.upFlows)
	clear(b.delErrs)
	clear(b.upErrs)
	b.flows, b.keys, b.hashes, b.del = b.flows[:0], b.keys[:0], b.hashes[:0], b.del[:0]
	b.delFlows, b.upFlows, b.delPos, b.upPos = b.delFlows[:0], b.upFlows[:0], b.delPos[:0], b.upPos[:0]
	b.before, b.added, b.removed = b.before[:0], 0, 0
	clear(b.index)
}

// bookBatch enters a run of changes in the held set before they are written, as if each
// will succeed; writeBooked then undoes the bookings of the upserts that fail. Booking
// first lets the set's lookups (a cache miss each in a large set) overlap the kernel's work
// on the runs before. The keys are marked touched before the kernel sees them, as a kernel
// check needs.
func (r *Receiver) bookBatch(b *changeBatch) {
	if len(b.flows) == 0 {
		return
	}
	for i := range b.flows {
		if b.del[i] {
			b.delFlows, b.delPos = append(b.delFlows, b.flows[i]), append(b.delPos, i)
		} else {
			b.upFlows, b.upPos = append(b.upFlows, b.flows[i]), append(b.upPos, i)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b.gen = r.gen
	if r.touched != nil {
		for i := range b.keys {
			r.touched[b.keys[i]] = struct{}{}
		}
	}
	for _, i := range b.delPos {
		if e, had := r.held.remove(&b.keys[i]); had {
			r.sum -= e.hash
			b.removed++
		}
	}
	for _, i := range b.upPos {
		k := &b.keys[i]
		e, had := r.held.get(k)
		b.before = append(b.before, heldBefore{e: e, had: had})
		r.sum += b.hashes[i] - e.hash // e.hash is 0 when !had
		e.hash = b.hashes[i]
		e.epoch = r.epoch
		r.held.set(k, e)
		if !had {
			b.added++
		}
	}
}

// writeBooked writes a booked run of changes: the deletes first, since an upsert may need a
// reply tuple (an SNAT port) that a deleted entry frees, each kind in one call when the
// table is a BatchWriter. A failure is counted and logged and does not stop the stream. A
// key already held stays held even when its update fails: the older entry is still in the
// kernel, and still better than none at failover. A deleted key is forgotten even when its
// delete fails, as the peer no longer has it.
func (r *Receiver) writeBooked(b *changeBatch) {
	n := len(b.flows)
	if n == 0 {
		return
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	delErrs := r.writeBatch(b.delFlows, true, &b.delErrs)
	upErrs := r.writeBatch(b.upFlows, false, &b.upErrs)
	errAt := func(errs []error, j int) error {
		if j < len(errs) {
			return errs[j]
		}
		return nil
	}
	injectFailed, deleteFailed := 0, 0
	for j := range b.delPos {
		if errAt(delErrs, j) != nil {
			deleteFailed++
		}
	}
	r.mu.Lock()
	kept := r.gen == b.gen // not forgotten since booked
	added := b.added
	for j, i := range b.upPos {
		if errAt(upErrs, j) == nil {
			continue
		}
		injectFailed++
		if !kept {
			continue
		}
		// No later run has booked the key (link.book), but a kernel check may have marked
		// it seen.
		k, before := &b.keys[i], b.before[j]
		e, _ := r.held.get(k)
		r.sum -= e.hash - before.e.hash
		if !before.had {
			r.held.remove(k)
			added--
			continue
		}
		e.hash = before.e.hash
		r.held.set(k, e)
	}
	// The counters first: whoever sees Flows change sees them too.
	r.batches.Add(1)
	if failed := injectFailed + deleteFailed; failed < n {
		r.applied.Add(uint64(n - failed))
		r.lastApplied.Store(time.Now().UnixNano())
	}
	r.injectErrs.Add(uint64(injectFailed))
	r.deleteErrs.Add(uint64(deleteFailed))
	if kept {
		r.nheld.Add(int64(added - b.removed))
	}
	r.mu.Unlock()

	for j, i := range b.delPos {
		if err := errAt(delErrs, j); err != nil {
			r.tableError("delete failed", &b.flows[i], err)
		}
	}
	for j, i := range b.upPos {
		if err := errAt(upErrs, j); err != nil {
			r.tableError("inject failed", &b.flows[i], err)
		}
	}
}

// writeBatch injects (or deletes) flows in one call when the table is a BatchWriter, else
// one by one; it returns their errors as BatchWriter does. With r.writeMu held.
func (r *Receiver) writeBatch(flows []Flow, del bool, scratch *[]error) []error {
	switch {
	case len(flows) == 0:
		return nil
	case r.batch != nil && del:
		return r.batch.DeleteBatch(flows)
	case r.batch != nil:
		return r.batch.InjectBatch(flows)
	}
	errs := (*scratch)[:0]
	for i := range flows {
		if del {
			errs = append(errs, r.cfg.Table.Delete(flows[i]))
		} else {
			errs = append(errs, r.cfg.Table.Inject(flows[i]))
		}
	}
	*scratch = errs
	return errs
}

// sweep deletes the held flows that the sync just ended did not carry, and returns how many.
// The table calls happen outside mu, so that a Forget at failover does not wait for them (a
// kernel check spanning them is void: the SyncEnd changed gen).
func (r *Receiver) sweep() int {
	r.mu.Lock()
	var stale []packedKey
	r.held.each(func(k *packedKey, e heldEntry) bool {
		if e.epoch == r.epoch {
			return true
		}
		stale = append(stale, *k)
		r.sum -= e.hash
		return false
	})
	r.nheld.Add(-int64(len(stale)))
	r.gen++
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

// send writes a back-channel frame. Only the connection's goroutine writes, and rarely.
func (l *link) send(b []byte) error {
	if err := l.c.SetWriteDeadline(time.Now().Add(l.r.writeTimeout)); err != nil {
		return err
	}
	if _, err := l.c.Write(b); err != nil {
		return fmt.Errorf("send to the peer: %w", err)
	}
	return nil
}

// askDigest asks the peer for an early digest, to confirm or clear a suspected drift.
func (l *link) askDigest() error {
	if l.digestAsked {
		return nil
	}
	var buf [backFrameSize]byte
	if err := l.send(appendDigestRequest(buf[:0])); err != nil {
		return err
	}
	l.digestAsked = true
	return nil
}

// onDigest compares the peer's digest with the remembered set, as of the same point in the
// stream, and starts a kernel check if the Receiver has a Snapshot.
func (l *link) onDigest(m digestMsg) error {
	r := l.r
	if !l.synced || l.sync.active {
		return fmt.Errorf("%w: digest %d outside a synced stream", ErrProtocol, m.id)
	}
	r.digests.Add(1)
	l.digestAsked = false
	r.mu.Lock()
	have := digest{count: uint64(r.held.len()), sum: r.sum}
	r.mu.Unlock()
	gap := int64(have.count) - int64(m.d.count)
	switch {
	case have == m.d:
		r.lastMatch.Store(time.Now().UnixNano())
		l.digestSuspect = false
		if len(l.suspects) == 0 {
			r.resyncGap = 0 // the last repair, if any, worked
		}
	case !l.digestSuspect:
		// Maybe a change raced the active's dump (see Sender.sendDigest): confirm first.
		r.mismatches.Add(1)
		l.digestSuspect, l.suspectGap, l.recounts = true, gap, 0
		r.log.Info("mirror digest mismatch: asking for a confirmation", "digest_id", m.id,
			"active_flows", m.d.count, "held_flows", have.count)
		if err := l.askDigest(); err != nil {
			return err
		}
	case absGap(gap) < absGap(l.suspectGap) && l.recounts < maxRecounts:
		// The difference shrinks: the stream is catching up with changes that the active's
		// event reader had not yet read when it dumped (thousands of entries expiring or
		// flushed at once), and would go on shrinking through a full sync. Ask again.
		l.suspectGap = gap
		l.recounts++
		r.log.Info("mirror digest mismatch shrinking: asking again", "digest_id", m.id,
			"active_flows", m.d.count, "held_flows", have.count)
		if err := l.askDigest(); err != nil {
			return err
		}
	default:
		l.digestSuspect = false
		if err := l.drift(reasonDigest, "digest_id", m.id, "active_flows", m.d.count, "held_flows", have.count); err != nil {
			return err
		}
	}
	if r.cfg.Snapshot != nil && l.check == nil {
		l.startCheck()
	}
	return nil
}

// maxRecounts bounds the digests asked again while a mismatch shrinks (link.onDigest).
const maxRecounts = 8

func absGap(g int64) int64 {
	if g < 0 {
		return -g
	}
	return g
}

// drift counts and logs a confirmed drift and asks the peer for a full sync, unless the last
// request was too recent: a full sync that did not cure the drift is not repeated at every
// digest, but after a pause that doubles each time (resyncGapMin to resyncGapMax) until a clean
// check resets it.
func (l *link) drift(reason resyncReason, attrs ...any) error {
	r := l.r
	now := time.Now()
	r.drifts.Add(1)
	r.lastDrift.Store(now.UnixNano())
	attrs = append(attrs, "reason", reason.String())
	if now.Before(r.nextResync) {
		r.log.Warn("mirror drift persists after a full sync; the next resync request waits",
			append(attrs, "until", r.nextResync.Format(time.RFC3339))...)
		return nil
	}
	r.log.Warn("mirror drift detected: asking the peer for a full sync", attrs...)
	var buf [backFrameSize]byte
	if err := l.send(appendResyncRequest(buf[:0], reason)); err != nil {
		return err
	}
	r.resyncReqs.Add(1)
	l.repairPending = true
	r.resyncGap = min(max(2*r.resyncGap, r.resyncGapMin), r.resyncGapMax)
	r.nextResync = now.Add(r.resyncGap)
	return nil
}

// kernelCheck is a comparison of the standby's kernel table (ReceiverConfig.Snapshot) with the
// remembered set, running in a goroutine of its own while the stream goes on.
//
// A flow the stream writes while the dump runs may be seen before or after the write, so the
// check ignores every key written since it began (touched): the write made the kernel right
// for that key anyway, or the stream's own counters tell of its failure. Of the other keys it
// finds those in the kernel but not held (stray: injected by no one the active knows of; it
// deletes them), those held with another reply tuple (changed) and, at the end, those held
// but not dumped (missing). A key missing or changed at two checks running is drift, and
// needs a full sync: only the active has the flow's data. A single sighting may be a race
// with an expiry that the active has not yet reported, so it only asks for an early digest,
// and with it an early second check.
type kernelCheck struct {
	id     uint32
	gen    uint64
	cancel context.CancelFunc
	done   chan checkResult // capacity 1
}

type checkResult struct {
	err            error
	dumped         int
	extra          []Flow      // kernel entries not held, at most maxReport
	changed        []packedKey // at most maxReport
	nextra, nchang int
	refresh        []Flow // held entries near their expiry, at most maxRefresh
}

// maxRefresh bounds the entries one kernel check rewrites; the others are found by the next.
const maxRefresh = 1 << 16

// maxReport bounds the keys a check keeps of each kind; the rest are counted, and found again
// by the next check.
const maxReport = 4096

func (l *link) startCheck() {
	r := l.r
	ctx, cancel := context.WithCancel(context.Background())
	r.mu.Lock()
	r.checkSeq++
	if r.checkSeq == 0 { // a held entry that no check has seen has seen 0
		r.checkSeq++
	}
	kc := &kernelCheck{id: r.checkSeq, gen: r.gen, cancel: cancel, done: make(chan checkResult, 1)}
	r.touched = make(map[packedKey]struct{})
	r.mu.Unlock()
	rd := l.rd
	go func() {
		kc.done <- r.runCheck(ctx, kc.id)
		rd.wake() // the stream goroutine may be waiting for the next frame
	}()
	l.check = kc
}

// runCheck dumps the kernel table in the background and compares it with held, a few
// hundred flows per lock. The comparing is done here, at normal priority: the dumping thread
// must not hold the lock that the stream takes for every frame.
func (r *Receiver) runCheck(ctx context.Context, id uint32) checkResult {
	var res checkResult
	full := make(chan []Flow, 1)
	free := make(chan []Flow, 2)
	for range cap(free) {
		free <- make([]Flow, 0, maxBatch)
	}
	go runInBackground(func() {
		defer close(full)
		flows := <-free
		_, res.err = pacedSnapshot(ctx, r.cfg.Snapshot, func(f Flow) error {
			flows = append(flows, f)
			if len(flows) == maxBatch {
				full <- flows
				flows = <-free
			}
			return ctx.Err()
		})
		if res.err == nil {
			res.err = ctx.Err()
		}
		full <- flows
	})
	var batch []checkedFlow
	for flows := range full {
		batch = r.compare(id, flows, batch[:0], &res)
		clear(flows)
		free <- flows[:0]
	}
	return res
}

// checkedFlow is a dumped flow's key and hash, i its index in the dumped batch.
type checkedFlow struct {
	key  packedKey
	hash uint64
	i    int
}

// compare marks the held entries of flows, a batch of the kernel check's dump, as seen by
// check id, and adds to res what differs; batch is scratch space, returned for reuse.
func (r *Receiver) compare(id uint32, flows []Flow, batch []checkedFlow, res *checkResult) []checkedFlow {
	for i := range flows {
		f := &flows[i]
		fam, err := flowFamily(f)
		if err != nil {
			continue // nothing the Receiver could have injected
		}
		k := packKey(f.Proto, fam, f.Orig)
		batch = append(batch, checkedFlow{key: k, hash: flowHash(&k, f.Reply), i: i})
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range batch {
		if _, ok := r.touched[d.key]; ok {
			continue
		}
		e, ok := r.held.get(&d.key)
		if !ok {
			if res.nextra++; len(res.extra) < maxReport {
				res.extra = append(res.extra, flows[d.i])
			}
			continue
		}
		e.seen = id
		r.held.set(&d.key, e)
		if e.hash != d.hash {
			if res.nchang++; len(res.changed) < maxReport {
				res.changed = append(res.changed, d.key)
			}
		} else if f := &flows[d.i]; r.refreshBelow > 0 && time.Duration(f.Timeout)*time.Second < r.refreshBelow && len(res.refresh) < maxRefresh {
			res.refresh = append(res.refresh, *f)
		}
	}
	res.dumped += len(flows)
	return batch
}

// pollCheck finishes the kernel check if its dump is done.
func (l *link) pollCheck() error {
	if l.check == nil {
		return nil
	}
	select {
	case res := <-l.check.done:
		return l.finishCheck(res)
	default:
		return nil
	}
}

// stopCheck cancels the kernel check, if any, and waits for it.
func (l *link) stopCheck() {
	if l.check == nil {
		return
	}
	l.check.cancel()
	<-l.check.done
	l.check = nil
	l.r.mu.Lock()
	l.r.touched = nil
	l.r.mu.Unlock()
}

// finishCheck completes a kernel check whose dump is done: it finds the missing keys, deletes
// the stray entries, and reports drift.
func (l *link) finishCheck(res checkResult) error {
	l.wait() // what it compares is what was received before
	r, kc := l.r, l.check
	l.check = nil
	kc.cancel()
	var (
		missing         []packedKey
		nmissing, stray int
	)
	r.mu.Lock()
	void := res.err != nil || r.gen != kc.gen
	if !void {
		r.held.each(func(k *packedKey, e heldEntry) bool {
			if e.seen == kc.id {
				return true
			}
			if _, ok := r.touched[*k]; ok {
				return true
			}
			if nmissing++; len(missing) < maxReport {
				missing = append(missing, *k)
			}
			return true
		})
		for i := range res.extra {
			f := &res.extra[i]
			fam, _ := flowFamily(f)
			k := packKey(f.Proto, fam, f.Orig)
			if _, ok := r.held.get(&k); ok {
				continue
			}
			if _, ok := r.touched[k]; ok {
				continue
			}
			if err := r.cfg.Table.Delete(*f); err != nil {
				r.deleteErrs.Add(1)
				r.tableError("stray delete failed", f, err)
				continue
			}
			stray++
		}
	}
	if !void {
		// Rewritten only if still held as dumped: a Delete or a newer upsert since wins.
		res.refresh = slices.DeleteFunc(res.refresh, func(f Flow) bool {
			fam, _ := flowFamily(&f)
			k := packKey(f.Proto, fam, f.Orig)
			_, touched := r.touched[k]
			e, held := r.held.get(&k)
			return touched || !held || e.hash != flowHash(&k, f.Reply)
		})
	}
	r.touched = nil
	r.mu.Unlock()
	if !void && len(res.refresh) > 0 {
		l.refresh(res.refresh)
	}
	switch {
	case res.err != nil:
		r.log.Warn("kernel table check failed", slog.Any("err", res.err))
		return nil
	case void:
		r.log.Debug("kernel table check void: a sync or a Forget came in between")
		return nil
	}
	r.checks.Add(1)

	prev := l.suspects
	l.suspects = make(map[packedKey]struct{}, len(missing)+len(res.changed))
	confirmed := 0
	for _, ks := range [][]packedKey{missing, res.changed} {
		for _, k := range ks {
			l.suspects[k] = struct{}{}
			if _, ok := prev[k]; ok {
				confirmed++
			}
		}
	}
	attrs := []any{"dumped", res.dumped, "missing", nmissing, "changed", res.nchang, "stray", res.nextra}
	if stray > 0 {
		r.drifts.Add(1)
		r.lastDrift.Store(time.Now().UnixNano())
		r.strays.Add(uint64(stray))
		r.repairs.Add(1)
		r.log.Warn("mirror drift: deleted kernel entries that the active does not have", append(attrs, "deleted", stray)...)
	}
	switch {
	case confirmed > 0:
		return l.drift(reasonTable, append(attrs, "confirmed", confirmed)...)
	case len(l.suspects) > 0:
		r.log.Info("kernel table differs from the mirrored set: confirming", attrs...)
		return l.askDigest()
	case stray == 0 && !l.digestSuspect:
		r.resyncGap = 0
	}
	return nil
}

// refresh rewrites held entries near their expiry, as upserts that change nothing but the
// timer.
func (l *link) refresh(flows []Flow) {
	r := l.r
	l.flush()
	for i := range flows {
		if l.pending().add(&flows[i]) {
			r.coalesced.Add(1)
		}
		if l.pending().full() {
			l.flush()
		}
	}
	l.flush()
	r.refreshed.Add(uint64(len(flows)))
	r.log.Debug("entries near their expiry rewritten", "flows", len(flows))
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
