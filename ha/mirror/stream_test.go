package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testTimeout = 15 * time.Second

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// startReceiver runs r until the test ends (or stop is called) and waits until it listens on
// all its addresses.
func startReceiver(t testing.TB, r *Receiver) (stop func() error) {
	t.Helper()
	stop = goRun(t, r.Run)
	waitFor(t, testTimeout, func() bool { return len(r.Addrs()) == len(r.cfg.Listen) },
		func() string { return fmt.Sprintf("receiver listens on %v, want %v", r.Addrs(), r.cfg.Listen) })
	return stop
}

func newTestSender(t testing.TB, tr *truth, peers ...netip.AddrPort) *Sender {
	return NewSender(testSenderConfig(t, tr, peers...))
}

func testSenderConfig(t testing.TB, tr *truth, peers ...netip.AddrPort) SenderConfig {
	return SenderConfig{
		Device:        "bigip-a",
		Peers:         peers,
		Snapshot:      tr.Snapshot,
		Logger:        testLogger(t),
		DialTimeout:   time.Second,
		RetryInterval: 20 * time.Millisecond,
	}
}

func newTestReceiver(t testing.TB, table FlowWriter, listen ...netip.AddrPort) *Receiver {
	return NewReceiver(ReceiverConfig{Listen: listen, Table: table, Logger: testLogger(t)})
}

// waitConverged waits until the receiver's table, and the set of keys it remembers, equal the
// truth.
func waitConverged(t testing.TB, tr *truth, table *fakeTable, r *Receiver) {
	t.Helper()
	waitFor(t, testTimeout, func() bool {
		want := tr.get()
		return flowsDiff(want, table.snapshot()) == "" && r.Flows() == len(want)
	}, func() string {
		want := tr.get()
		return fmt.Sprintf("receiver holds %d flows, want %d; table (-want +got):\n%s",
			r.Flows(), len(want), flowsDiff(want, table.snapshot()))
	})
}

func flows(from, to int) []Flow {
	var out []Flow
	for i := from; i < to; i++ {
		out = append(out, testFlow(i))
	}
	return out
}

// TestStreamConverges: a full sync of 1000 flows with upserts and deletes arriving before,
// during and after it leaves the receiver with exactly the sender's final set.
func TestStreamConverges(t *testing.T) {
	checkGoroutines(t)
	table := newFakeTable()
	r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
	startReceiver(t, r)

	tr := newTruth(flows(0, 1000)...)
	s := newTestSender(t, tr, r.Addrs()...)

	// The first snapshot pauses half-way until the writers have made 1000 changes, so that
	// changes are certainly queued while it is being sent.
	var changes atomic.Int64
	midSync := make(chan struct{})
	var pauseOnce sync.Once
	tr.hook = func(i int) {
		if i == 500 {
			pauseOnce.Do(func() {
				close(midSync)
				waitFor(t, testTimeout, func() bool { return changes.Load() >= 1000 }, func() string { return "writers stalled" })
			})
		}
	}
	goRun(t, s.Run)

	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(w), 42))
			for i := range 2000 {
				if i == 100 && w == 0 {
					<-midSync
				}
				f := testFlow(rnd.IntN(1500)) // existing keys and new ones
				if rnd.IntN(4) == 0 {
					tr.delete(s, f)
				} else {
					f.Timeout, f.TCPState, f.Mark = rnd.Uint32(), uint8(rnd.IntN(9)+1), rnd.Uint32() // a known state: 0 keeps the queued one
					tr.upsert(s, f)
				}
				changes.Add(1)
			}
		})
	}
	wg.Wait()
	waitConverged(t, tr, table, r)

	st := s.Stats()
	if !st.Connected || st.Syncs != 1 || st.Overflows != 0 || st.Invalid != 0 {
		t.Errorf("sender stats %+v: want connected, 1 sync, no overflow, nothing invalid", st)
	}
	if rs := r.Stats(); rs.Syncs != 1 || rs.PeerDevice != "bigip-a" || !rs.Connected || rs.InjectErrors != 0 {
		t.Errorf("receiver stats %+v: want 1 sync from connected bigip-a, no errors", rs)
	}
}

// syncedPair connects a sender of n flows to a receiver over loopback, both running until
// the test ends, and waits for the first full sync to land.
func syncedPair(t *testing.T, n int) (*truth, *fakeTable, *Receiver, *Sender) {
	t.Helper()
	table := newFakeTable()
	r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
	startReceiver(t, r)
	tr := newTruth(flows(0, n)...)
	s := newTestSender(t, tr, r.Addrs()...)
	goRun(t, s.Run)
	waitConverged(t, tr, table, r)
	return tr, table, r, s
}

// pairWithStoppedReceiver connects a sender (its test config changed by adjust, if not nil)
// to a receiver, syncs n flows, then stops the receiver and waits until the sender has
// noticed; startReceiver(t, r) brings the receiver back on the same address.
func pairWithStoppedReceiver(t *testing.T, n int, adjust func(*SenderConfig)) (*truth, *fakeTable, *Receiver, *Sender) {
	t.Helper()
	table := newFakeTable()
	addr := freePort(t, "127.0.0.1")
	r := newTestReceiver(t, table, addr)
	stopReceiver := startReceiver(t, r)
	tr := newTruth(flows(0, n)...)
	cfg := testSenderConfig(t, tr, addr)
	if adjust != nil {
		adjust(&cfg)
	}
	s := NewSender(cfg)
	goRun(t, s.Run)
	waitConverged(t, tr, table, r)

	if err := stopReceiver(); err != nil {
		t.Fatalf("receiver run: %v", err)
	}
	waitFor(t, testTimeout, func() bool { return !s.Stats().Connected },
		func() string { return "sender did not notice the receiver going" })
	return tr, table, r, s
}

// TestReceiverRestart: when the receiver goes away and comes back on the same address, the
// sender reconnects and syncs in full, and the receiver deletes what it held that the new sync
// did not carry.
func TestReceiverRestart(t *testing.T) {
	checkGoroutines(t)
	tr, table, r, s := pairWithStoppedReceiver(t, 1000, nil)

	// While the stream is down: 100 flows end without their events reaching the sender (the
	// receiver holds them: stale), 50 appear, and 10 change through the queue.
	for i := range 100 {
		tr.remove(testFlow(i).Key())
	}
	for _, f := range flows(1000, 1050) {
		tr.upsert(s, f)
	}
	for i := 500; i < 510; i++ {
		f := testFlow(i)
		f.Timeout = 99999
		tr.upsert(s, f)
	}

	startReceiver(t, r)
	waitConverged(t, tr, table, r)
	if st := r.Stats(); st.StaleDeleted != 100 || st.Syncs != 2 {
		t.Errorf("receiver stats %+v: want 100 stale deleted over 2 syncs", st)
	}
	if st := s.Stats(); st.Syncs != 2 || st.LastError == nil {
		t.Errorf("sender stats %+v: want 2 syncs and a last error", st)
	}
}

// TestReconnectSoonAfterRestart: a receiver that comes back 100ms after going away is
// reached again long before RetryInterval, the pause only growing towards it.
func TestReconnectSoonAfterRestart(t *testing.T) {
	checkGoroutines(t)
	_, _, r, s := pairWithStoppedReceiver(t, 10, func(c *SenderConfig) { c.RetryInterval = time.Minute })
	time.Sleep(100 * time.Millisecond)
	startReceiver(t, r)
	waitFor(t, 10*time.Second, func() bool { return s.Stats().Syncs == 2 },
		func() string { return fmt.Sprintf("sender not back within 10s (RetryInterval 1m): %+v", s.Stats()) })
}

// TestRetryPause: the pause doubles from firstRetry up to RetryInterval.
func TestRetryPause(t *testing.T) {
	s := NewSender(SenderConfig{RetryInterval: 500 * time.Millisecond})
	want := []time.Duration{20, 40, 80, 160, 320, 500, 500}
	failures := 0
	for i, w := range want {
		if got := s.retryPause(&failures); got != w*time.Millisecond {
			t.Errorf("pause %d: %v, want %v", i, got, w*time.Millisecond)
		}
	}
	failures = 1000 // no overflow of the shift
	if got := s.retryPause(&failures); got != 500*time.Millisecond {
		t.Errorf("pause after 1000 failures: %v, want 500ms", got)
	}
}

// TestRedial: Redial ends a retry pause at once, and restarts the doubling; one made while
// no pause runs ends the next.
func TestRedial(t *testing.T) {
	s := NewSender(SenderConfig{RetryInterval: time.Minute})
	for _, early := range []bool{false, true} {
		if early {
			s.Redial()
		}
		failures := 20 // a pause of RetryInterval
		done := make(chan bool)
		go func() { done <- s.pause(context.Background(), &failures) }()
		if !early {
			s.Redial()
		}
		select {
		case ok := <-done:
			if !ok || failures != 0 {
				t.Errorf("early=%v: pause = %v with failures %d, want true and 0", early, ok, failures)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("early=%v: a pause of %v not ended by Redial within 10s", early, time.Minute)
		}
	}
}

// TestPeerFallback: the first peer address refuses, the second (mirror-secondary-ip) works.
func TestPeerFallback(t *testing.T) {
	checkGoroutines(t)
	table := newFakeTable()
	r := newTestReceiver(t, table, freePort(t, "127.0.0.2"))
	startReceiver(t, r)
	dead := freePort(t, "127.0.0.1")

	tr := newTruth(flows(0, 100)...)
	s := newTestSender(t, tr, dead, r.Addrs()[0])
	goRun(t, s.Run)
	waitConverged(t, tr, table, r)
	if st := s.Stats(); st.Peer != r.Addrs()[0] {
		t.Errorf("sender connected to %v, want the fallback %v", st.Peer, r.Addrs()[0])
	}
}

// TestQueueOverflowWhileDisconnected: more distinct changes than MaxQueue while the peer is away
// overflow the queue; the full sync on connection still delivers everything.
func TestQueueOverflowWhileDisconnected(t *testing.T) {
	checkGoroutines(t)
	table := newFakeTable()
	addr := freePort(t, "127.0.0.1")
	tr := newTruth(flows(0, 20)...)
	s := NewSender(SenderConfig{Peers: []netip.AddrPort{addr}, Snapshot: tr.Snapshot, Logger: testLogger(t),
		RetryInterval: 20 * time.Millisecond, MaxQueue: 10})
	goRun(t, s.Run)
	for _, f := range flows(20, 125) {
		tr.upsert(s, f)
	}
	for _, f := range flows(0, 5) {
		tr.delete(s, f)
	}
	if st := s.Stats(); st.Overflows != 10 || st.QueueLen > 10 {
		t.Errorf("sender stats %+v: want 10 overflows and at most 10 queued", st)
	}
	r := newTestReceiver(t, table, addr)
	startReceiver(t, r)
	waitConverged(t, tr, table, r)
}

// TestQueueOverflowDuringSync: an overflow in the middle of a full sync restarts it; the
// receiver abandons the first one and ends with exactly the sender's set.
func TestQueueOverflowDuringSync(t *testing.T) {
	checkGoroutines(t)
	table := newFakeTable()
	r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
	startReceiver(t, r)

	tr := newTruth(flows(0, 1000)...)
	s := NewSender(SenderConfig{Peers: r.Addrs(), Snapshot: tr.Snapshot, Logger: testLogger(t),
		RetryInterval: 20 * time.Millisecond, MaxQueue: 50})
	var once sync.Once
	tr.hook = func(i int) {
		if i == 300 {
			once.Do(func() {
				for _, f := range flows(1000, 1100) {
					tr.upsert(s, f)
				}
				for _, f := range flows(0, 10) {
					tr.delete(s, f)
				}
			})
		}
	}
	goRun(t, s.Run)
	waitConverged(t, tr, table, r)
	waitFor(t, testTimeout, func() bool { return s.Stats().QueueLen == 0 }, func() string { return "queue not drained" })
	if st := s.Stats(); st.Overflows == 0 || st.Syncs != 1 {
		t.Errorf("sender stats %+v: want an overflow and 1 completed sync", st)
	}
	if n := tr.snapshotCount(); n != 2 {
		t.Errorf("%d snapshots, want 2 (the first restarted)", n)
	}
	if st := r.Stats(); st.Syncs != 1 {
		t.Errorf("receiver stats %+v: want 1 completed sync", st)
	}
}

// TestCoalescing: 1000 upserts of one key while disconnected go out as one frame. The full sync
// on connection carries the flow as well (the snapshot is taken after the upserts), and the
// queued frame follows it: queued changes are kept across a sync, since the Sender cannot know
// whether the dump saw them.
func TestCoalescing(t *testing.T) {
	checkGoroutines(t)
	table := newFakeTable()
	addr := freePort(t, "127.0.0.1")
	tr := newTruth()
	s := newTestSender(t, tr, addr)
	goRun(t, s.Run)
	f := testFlow(7)
	for i := range 1000 {
		f.Timeout = uint32(i)
		tr.upsert(s, f)
	}
	if n := s.Stats().QueueLen; n != 1 {
		t.Errorf("queue length %d, want 1", n)
	}
	r := newTestReceiver(t, table, addr)
	startReceiver(t, r)
	waitConverged(t, tr, table, r)
	// Applied, not Upserts: a received upsert is written with the run it belongs to.
	waitFor(t, testTimeout, func() bool { return s.Stats().QueueLen == 0 && r.Stats().Applied == s.Stats().FlowsSent },
		func() string { return fmt.Sprintf("sender %+v, receiver %+v", s.Stats(), r.Stats()) })
	if got := table.snapshot()[f.Key()].Timeout; got != 999 {
		t.Errorf("timeout %d, want the latest, 999", got)
	}
	// 1 upsert in the full sync + 1 from the queue.
	if st := s.Stats(); st.FlowsSent != 2 {
		t.Errorf("sender sent %d upserts, want 2: 1 in the full sync and 1 for the 1000 queued", st.FlowsSent)
	}
	if n := table.injectCount(f.Key()); n != 2 {
		t.Errorf("%d injects, want 2", n)
	}
}

// TestQueueKeepsTCPState: an upsert without a TCP state (an update event for a status change)
// that replaces a queued upsert keeps its state, whether it is queued after it or the older one
// is put back after a failed write.
func TestQueueKeepsTCPState(t *testing.T) {
	q := newQueue(100, true)
	push := func(i int, state uint8) {
		f := testFlow(i)
		f.TCPState = state
		fam, _ := flowFamily(&f)
		q.push(change{op: opUpsert, key: packKey(f.Proto, fam, f.Orig), flow: f})
	}
	states := func(b batch) (got []uint8) {
		for _, c := range b.items {
			got = append(got, c.flow.TCPState)
		}
		return got
	}
	push(0, 2)
	push(2, 3)
	push(0, TCPStateUnknown)
	push(2, 4)
	b := q.take()
	if got := states(b); !slices.Equal(got, []uint8{2, 4}) {
		t.Errorf("states after coalescing: %v, want [2 4]", got)
	}
	push(0, TCPStateUnknown)
	q.putBack(b.items, b.since)
	q.release(b)
	// The put-back key goes first; the newer change of key 0 keeps its place after it.
	if got := states(q.take()); !slices.Equal(got, []uint8{4, 2}) {
		t.Errorf("states after putBack: %v, want [4 2]", got)
	}
}

// TestQueueWakes: a queue that wakes on push signals once for a burst; one for WakeOnFlush
// signals only at flush, and only if something is queued.
func TestQueueWakes(t *testing.T) {
	woken := func(q *queue) bool {
		select {
		case <-q.wake:
			return true
		default:
			return false
		}
	}
	push := func(q *queue, i int) {
		f := testFlow(i)
		fam, _ := flowFamily(&f)
		q.push(change{op: opUpsert, key: packKey(f.Proto, fam, f.Orig), flow: f})
	}
	for _, tc := range []struct {
		pushWakes       bool
		afterPush       bool // woken after a burst of pushes
		afterFlush      bool // woken after the flush that follows
		afterEmptyFlush bool // woken by a flush of an empty queue
	}{
		{pushWakes: true, afterPush: true, afterFlush: true},
		{pushWakes: false, afterPush: false, afterFlush: true},
	} {
		q := newQueue(100, tc.pushWakes)
		for i := range 10 {
			push(q, i)
		}
		if got := woken(q); got != tc.afterPush {
			t.Errorf("pushWakes %v: woken after 10 pushes %v, want %v", tc.pushWakes, got, tc.afterPush)
		}
		q.flush()
		if got := woken(q); got != tc.afterFlush {
			t.Errorf("pushWakes %v: woken after flush %v, want %v", tc.pushWakes, got, tc.afterFlush)
		}
		q.release(q.take())
		q.flush()
		if got := woken(q); got != tc.afterEmptyFlush {
			t.Errorf("pushWakes %v: woken by the flush of an empty queue %v, want %v", tc.pushWakes, got, tc.afterEmptyFlush)
		}
	}
}

// TestSenderWakeOnFlush: with WakeOnFlush, a burst of changes goes out once flushed.
func TestSenderWakeOnFlush(t *testing.T) {
	checkGoroutines(t)
	s, tr, table, r := startFlushedSender(t, func(*SenderConfig) {}, func(*Sender) {})
	for _, f := range flows(10, 100) {
		tr.upsert(s, f)
	}
	tr.delete(s, testFlow(3))
	s.Flush()
	waitConverged(t, tr, table, r)
}

// startFlushedSender runs a Sender with WakeOnFlush, configured further by configure and
// tune, towards a test Receiver, and waits until the Receiver holds the first 10 flows.
func startFlushedSender(t *testing.T, configure func(*SenderConfig), tune func(*Sender)) (*Sender, *truth, *fakeTable, *Receiver) {
	t.Helper()
	table := newFakeTable()
	r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
	startReceiver(t, r)
	tr := newTruth(flows(0, 10)...)
	cfg := testSenderConfig(t, tr, r.Addrs()...)
	cfg.WakeOnFlush = true
	configure(&cfg)
	s := NewSender(cfg)
	tune(s)
	goRun(t, s.Run)
	waitConverged(t, tr, table, r)
	return s, tr, table, r
}

// TestSenderDirectFlush: once the Sender waits with nothing to do, Flush writes a small burst
// itself, on the caller's goroutine (the queue is empty when it returns), and a large one is
// left to Run; both reach the peer.
func TestSenderDirectFlush(t *testing.T) {
	checkGoroutines(t)
	s, tr, table, r := startFlushedSender(t,
		func(cfg *SenderConfig) { cfg.DigestInterval = -1 },
		// Nothing but Flush wakes Run (the test takes far less than readTimeout).
		func(s *Sender) { s.keepalive = time.Hour })
	parked := func() bool {
		s.streamMu.Lock()
		defer s.streamMu.Unlock()
		return s.parked != nil
	}
	for _, tc := range []struct {
		n      int
		direct bool
	}{
		{10, true},
		{directMax, true},
		{directMax + 1, false},
	} {
		waitFor(t, testTimeout, parked, func() string { return "the sender does not wait" })
		from := 1000 * (tc.n + 1)
		for _, f := range flows(from, from+tc.n) {
			tr.upsert(s, f)
		}
		if got := s.writeDirect(); got != tc.direct {
			t.Errorf("burst of %d: written directly %v, want %v", tc.n, got, tc.direct)
		}
		if tc.direct && s.q.len() != 0 {
			t.Errorf("burst of %d: %d changes still queued after a direct write", tc.n, s.q.len())
		}
		s.Flush()
		waitConverged(t, tr, table, r)
	}
}

// queueFlows queues upserts of testFlow(from) to testFlow(to-1).
func queueFlows(q *queue, from, to int) {
	for i := from; i < to; i++ {
		f := testFlow(i)
		fam, _ := flowFamily(&f)
		q.push(change{op: opUpsert, key: packKey(f.Proto, fam, f.Orig), flow: f})
	}
}

// TestQueueDropsBurstBuffers: the buffers of a burst's batch are not kept for reuse, and
// release says so; a small batch's are.
func TestQueueDropsBurstBuffers(t *testing.T) {
	q := newQueue(1<<20, true)
	queueFlows(q, 0, maxSpare+1)
	if !q.release(q.take()) {
		t.Error("release of a burst's batch did not report dropping it")
	}
	if q.spareItems != nil || q.spareIndex != nil {
		t.Errorf("spare buffers of %d items kept after a burst", cap(q.spareItems))
	}
	queueFlows(q, 0, 10)
	if q.release(q.take()) || q.spareIndex == nil {
		t.Error("a small batch's buffers were dropped")
	}
}

// TestSenderFreesBurstMemory: a dropped burst's memory is handed back at once, at most every
// freeEvery; one dropped meanwhile goes back once freeEvery has passed, after the next batch
// or at the next idle tick.
func TestSenderFreesBurstMemory(t *testing.T) {
	s := NewSender(SenderConfig{})
	frees := 0
	s.freeMemory = func() { frees++ }
	for _, step := range []struct {
		what  string
		n     int           // flows in the batch; 0: an idle tick (freeIfDue), no batch
		since time.Duration // set lastFree this long ago first, if not 0
		want  int
	}{
		{"a burst", maxSpare + 1, 0, 1},
		{"a second burst at once", maxSpare + 1, 0, 1},
		{"a small batch at once", 10, 0, 1},
		{"a small batch after freeEvery", 10, freeEvery, 2}, // the second burst's
		{"a small batch after freeEvery again", 10, freeEvery, 2},
		{"a burst after freeEvery", maxSpare + 1, freeEvery, 3},
		{"a burst at once", maxSpare + 1, 0, 3},
		{"an idle tick at once", 0, 0, 3},
		{"an idle tick after freeEvery", 0, freeEvery, 4},
		{"an idle tick after freeEvery again", 0, freeEvery, 4},
	} {
		if step.since != 0 {
			s.lastFree = time.Now().Add(-step.since)
		}
		if step.n > 0 {
			queueFlows(s.q, 0, step.n)
			s.release(s.q.take())
		} else {
			s.freeIfDue()
		}
		if frees != step.want {
			t.Fatalf("after %s: memory handed back %d times, want %d", step.what, frees, step.want)
		}
	}
}

// TestQueueOrder: keys go out in the order they were first queued, each with its latest value,
// and an upsert then delete of a key coalesces to the delete.
func TestQueueOrder(t *testing.T) {
	q := newQueue(100, true)
	push := func(op changeOp, i int, timeout uint32) {
		f := testFlow(i)
		f.Timeout = timeout
		fam, _ := flowFamily(&f)
		q.push(change{op: op, key: packKey(f.Proto, fam, f.Orig), flow: f})
	}
	push(opUpsert, 1, 1)
	push(opUpsert, 2, 1)
	push(opUpsert, 3, 1)
	push(opUpsert, 1, 2)
	push(opDelete, 2, 0)
	b := q.take()
	var got []string
	for _, c := range b.items {
		got = append(got, fmt.Sprintf("%d:%v:%d", c.op, c.flow.Orig.Src, c.flow.Timeout))
	}
	q.release(b)
	want := []string{
		fmt.Sprintf("%d:%v:2", opUpsert, testFlow(1).Orig.Src),
		fmt.Sprintf("%d:%v:0", opDelete, testFlow(2).Orig.Src),
		fmt.Sprintf("%d:%v:1", opUpsert, testFlow(3).Orig.Src),
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("batch %v, want %v", got, want)
	}
	// The released buffers are reused, empty.
	push(opUpsert, 1, 3)
	if b := q.take(); len(b.items) != 1 || len(b.index) != 1 {
		t.Errorf("second batch: %d items, %d index entries; want 1, 1", len(b.items), len(b.index))
	}
	// putBack requeues unsent changes ahead of newer ones, unless a newer one has the same key.
	push(opUpsert, 4, 1)
	push(opUpsert, 5, 1)
	b = q.take()
	push(opUpsert, 6, 1)
	push(opUpsert, 5, 2)
	q.putBack(b.items, b.since)
	q.release(b)
	got = nil
	for _, c := range q.take().items {
		got = append(got, fmt.Sprintf("%v:%d", c.flow.Orig.Src, c.flow.Timeout))
	}
	want = []string{
		fmt.Sprintf("%v:1", testFlow(4).Orig.Src),
		fmt.Sprintf("%v:1", testFlow(6).Orig.Src),
		fmt.Sprintf("%v:2", testFlow(5).Orig.Src),
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after putBack %v, want %v", got, want)
	}
}

// TestResync: Resync sends a second full sync on the same connection.
func TestResync(t *testing.T) {
	checkGoroutines(t)
	tr, table, r, s := syncedPair(t, 100)
	tr.remove(testFlow(0).Key()) // an event lost in an overrun
	s.Resync()
	waitFor(t, testTimeout, func() bool { return r.Stats().Syncs == 2 }, func() string { return fmt.Sprintf("%+v", r.Stats()) })
	waitConverged(t, tr, table, r)
	if st := r.Stats(); st.StaleDeleted != 1 {
		t.Errorf("stale deleted %d, want 1", st.StaleDeleted)
	}
	if st := s.Stats(); st.Syncs != 2 || st.LastError != nil {
		t.Errorf("sender stats %+v: want 2 syncs on one connection", st)
	}
}

// TestInjectErrorDoesNotStopStream: a flow the table refuses is counted and skipped; the rest
// arrives.
func TestInjectErrorDoesNotStopStream(t *testing.T) {
	checkGoroutines(t)
	table := newFakeTable()
	errNope := errors.New("nope")
	table.fail = func(f Flow) error {
		if f.Timeout%10 == 3 {
			return errNope
		}
		return nil
	}
	r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
	startReceiver(t, r)
	tr := newTruth(flows(0, 100)...)
	s := newTestSender(t, tr, r.Addrs()...)
	goRun(t, s.Run)

	want := tr.get()
	for k, f := range want {
		if f.Timeout%10 == 3 {
			delete(want, k)
		}
	}
	waitFor(t, testTimeout, func() bool { return r.Stats().Syncs == 1 }, func() string { return "no sync" })
	if diff := flowsDiff(want, table.snapshot()); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
	st := r.Stats()
	if st.InjectErrors != 10 || st.Applied != 90 || st.Flows != 90 || !errors.Is(st.LastError, errNope) {
		t.Errorf("receiver stats %+v: want 10 inject errors, 90 applied and held, last error nope", st)
	}
}

// TestSenderRejectsInvalidFlow: a flow with mixed address families is counted, not sent.
func TestSenderRejectsInvalidFlow(t *testing.T) {
	tr := newTruth()
	s := newTestSender(t, tr, freePort(t, "127.0.0.1"))
	f := testFlow(2)
	f.Reply.Src = testFlow(3).Reply.Src
	s.Upsert(f)
	s.Delete(Flow{})
	if st := s.Stats(); st.Invalid != 2 || st.QueueLen != 0 {
		t.Errorf("stats %+v: want 2 invalid, nothing queued", st)
	}
}

// rawClient is a hand-driven sender.
type rawClient struct {
	t testing.TB
	net.Conn
}

func dialRaw(t testing.TB, addr netip.AddrPort) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, Conn: c}
}

func (c *rawClient) send(frames ...frame) {
	c.t.Helper()
	var b []byte
	for i := range frames {
		b = append(b, mustAppend(c.t, &frames[i])...)
	}
	if _, err := c.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// waitClosed waits for the receiver to close the connection.
func (c *rawClient) waitClosed() {
	c.t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.Copy(io.Discard, c); err != nil {
		c.t.Fatalf("connection not closed by the receiver: %v", err)
	}
}

func helloFrame(device string) frame {
	return frame{typ: frameHello, hello: hello{version: protocolVersion, device: device}}
}

// TestReceiverReplacesConnection: a second sender connection replaces the first.
func TestReceiverReplacesConnection(t *testing.T) {
	checkGoroutines(t)
	table := newFakeTable()
	r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
	startReceiver(t, r)
	a := dialRaw(t, r.Addrs()[0])
	a.send(helloFrame("a"))
	waitFor(t, testTimeout, func() bool { return r.Stats().PeerDevice == "a" }, func() string { return "a not connected" })
	b := dialRaw(t, r.Addrs()[0])
	b.send(helloFrame("b"))
	a.waitClosed()
	waitFor(t, testTimeout, func() bool { st := r.Stats(); return st.PeerDevice == "b" && st.Connected },
		func() string { return fmt.Sprintf("%+v", r.Stats()) })
	if got, want := r.Stats().PeerAddr.String(), b.LocalAddr().String(); got != want {
		t.Errorf("peer address %s, want %s", got, want)
	}
}

// TestReceiverDropsSilentPeer: a connection silent for the read timeout is dropped.
func TestReceiverDropsSilentPeer(t *testing.T) {
	checkGoroutines(t)
	r := newTestReceiver(t, newFakeTable(), freePort(t, "127.0.0.1"))
	r.readTimeout = 200 * time.Millisecond
	startReceiver(t, r)
	c := dialRaw(t, r.Addrs()[0])
	c.send(helloFrame("a"))
	start := time.Now()
	c.waitClosed()
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("dropped after %v, before the read timeout", d)
	}
	waitFor(t, testTimeout, func() bool { return !r.Stats().Connected }, func() string { return "still connected" })
	if err := r.Stats().LastError; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("last error %v, want a timeout", err)
	}
}

// TestSenderKeepsIdleConnection: an idle sender's keepalives hold the connection open past the
// receiver's read timeout.
func TestSenderKeepsIdleConnection(t *testing.T) {
	checkGoroutines(t)
	table := newFakeTable()
	r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
	r.readTimeout = 300 * time.Millisecond
	startReceiver(t, r)
	tr := newTruth(flows(0, 10)...)
	s := newTestSender(t, tr, r.Addrs()...)
	s.keepalive = 50 * time.Millisecond
	goRun(t, s.Run)
	waitConverged(t, tr, table, r)
	time.Sleep(time.Second)
	if st := s.Stats(); st.Syncs != 1 || !st.Connected {
		t.Errorf("sender stats %+v: want still on the first connection", st)
	}
	if st := r.Stats(); st.Frames < 5 {
		t.Errorf("receiver got %d frames, want keepalives", st.Frames)
	}
}

// TestReceiverRejectsBadStreams: garbage, frames before the hello, a second hello and a damaged
// sync close the connection with an error, and a damaged sync deletes nothing.
func TestReceiverRejectsBadStreams(t *testing.T) {
	checkGoroutines(t)
	table := newFakeTable()
	r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
	startReceiver(t, r)
	held := frame{typ: frameUpsert, flow: testFlow(1)}
	c := dialRaw(t, r.Addrs()[0])
	c.send(helloFrame("a"), held)
	waitFor(t, testTimeout, func() bool { return r.Flows() == 1 }, func() string { return "flow not held" })
	c.Close()

	tests := []struct {
		name   string
		frames []frame
		raw    []byte
		want   error
	}{
		{name: "garbage", raw: []byte("SSH-2.0-OpenSSH_9.6\r\n"), want: ErrMalformed},
		{name: "no hello", frames: []frame{{typ: frameKeepalive}}, want: ErrProtocol},
		{name: "second hello", frames: []frame{helloFrame("a"), helloFrame("a")}, want: ErrProtocol},
		{name: "sync-end without sync-begin", frames: []frame{helloFrame("a"), {typ: frameSyncEnd, syncID: 1}}, want: ErrProtocol},
		{name: "sync-end with another id", frames: []frame{helloFrame("a"), {typ: frameSyncBegin, syncID: 1}, {typ: frameSyncEnd, syncID: 2}}, want: ErrProtocol},
		{name: "sync-end with a wrong count", frames: []frame{helloFrame("a"), {typ: frameSyncBegin, syncID: 1},
			{typ: frameUpsert, flow: testFlow(2)}, {typ: frameSyncEnd, syncID: 1, count: 5}}, want: ErrProtocol},
		{name: "digest before any sync", frames: []frame{helloFrame("a"), {typ: frameDigest, digest: digestMsg{id: 1}}}, want: ErrProtocol},
		{name: "digest during a sync", frames: []frame{helloFrame("a"), {typ: frameSyncBegin, syncID: 1}, held,
			{typ: frameUpsert, flow: testFlow(2)}, {typ: frameSyncEnd, syncID: 1, count: 2}, {typ: frameSyncBegin, syncID: 2}, {typ: frameDigest, digest: digestMsg{id: 1}}}, want: ErrProtocol},
		{name: "back-channel frame from the sender", frames: []frame{helloFrame("a"), {typ: frameResyncRequest, reason: reasonDigest}}, want: ErrProtocol},
		{name: "future version", raw: func() []byte {
			b := mustAppend(t, &frame{typ: frameHello, hello: hello{version: protocolVersion}})
			b[7] = 9
			return b
		}(), want: ErrVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, r.Addrs()[0])
			if tt.raw != nil {
				if _, err := c.Write(tt.raw); err != nil {
					t.Fatal(err)
				}
			} else {
				c.send(tt.frames...)
			}
			c.waitClosed()
			waitFor(t, testTimeout, func() bool { return errors.Is(r.Stats().LastError, tt.want) },
				func() string { return fmt.Sprintf("last error %v, want %v", r.Stats().LastError, tt.want) })
		})
	}
	if _, ok := table.snapshot()[testFlow(1).Key()]; !ok || r.Stats().StaleDeleted != 0 {
		t.Errorf("a damaged sync deleted a held flow")
	}
}

// TestReceiverBindRetry: an address that cannot be bound yet (here: the port is taken, as good
// as the mirror address not being configured) is retried until it can.
func TestReceiverBindRetry(t *testing.T) {
	checkGoroutines(t)
	blocker, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Close()
	addr := blocker.Addr().(*net.TCPAddr).AddrPort()
	r := newTestReceiver(t, newFakeTable(), addr)
	r.bindRetry = 20 * time.Millisecond
	goRun(t, r.Run)
	time.Sleep(100 * time.Millisecond)
	if a := r.Addrs(); len(a) != 0 {
		t.Fatalf("listening on %v while the address is taken", a)
	}
	blocker.Close()
	waitFor(t, testTimeout, func() bool { return len(r.Addrs()) == 1 }, func() string { return "never bound" })
}

// TestForget: after Forget the receiver holds nothing, and a later sync deletes nothing it
// injected before.
func TestForget(t *testing.T) {
	checkGoroutines(t)
	tr, table, r, s := syncedPair(t, 50)
	r.Forget()
	if n := r.Flows(); n != 0 {
		t.Fatalf("%d flows held after Forget", n)
	}
	for i := range 10 {
		tr.remove(testFlow(i).Key())
	}
	s.Resync()
	waitFor(t, testTimeout, func() bool { return r.Stats().Syncs == 2 }, func() string { return "no second sync" })
	if n := len(table.snapshot()); n != 50 {
		t.Errorf("table holds %d flows, want all 50 (forgotten entries are ours now)", n)
	}
}

// TestRunConfigErrors: an unusable configuration fails at once.
func TestRunConfigErrors(t *testing.T) {
	ctx := context.Background()
	if err := NewSender(SenderConfig{Snapshot: newTruth().Snapshot}).Run(ctx); err == nil {
		t.Error("sender without peers: no error")
	}
	if err := NewSender(SenderConfig{Peers: []netip.AddrPort{freePort(t, "127.0.0.1")}}).Run(ctx); err == nil {
		t.Error("sender without snapshot: no error")
	}
	if err := NewReceiver(ReceiverConfig{Table: newFakeTable()}).Run(ctx); err == nil {
		t.Error("receiver without addresses: no error")
	}
	if err := NewReceiver(ReceiverConfig{Listen: []netip.AddrPort{freePort(t, "127.0.0.1")}}).Run(ctx); err == nil {
		t.Error("receiver without table: no error")
	}
}
