package mirror

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestBatchInjection: consecutive upserts and deletes reach a BatchWriter in runs of at most
// maxBatch, one change per key (the latest), the deletes of a run first; a sync frame cuts a
// run, so that the table sees the stream's order where it matters.
func TestBatchInjection(t *testing.T) {
	checkGoroutines(t)
	table := newBatchTable()
	table.log = true
	r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
	startReceiver(t, r)
	c := dialRaw(t, r.Addrs()[0])

	at := func(i int, timeout uint32) frame {
		f := testFlow(i)
		f.Timeout = timeout
		return frame{typ: frameUpsert, flow: f}
	}
	del := func(i int) frame {
		f := testFlow(i)
		return frame{typ: frameDelete, flow: Flow{Proto: f.Proto, Orig: f.Orig}}
	}
	// One write, so that the Receiver finds every frame buffered.
	c.send(helloFrame("a"), at(1, 1), at(2, 1), at(1, 2), frame{typ: frameKeepalive}, del(2), at(2, 3), at(3, 1), at(4, 1))
	waitFor(t, testTimeout, func() bool { return r.Stats().Upserts == 6 && r.Flows() == 4 },
		func() string { return fmt.Sprintf("%+v", r.Stats()) })
	// Then 4 is deleted, 5 (never held) too, and 6 comes: the deletes go first.
	c.send(del(4), at(6, 1), del(5))
	waitFor(t, testTimeout, func() bool { return r.Stats().Upserts == 7 && r.Flows() == 4 },
		func() string { return fmt.Sprintf("%+v", r.Stats()) })
	want := []string{
		fmt.Sprintf("upsert %v/2", testFlow(1).Orig.Src), // the second upsert of 1 replaced the first
		fmt.Sprintf("upsert %v/3", testFlow(2).Orig.Src), // upsert, delete, upsert: the last
		fmt.Sprintf("upsert %v/1", testFlow(3).Orig.Src),
		fmt.Sprintf("upsert %v/1", testFlow(4).Orig.Src),
		"deletes 2",
		fmt.Sprintf("delete %v", testFlow(4).Orig.Src),
		fmt.Sprintf("delete %v", testFlow(5).Orig.Src),
		fmt.Sprintf("upsert %v/1", testFlow(6).Orig.Src),
	}
	if got := table.callLog(); !slices.Equal(got, want) {
		t.Errorf("table calls\n%q\nwant\n%q", got, want)
	}
	if got := table.batchSizes(); !slices.Equal(got, []int{4, 1}) {
		t.Errorf("inject batches %v, want [4 1]", got)
	}
	if st := r.Stats(); st.Coalesced != 3 || st.Batches != 2 || st.Applied != 7 || st.Deletes != 3 || st.LastApplied.IsZero() {
		t.Errorf("receiver stats %+v: want 3 coalesced, 2 batches, 7 applied, 3 deletes", st)
	}

	// A long run is cut at maxBatch.
	var frames []frame
	for i := range 1000 {
		frames = append(frames, at(100+i, 1))
	}
	c.send(frames...)
	waitFor(t, testTimeout, func() bool { return r.Flows() == 1004 }, func() string { return fmt.Sprintf("%+v", r.Stats()) })
	sizes := table.batchSizes()[2:]
	total := 0
	for _, n := range sizes {
		total += n
		if n > maxBatch {
			t.Errorf("a batch of %d", n)
		}
	}
	if total != 1000 || !slices.Contains(sizes, maxBatch) {
		t.Errorf("batches %v: want 1000 flows in batches of at most %d, one full", sizes, maxBatch)
	}
}

// gatedReceiver runs a Receiver whose table logs its calls and holds each InjectBatch until
// the test sends on table.gate, and connects a raw client to it.
func gatedReceiver(t *testing.T) (*batchTable, *Receiver, *rawClient) {
	t.Helper()
	table := newBatchTable()
	table.log = true
	table.gate = make(chan struct{})
	r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
	startReceiver(t, r)
	t.Cleanup(func() { close(table.gate) }) // before the Receiver stops, should the test fail
	return table, r, dialRaw(t, r.Addrs()[0])
}

// TestBatchPipeline: while a full run of changes is being applied, the Receiver queues the
// next for the writer and decodes a third; runs are applied one at a time and in order, so
// a fourth waits for the first.
func TestBatchPipeline(t *testing.T) {
	checkGoroutines(t)
	table, r, c := gatedReceiver(t)

	const n = 4 * maxBatch
	frames := []frame{helloFrame("a")}
	var want []string
	for i := range n {
		f := testFlow(i)
		frames = append(frames, frame{typ: frameUpsert, flow: f})
		want = append(want, fmt.Sprintf("upsert %v/%d", f.Orig.Src, f.Timeout))
	}
	c.send(frames...)
	// The first run is held in the table; the second is queued for the writer and the
	// third decoded meanwhile, and no more (the fourth waits for a buffer). A run may be cut
	// short, where a read found the socket empty for a moment: that part goes to the writer
	// as a run of its own (TestBatchPipelineAcrossReads), so fewer may be decoded by then.
	var decoded uint64
	changed := time.Now()
	waitFor(t, testTimeout, func() bool {
		if n := r.Stats().Upserts; n != decoded {
			decoded, changed = n, time.Now()
		}
		return decoded > 0 && time.Since(changed) >= 50*time.Millisecond
	}, func() string { return fmt.Sprintf("%+v", r.Stats()) })
	if decoded > 3*maxBatch {
		t.Errorf("with the first run held: %d upserts decoded, want at most %d", decoded, 3*maxBatch)
	}
	if got := table.batchSizes(); len(got) != 1 || got[0] > maxBatch {
		t.Errorf("with the first run held: batches %v, want one of at most %d", got, maxBatch)
	}
	// Let every run through, however many the reads made.
	waitFor(t, testTimeout, func() bool {
		select {
		case table.gate <- struct{}{}:
		default:
		}
		return r.Flows() == n
	}, func() string { return fmt.Sprintf("%+v", r.Stats()) })
	if got := table.callLog(); !slices.Equal(got, want) {
		t.Errorf("flows applied out of order:\n%q", got)
	}
	table.mu.Lock()
	defer table.mu.Unlock()
	if table.maxInFlight != 1 {
		t.Errorf("%d runs applied at once, want 1", table.maxInFlight)
	}
}

// TestBatchPipelineAcrossReads: a run cut short because the stream has nothing more to read
// yet goes to the writer without the Receiver waiting for it, so decoding goes on while the
// kernel is busy (a full sync's reads find the buffer empty every few thousand flows). A run
// with a key of a run being written waits for that one before it is booked.
func TestBatchPipelineAcrossReads(t *testing.T) {
	checkGoroutines(t)
	table, r, c := gatedReceiver(t)

	at := func(i int, timeout uint32) frame {
		f := testFlow(i)
		f.Timeout = timeout
		return frame{typ: frameUpsert, flow: f}
	}
	run := func(from, to int, timeout uint32) []frame {
		var frames []frame
		for i := from; i < to; i++ {
			frames = append(frames, at(i, timeout))
		}
		return frames
	}
	stats := func() string { return fmt.Sprintf("%+v, batches %v", r.Stats(), table.batchSizes()) }

	// Run A, a full one, reaches the table and is held there.
	const a = maxBatch
	c.send(append([]frame{helloFrame("a")}, run(0, a, 1)...)...)
	waitFor(t, testTimeout, func() bool { return len(table.batchSizes()) == 1 }, stats)
	// B, and C, which updates a key of A, are decoded meanwhile; C waits for A to be booked,
	// so D is not decoded yet.
	c.send(run(a, a+10, 1)...)
	waitFor(t, testTimeout, func() bool { return r.Stats().Upserts == a+10 }, stats)
	c.send(append([]frame{at(0, 2)}, run(a+10, a+19, 1)...)...)
	waitFor(t, testTimeout, func() bool { return r.Stats().Upserts == a+20 }, stats)
	c.send(run(a+20, a+30, 1)...)
	time.Sleep(10 * time.Millisecond)
	if got := r.Stats().Upserts; got != a+20 {
		t.Errorf("with run A held and run C waiting for it: %d upserts decoded, want %d", got, a+20)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case table.gate <- struct{}{}:
			case <-time.After(100 * time.Millisecond):
				return // every run written
			}
		}
	}()
	waitFor(t, testTimeout, func() bool { return r.Stats().Applied == a+30 }, stats)
	<-done
	var want []string
	for _, f := range slices.Concat(run(0, a+10, 1), []frame{at(0, 2)}, run(a+10, a+19, 1), run(a+20, a+30, 1)) {
		want = append(want, fmt.Sprintf("upsert %v/%d", f.flow.Orig.Src, f.flow.Timeout))
	}
	if got := table.callLog(); !slices.Equal(got, want) {
		t.Errorf("flows applied out of order:\n%q\nwant\n%q", got, want)
	}
	if got := table.snapshot()[testFlow(0).Key()].Timeout; got != 2 {
		t.Errorf("flow 0 has timeout %d, want 2 (run C's)", got)
	}
	if r.Flows() != a+29 {
		t.Errorf("receiver holds %d flows, want %d", r.Flows(), a+29)
	}
}

// TestBatchInjectErrors: InjectBatch's errors count per flow; a flow that failed is not held.
func TestBatchInjectErrors(t *testing.T) {
	checkGoroutines(t)
	table := newBatchTable()
	errNope := errors.New("nope")
	table.fail = func(f Flow) error {
		if f.Timeout%10 == 3 {
			return errNope
		}
		return nil
	}
	r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
	startReceiver(t, r)
	tr := newTruth(flows(0, 1000)...)
	s := newTestSender(t, tr, r.Addrs()...)
	goRun(t, s.Run)
	waitFor(t, testTimeout, func() bool { return r.Stats().Syncs == 1 }, func() string { return "no sync" })
	want := tr.get()
	for k, f := range want {
		if f.Timeout%10 == 3 {
			delete(want, k)
		}
	}
	if diff := flowsDiff(want, table.snapshot()); diff != "" {
		t.Errorf("table (-want +got):\n%s", diff)
	}
	st := r.Stats()
	if st.InjectErrors != 100 || st.Applied != 900 || st.Flows != 900 || !errors.Is(st.LastError, errNope) || st.Batches == 0 {
		t.Errorf("receiver stats %+v: want 100 inject errors, 900 applied and held, last error nope", st)
	}
}

// TestPlainTableMixedBatch: a table without BatchWriter gets a run's deletes and upserts one
// by one, and their errors are counted apart: a failed delete is a delete error (and the key
// is forgotten, as the peer no longer has it), not an inject error.
func TestPlainTableMixedBatch(t *testing.T) {
	checkGoroutines(t)
	table := newFakeTable()
	errNope := errors.New("nope")
	table.failDelete = func(f Flow) error {
		if f.Key() == testFlow(1).Key() {
			return errNope
		}
		return nil
	}
	r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
	startReceiver(t, r)
	c := dialRaw(t, r.Addrs()[0])
	up := func(i int) frame { return frame{typ: frameUpsert, flow: testFlow(i)} }
	del := func(i int) frame {
		f := testFlow(i)
		return frame{typ: frameDelete, flow: Flow{Proto: f.Proto, Orig: f.Orig}}
	}
	c.send(helloFrame("a"), up(1), up(2))
	waitFor(t, testTimeout, func() bool { return r.Flows() == 2 }, func() string { return fmt.Sprintf("%+v", r.Stats()) })
	c.send(del(1), up(3)) // one write: one run
	waitFor(t, testTimeout, func() bool { return r.Stats().Upserts == 3 && r.Flows() == 2 },
		func() string { return fmt.Sprintf("%+v", r.Stats()) })
	if st := r.Stats(); st.DeleteErrors != 1 || st.InjectErrors != 0 || !errors.Is(st.LastError, errNope) {
		t.Errorf("receiver stats %+v: want 1 delete error, no inject error, the refusal as the last error", st)
	}
}
