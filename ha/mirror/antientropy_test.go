package mirror

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// aePair is a Sender and Receiver with digests every interval; the Receiver checks its
// (fake) kernel table when withSnapshot.
type aePair struct {
	tr    *truth
	table *batchTable
	s     *Sender
	r     *Receiver
}

func newAEPair(t *testing.T, tr *truth, interval time.Duration, withSnapshot bool) *aePair {
	t.Helper()
	p := &aePair{tr: tr, table: newBatchTable()}
	cfg := ReceiverConfig{Listen: []netip.AddrPort{freePort(t, "127.0.0.1")}, Table: p.table, Logger: testLogger(t)}
	if withSnapshot {
		cfg.Snapshot = p.table.Snapshot
	}
	p.r = NewReceiver(cfg)
	startReceiver(t, p.r)
	p.s = NewSender(SenderConfig{Device: "bigip-a", Peers: p.r.Addrs(), Snapshot: tr.Snapshot, Logger: testLogger(t),
		RetryInterval: 20 * time.Millisecond, DigestInterval: interval})
	goRun(t, p.s.Run)
	waitConverged(t, tr, p.table.fakeTable, p.r)
	// A clean baseline: a digest has matched (and the kernel been checked) since the sync.
	waitFor(t, testTimeout, func() bool {
		st := p.r.Stats()
		return !st.LastDigestMatch.IsZero() && (!withSnapshot || st.KernelChecks > 0)
	}, func() string { return fmt.Sprintf("no clean digest: %+v", p.r.Stats()) })
	return p
}

// TestAntiEntropyRepairs: drift in the standby's kernel table, or between the active's table
// and what the Receiver holds, is detected and repaired within two digest intervals, leaving
// the standby with exactly the active's flows.
func TestAntiEntropyRepairs(t *testing.T) {
	const interval = 400 * time.Millisecond
	corrupt := func(f Flow) Flow {
		f.Reply.Src = netip.AddrPortFrom(netip.MustParseAddr("172.16.9.9"), 9999)
		return f
	}
	tests := []struct {
		name     string
		snapshot bool // the Receiver checks its kernel table
		drift    func(p *aePair)
		want     func(st ReceiverStats) bool
	}{
		{name: "entries deleted behind the receiver's back", snapshot: true, drift: func(p *aePair) {
			for i := range 5 {
				p.table.drop(testFlow(i * 7).Key())
			}
		}, want: func(st ReceiverStats) bool { return st.ResyncsRequested == 1 && st.Repairs == 1 }},
		{name: "stray entry in the kernel", snapshot: true, drift: func(p *aePair) {
			p.table.put(testFlow(5000))
		}, want: func(st ReceiverStats) bool {
			return st.StrayDeleted == 1 && st.ResyncsRequested == 0 && st.Repairs == 1
		}},
		{name: "reply tuple corrupted in the kernel", snapshot: true, drift: func(p *aePair) {
			p.table.put(corrupt(testFlow(10)))
		}, want: func(st ReceiverStats) bool { return st.ResyncsRequested == 1 && st.Repairs == 1 }},
		{name: "all three at once", snapshot: true, drift: func(p *aePair) {
			p.table.drop(testFlow(3).Key())
			p.table.put(testFlow(5001))
			p.table.put(corrupt(testFlow(12)))
		}, want: func(st ReceiverStats) bool { return st.StrayDeleted == 1 && st.ResyncsRequested == 1 }},
		{name: "flow missing on the standby", drift: func(p *aePair) {
			p.tr.add(testFlow(5002)) // its event was lost
		}, want: func(st ReceiverStats) bool { return st.ResyncsRequested == 1 && st.Repairs == 1 }},
		{name: "stale flow on the standby", drift: func(p *aePair) {
			p.tr.remove(testFlow(20).Key()) // its event was lost
		}, want: func(st ReceiverStats) bool { return st.ResyncsRequested == 1 && st.StaleDeleted == 1 }},
		{name: "reply tuple changed on the active", drift: func(p *aePair) {
			p.tr.add(corrupt(testFlow(30)))
		}, want: func(st ReceiverStats) bool { return st.ResyncsRequested == 1 && st.Repairs == 1 }},
		{name: "kernel drift without a kernel view goes unseen", drift: func(p *aePair) {
			p.table.put(testFlow(5003)) // not held: the Receiver cannot know
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			p := newAEPair(t, newTruth(flows(0, 200)...), interval, tt.snapshot)
			before := p.r.Stats()
			tt.drift(p)
			start := time.Now()
			if tt.want == nil {
				time.Sleep(3 * interval)
				if st := p.r.Stats(); st.DriftDetected != before.DriftDetected || st.ResyncsRequested != 0 {
					t.Errorf("receiver stats %+v: want no drift", st)
				}
				return
			}
			waitFor(t, testTimeout, func() bool {
				want := p.tr.get()
				return flowsDiff(want, p.table.snapshot()) == "" && p.r.Flows() == len(want) && p.r.Stats().DriftDetected > 0
			}, func() string {
				return fmt.Sprintf("not repaired: %+v; table (-want +got):\n%s", p.r.Stats(), flowsDiff(p.tr.get(), p.table.snapshot()))
			})
			took := time.Since(start)
			t.Logf("repaired in %v (digest interval %v)", took, interval)
			// About one interval: the next digest, its confirmation, and a full sync. Two
			// intervals is the promise; the rest is room for a loaded machine running -race.
			if took > 2*interval+500*time.Millisecond {
				t.Errorf("repaired in %v, more than two digest intervals", took)
			}
			// And it stays repaired: the next digest matches, and nothing more is requested.
			repaired := time.Now()
			waitFor(t, testTimeout, func() bool { return p.r.Stats().LastDigestMatch.After(repaired) },
				func() string { return fmt.Sprintf("no matching digest after the repair: %+v", p.r.Stats()) })
			st := p.r.Stats()
			if !tt.want(st) || st.LastDrift.Before(start) {
				t.Errorf("receiver stats %+v", st)
			}
			// The Sender counts a digest once flushed, which may be after the Receiver did.
			waitFor(t, testTimeout, func() bool { return p.s.Stats().DigestsSent >= st.DigestsChecked },
				func() string { return fmt.Sprintf("sender stats %+v, receiver stats %+v", p.s.Stats(), st) })
			if ss := p.s.Stats(); ss.ResyncsRequested != st.ResyncsRequested {
				t.Errorf("sender stats %+v, receiver stats %+v", ss, st)
			}
		})
	}
}

// churnTruth is an active's table whose dump is not atomic, as the kernel's is not: it is read
// bucket by bucket while changes go on, each change queued on the Sender under its bucket's
// lock as the kernel's event follows its change.
type churnTruth struct {
	buckets   [64]churnBucket
	dumpPause time.Duration // between buckets, to stretch a dump over many changes
}

type churnBucket struct {
	mu    sync.Mutex
	flows map[Key]Flow
}

func newChurnTruth(flows ...Flow) *churnTruth {
	ct := &churnTruth{}
	for i := range ct.buckets {
		ct.buckets[i].flows = make(map[Key]Flow)
	}
	for _, f := range flows {
		ct.bucket(f.Key()).flows[f.Key()] = f
	}
	return ct
}

func (ct *churnTruth) bucket(k Key) *churnBucket {
	return &ct.buckets[int(k.Orig.Src.Port())%len(ct.buckets)]
}

func (ct *churnTruth) upsert(s *Sender, f Flow) {
	b := ct.bucket(f.Key())
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flows[f.Key()] = f
	s.Upsert(f)
}

func (ct *churnTruth) delete(s *Sender, k Key) bool {
	b := ct.bucket(k)
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.flows[k]; !ok {
		return false
	}
	delete(b.flows, k)
	s.Delete(Flow{Proto: k.Proto, Orig: k.Orig})
	return true
}

func (ct *churnTruth) Snapshot(ctx context.Context, fn func(Flow) error) error {
	for i := range ct.buckets {
		b := &ct.buckets[i]
		b.mu.Lock()
		flows := make([]Flow, 0, len(b.flows))
		for _, f := range b.flows {
			flows = append(flows, f)
		}
		b.mu.Unlock()
		for _, f := range flows {
			if err := fn(f); err != nil {
				return err
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(ct.dumpPause)
	}
	return nil
}

func (ct *churnTruth) get() map[Key]Flow {
	out := make(map[Key]Flow)
	for i := range ct.buckets {
		b := &ct.buckets[i]
		b.mu.Lock()
		maps.Copy(out, b.flows)
		b.mu.Unlock()
	}
	return out
}

// TestAntiEntropyChurn: ~1000 changes/s (new flows, updates, deletes, NAT rebinds) while
// digests go every 100ms, each dump taking a third of that: no digest mismatches at all, so
// no repairs, on either the stream's or the kernel table's side.
func TestAntiEntropyChurn(t *testing.T) {
	checkGoroutines(t)
	const (
		interval = 100 * time.Millisecond
		duration = 3 * time.Second
		perTick  = 10 // changes per 10ms
	)
	ct := newChurnTruth(flows(0, 2000)...)
	ct.dumpPause = 500 * time.Microsecond
	table := newBatchTable()
	r := NewReceiver(ReceiverConfig{Listen: []netip.AddrPort{freePort(t, "127.0.0.1")}, Table: table,
		Snapshot: table.Snapshot, Logger: testLogger(t)})
	startReceiver(t, r)
	s := NewSender(SenderConfig{Peers: r.Addrs(), Snapshot: ct.Snapshot, Logger: testLogger(t),
		RetryInterval: 20 * time.Millisecond, DigestInterval: interval})
	s.digestCostRatio = 0 // digests every interval, however long their dumps take
	goRun(t, s.Run)
	waitFor(t, testTimeout, func() bool { return r.Stats().Syncs == 1 }, func() string { return "no sync" })

	rnd := rand.New(rand.NewPCG(7, 7))
	next := 2000
	live := make([]Key, 0, 4000)
	for i := range 2000 {
		live = append(live, testFlow(i).Key())
	}
	changes := 0
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(duration); time.Now().Before(end); {
		<-tick.C
		for range perTick {
			changes++
			switch n := rnd.IntN(20); {
			case n < 8 || len(live) < 100: // a new connection
				f := testFlow(next)
				next++
				ct.upsert(s, f)
				live = append(live, f.Key())
			case n < 14: // a state change: same NAT binding
				i := rnd.IntN(len(live))
				f := testFlow(keyIndex(live[i]))
				f.Timeout, f.TCPState = rnd.Uint32(), uint8(rnd.IntN(9)+1)
				ct.upsert(s, f)
			case n < 19: // a connection ends
				i := rnd.IntN(len(live))
				ct.delete(s, live[i])
				live[i] = live[len(live)-1]
				live = live[:len(live)-1]
			default: // destroyed and created again with another binding, as one coalesced upsert
				i := rnd.IntN(len(live))
				f := testFlow(keyIndex(live[i]))
				f.Reply.Src = netip.AddrPortFrom(f.Reply.Src.Addr(), uint16(rnd.IntN(60000)+1))
				ct.upsert(s, f)
			}
		}
	}
	t.Logf("%d changes in %v", changes, duration)
	waitFor(t, testTimeout, func() bool {
		want := ct.get()
		return flowsDiff(want, table.snapshot()) == "" && r.Flows() == len(want)
	}, func() string { return fmt.Sprintf("not converged:\n%s", flowsDiff(ct.get(), table.snapshot())) })
	// One more digest and kernel check after the churn.
	n := r.Stats().KernelChecks
	waitFor(t, testTimeout, func() bool { return r.Stats().KernelChecks > n+1 }, func() string { return "no more checks" })

	st, ss := r.Stats(), s.Stats()
	t.Logf("digests checked %d, kernel checks %d, mismatches %d, drift %d", st.DigestsChecked, st.KernelChecks,
		st.DigestMismatches, st.DriftDetected)
	if st.DigestsChecked < 8 || st.KernelChecks < 8 {
		t.Errorf("receiver stats %+v: want at least 8 digests and kernel checks", st)
	}
	if st.DigestMismatches != 0 || st.DriftDetected != 0 || st.ResyncsRequested != 0 || st.StrayDeleted != 0 {
		t.Errorf("receiver stats %+v: want no mismatch, no drift, no repair", st)
	}
	if ss.Syncs != 1 || ss.ResyncsRequested != 0 || ss.DigestRequests != 0 {
		t.Errorf("sender stats %+v: want one sync and no requests", ss)
	}
}

// keyIndex inverts testFlow for the flows the churn test makes (the source port is 1024+i,
// below 60000 flows).
func keyIndex(k Key) int { return int(k.Orig.Src.Port()) - 1024 }

// TestAntiEntropyBackoff: drift that a full sync cannot cure (the standby's kernel refuses one
// flow) is reported at every digest, but asks for a full sync ever less often.
func TestAntiEntropyBackoff(t *testing.T) {
	checkGoroutines(t)
	table := newBatchTable()
	bad := testFlow(3)
	errRefused := errors.New("refused")
	table.fail = func(f Flow) error {
		if f.Key() == bad.Key() {
			return errRefused
		}
		return nil
	}
	r := NewReceiver(ReceiverConfig{Listen: []netip.AddrPort{freePort(t, "127.0.0.1")}, Table: table, Logger: testLogger(t)})
	r.resyncGapMin = 300 * time.Millisecond
	startReceiver(t, r)
	tr := newTruth(flows(0, 50)...)
	s := NewSender(SenderConfig{Peers: r.Addrs(), Snapshot: tr.Snapshot, Logger: testLogger(t),
		RetryInterval: 20 * time.Millisecond, DigestInterval: 50 * time.Millisecond})
	goRun(t, s.Run)
	time.Sleep(1500 * time.Millisecond)
	// Requests at about 0.1s, then 0.3s and 0.6s later: at most 3 in 1.5s, where an
	// unbounded receiver would have asked some 15 times.
	st := r.Stats()
	if st.ResyncsRequested < 2 || st.ResyncsRequested > 3 || st.DriftDetected < 4 {
		t.Errorf("receiver stats %+v: want 2 or 3 resync requests and at least 4 drifts", st)
	}
	if st.Flows != 49 || !errors.Is(st.LastError, errRefused) {
		t.Errorf("receiver stats %+v: want 49 flows and the refusal as the last error", st)
	}
}

// readFrame reads the next frame that is not a keepalive.
func readFrame(t *testing.T, c net.Conn, dec *decoder) frame {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	for {
		var fr frame
		if err := dec.next(&fr); err != nil {
			t.Fatalf("read frame: %v", err)
		}
		if fr.typ != frameKeepalive {
			return fr
		}
	}
}

// rawPeer starts a Receiver and connects to it as a hand-driven Sender: frames go out with
// c.send, the back channel is read with dec.
func rawPeer(t *testing.T) (*Receiver, *rawClient, *decoder) {
	t.Helper()
	r := newTestReceiver(t, newFakeTable(), freePort(t, "127.0.0.1"))
	startReceiver(t, r)
	c := dialRaw(t, r.Addrs()[0])
	return r, c, newDecoder(c, 0)
}

// TestReceiverBackChannel: a mismatching digest makes the Receiver ask for a confirmation
// digest; a second one makes it ask for a full sync, which it counts as a repair when it ends.
func TestReceiverBackChannel(t *testing.T) {
	checkGoroutines(t)
	r, c, dec := rawPeer(t)
	f := testFlow(2)
	good := digestOf([]Flow{f})
	bad := good
	bad.sum++
	c.send(helloFrame("a"), frame{typ: frameSyncBegin, syncID: 1}, frame{typ: frameUpsert, flow: f},
		frame{typ: frameSyncEnd, syncID: 1, count: 1}, frame{typ: frameDigest, digest: digestMsg{id: 1, d: bad}})
	if fr := readFrame(t, c, dec); fr.typ != frameDigestRequest {
		t.Fatalf("got %v, want a digest request", fr.typ)
	}
	c.send(frame{typ: frameDigest, digest: digestMsg{id: 2, d: bad}})
	if fr := readFrame(t, c, dec); fr.typ != frameResyncRequest || fr.reason != reasonDigest {
		t.Fatalf("got %v (%v), want a resync request for a digest mismatch", fr.typ, fr.reason)
	}
	c.send(frame{typ: frameSyncBegin, syncID: 2}, frame{typ: frameUpsert, flow: f}, frame{typ: frameSyncEnd, syncID: 2, count: 1},
		frame{typ: frameDigest, digest: digestMsg{id: 3, d: good}})
	waitFor(t, testTimeout, func() bool { return r.Stats().DigestsChecked == 3 }, func() string { return fmt.Sprintf("%+v", r.Stats()) })
	st := r.Stats()
	if st.DigestMismatches != 1 || st.DriftDetected != 1 || st.ResyncsRequested != 1 || st.Repairs != 1 ||
		st.LastDigestMatch.IsZero() || st.LastDrift.IsZero() || st.LastApplied.IsZero() {
		t.Errorf("receiver stats %+v", st)
	}
}

// TestReceiverRecountsShrinkingMismatch: a mismatch that shrinks from one digest to the next
// (the active dumped after a burst of expiries whose events the stream had not yet carried)
// is asked about again rather than repaired by a full sync.
func TestReceiverRecountsShrinkingMismatch(t *testing.T) {
	checkGoroutines(t)
	r, c, dec := rawPeer(t)
	all := flows(0, 10)
	sync := []frame{helloFrame("a"), {typ: frameSyncBegin, syncID: 1}}
	for _, f := range all {
		sync = append(sync, frame{typ: frameUpsert, flow: f})
	}
	c.send(append(sync, frame{typ: frameSyncEnd, syncID: 1, count: 10})...)
	// Every flow has expired on the active; the stream carries the deletes late.
	none := digestOf(nil)
	deletes := func(fs []Flow) []frame {
		var out []frame
		for _, f := range fs {
			out = append(out, frame{typ: frameDelete, flow: Flow{Proto: f.Proto, Orig: f.Orig}})
		}
		return out
	}
	c.send(frame{typ: frameDigest, digest: digestMsg{id: 1, d: none}})
	if fr := readFrame(t, c, dec); fr.typ != frameDigestRequest {
		t.Fatalf("got %v, want a digest request", fr.typ)
	}
	c.send(append(deletes(all[:6]), frame{typ: frameDigest, digest: digestMsg{id: 2, d: none}})...)
	if fr := readFrame(t, c, dec); fr.typ != frameDigestRequest {
		t.Fatalf("got %v after the mismatch shrank from 10 to 4, want another digest request", fr.typ)
	}
	c.send(append(deletes(all[6:]), frame{typ: frameDigest, digest: digestMsg{id: 3, d: none}})...)
	waitFor(t, testTimeout, func() bool { return r.Stats().DigestsChecked == 3 }, func() string { return fmt.Sprintf("%+v", r.Stats()) })
	if st := r.Stats(); st.DriftDetected != 0 || st.ResyncsRequested != 0 || st.LastDigestMatch.IsZero() || st.Flows != 0 {
		t.Errorf("receiver stats %+v: want the last digest matching, no drift, no resync", st)
	}
}

// TestSenderBackChannel: the Sender answers a ResyncRequest with a full sync and a
// DigestRequest with a digest of its table, and drops a peer that sends anything else.
func TestSenderBackChannel(t *testing.T) {
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tr := newTruth(flows(0, 30)...)
	s := NewSender(SenderConfig{Peers: []netip.AddrPort{ln.Addr().(*net.TCPAddr).AddrPort()}, Snapshot: tr.Snapshot,
		Logger: testLogger(t), RetryInterval: 20 * time.Millisecond, DigestInterval: time.Hour})
	goRun(t, s.Run)
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dec := newDecoder(c, 0)
	readSync := func() {
		t.Helper()
		if fr := readFrame(t, c, dec); fr.typ != frameSyncBegin {
			t.Fatalf("got %v, want sync-begin", fr.typ)
		}
		for range 30 {
			if fr := readFrame(t, c, dec); fr.typ != frameUpsert {
				t.Fatalf("got %v, want an upsert", fr.typ)
			}
		}
		if fr := readFrame(t, c, dec); fr.typ != frameSyncEnd || fr.count != 30 {
			t.Fatalf("got %v with count %d, want sync-end with 30", fr.typ, fr.count)
		}
	}
	if fr := readFrame(t, c, dec); fr.typ != frameHello {
		t.Fatalf("got %v, want hello", fr.typ)
	}
	readSync()
	back := func(fr frame) {
		t.Helper()
		if _, err := c.Write(mustAppend(t, &fr)); err != nil {
			t.Fatal(err)
		}
	}
	back(frame{typ: frameResyncRequest, reason: reasonTable})
	readSync()
	back(frame{typ: frameDigestRequest})
	want := digestOf(flows(0, 30))
	if fr := readFrame(t, c, dec); fr.typ != frameDigest || fr.digest.d != want || fr.digest.id != 1 {
		t.Fatalf("got %v %+v, want digest 1 %+v", fr.typ, fr.digest, want)
	}
	waitFor(t, testTimeout, func() bool { return s.Stats().DigestsSent == 1 }, func() string { return "digest not counted" })
	st := s.Stats()
	if st.ResyncsRequested != 1 || st.DigestRequests != 1 || st.Syncs != 2 || st.LastDigest.IsZero() {
		t.Errorf("sender stats %+v", st)
	}
	back(frame{typ: frameSyncBegin, syncID: 9}) // not a back-channel frame
	waitFor(t, testTimeout, func() bool { return errors.Is(s.Stats().LastError, ErrProtocol) },
		func() string { return fmt.Sprintf("%+v", s.Stats()) })
}

// TestKernelCheckRefreshes: a kernel check rewrites the held entries whose timer runs low
// (the active restarts its timers with every packet, without an event) and leaves the others.
func TestKernelCheckRefreshes(t *testing.T) {
	checkGoroutines(t)
	p := newAEPair(t, newTruth(flows(0, 200)...), 200*time.Millisecond, true) // testFlow(i) has i seconds left
	low, high := testFlow(10).Key(), testFlow(100).Key()
	lowBefore, highBefore := p.table.injectCount(low), p.table.injectCount(high)
	waitFor(t, testTimeout, func() bool {
		return p.table.injectCount(low) > lowBefore+1 && p.r.Stats().Refreshed >= 120
	}, func() string {
		return fmt.Sprintf("flow with 10 s left written %d times since, stats %+v", p.table.injectCount(low)-lowBefore, p.r.Stats())
	})
	if n := p.table.injectCount(high) - highBefore; n != 0 {
		t.Errorf("flow with 100 s left rewritten %d times, want 0", n)
	}
	if st := p.r.Stats(); st.DriftDetected != 0 || st.ResyncsRequested != 0 {
		t.Errorf("refreshing looked like drift: %+v", st)
	}
}

// TestDigestIntervalFollowsCost: when a digest's dump takes long (a table of millions), the
// next digest waits digestCostRatio times that, not just DigestInterval, so that digests
// never take more than a twentieth of the active's time.
func TestDigestIntervalFollowsCost(t *testing.T) {
	checkGoroutines(t)
	// Each dump, full syncs' and digests', takes 40ms.
	s, dumps := senderWithSlowDumps(t, SenderConfig{RetryInterval: 20 * time.Millisecond, DigestInterval: 50 * time.Millisecond},
		func(int32) time.Duration { return 40 * time.Millisecond })
	time.Sleep(2 * time.Second)
	// One sync, then digests at 50ms and at least 20×40ms apart: 2 or 3 in 2s, where the
	// interval alone would have given some 20.
	if n := s.Stats().DigestsSent; n < 2 || n > 3 {
		t.Errorf("%d digests sent in 2s, want 2 or 3 (dumps: %d)", n, dumps.Load())
	}
}

// senderWithSlowDumps runs a sender of 10 flows, configured by cfg, to a receiver; its n-th
// snapshot (counting from 1, full syncs and digests alike) sleeps delay(n) first. It returns
// the sender and the count of snapshots taken.
func senderWithSlowDumps(t *testing.T, cfg SenderConfig, delay func(n int32) time.Duration) (*Sender, *atomic.Int32) {
	t.Helper()
	r := NewReceiver(ReceiverConfig{Listen: []netip.AddrPort{freePort(t, "127.0.0.1")}, Table: newBatchTable(), Logger: testLogger(t)})
	startReceiver(t, r)
	tr := newTruth(flows(0, 10)...)
	dumps := new(atomic.Int32)
	cfg.Peers, cfg.Logger = r.Addrs(), testLogger(t)
	cfg.Snapshot = func(ctx context.Context, fn func(Flow) error) error {
		time.Sleep(delay(dumps.Add(1)))
		return tr.Snapshot(ctx, fn)
	}
	s := NewSender(cfg)
	s.digestSettle = 0
	goRun(t, s.Run)
	return s, dumps
}

// TestNoDigestRightAfterFullSync proves that a digest that fell due during a full sync
// waits an interval after it: the peer has just been sent everything, and a digest would
// only dump the table again (seconds for a million entries).
func TestNoDigestRightAfterFullSync(t *testing.T) {
	checkGoroutines(t)
	const interval = time.Second
	s, _ := senderWithSlowDumps(t, SenderConfig{DigestInterval: interval}, func(n int32) time.Duration {
		if n == 1 {
			return interval + interval/5 // the full sync outlasts the digest interval
		}
		return 0
	})
	waitFor(t, 10*time.Second, func() bool { return s.Stats().Syncs == 1 }, func() string { return "no full sync" })
	time.Sleep(interval / 4)
	if st := s.Stats(); st.DigestsSent != 0 {
		t.Errorf("%d digests within %v of the full sync, want none before the interval", st.DigestsSent, interval/4)
	}
	waitFor(t, 10*time.Second, func() bool { return s.Stats().DigestsSent > 0 }, func() string { return "no digest after the full sync" })
}

// TestDigestKeepsStreaming: while a digest dumps the table, however long the dump stalls (the
// kernel deleting a stretch of expired entries), and while it then waits for late events,
// the changes queued meanwhile go out at once, and count in the digest. The dump runs at
// the lowest priority.
func TestDigestKeepsStreaming(t *testing.T) {
	const long = 2 * time.Second
	for _, tc := range []struct {
		name         string
		stall        time.Duration // in the digest's dump, before its flows
		settle       time.Duration
		beforeFlows  bool // the test goes on when the dump starts (else when it ends)
		wantPriority bool
	}{
		{name: "during a stalled dump", stall: long, beforeFlows: true, wantPriority: true},
		{name: "during the settle", settle: long},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkGoroutines(t)
			table := newFakeTable()
			r := newTestReceiver(t, table, freePort(t, "127.0.0.1"))
			startReceiver(t, r)
			tr := newTruth(flows(0, 10)...)
			cfg := testSenderConfig(t, tr, r.Addrs()...)
			cfg.DigestInterval = 50 * time.Millisecond
			var snapshots atomic.Int32
			dumping := make(chan int, 1) // the dump's thread's priority
			cfg.Snapshot = func(ctx context.Context, fn func(Flow) error) error {
				if snapshots.Add(1) != 2 { // the first is the full sync's
					return tr.Snapshot(ctx, fn)
				}
				p, _ := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
				if tc.beforeFlows {
					dumping <- p
				}
				select {
				case <-time.After(tc.stall):
				case <-ctx.Done():
				}
				err := tr.Snapshot(ctx, fn)
				if !tc.beforeFlows {
					dumping <- p
				}
				return err
			}
			s := NewSender(cfg)
			s.digestSettle = tc.settle
			goRun(t, s.Run)
			waitConverged(t, tr, table, r)
			select {
			case p := <-dumping:
				// The system call answers 20 - nice.
				if nice := 20 - p; tc.wantPriority && nice != backgroundNice {
					t.Errorf("the digest's dump ran at nice %d, want %d", nice, backgroundNice)
				}
			case <-time.After(testTimeout):
				t.Fatal("no digest")
			}

			f := testFlow(500)
			start := time.Now()
			tr.upsert(s, f)
			waitFor(t, testTimeout, func() bool { _, ok := table.snapshot()[f.Key()]; return ok },
				func() string { return "the change never arrived" })
			if took := time.Since(start); took > long/2 {
				t.Errorf("a change queued %s arrived after %v", tc.name, took)
			}
			waitFor(t, testTimeout, func() bool { return r.Stats().DigestsChecked >= 1 },
				func() string { return "the digest never arrived" })
			if st := r.Stats(); st.DriftDetected != 0 {
				t.Errorf("drift detected %d times: the change sent %s is missing from the digest", st.DriftDetected, tc.name)
			}
		})
	}
}
