package mirror

import (
	"slices"
	"testing"
	"time"
)

// TestLagMeter: one probe in flight at a time and one per interval; stale answers ignored;
// samples land in their buckets and in the last minute's maximum.
func TestLagMeter(t *testing.T) {
	ms := time.Millisecond
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	m := newLagMeter(100 * ms)

	if _, ok := m.probe(time.Time{}, t0); ok {
		t.Fatal("probe for a batch without a queueing time")
	}
	id, ok := m.probe(t0.Add(-3*ms), t0)
	if !ok {
		t.Fatal("first probe not due")
	}
	if _, ok := m.probe(t0, t0.Add(time.Second)); ok {
		t.Fatal("second probe while the first is in flight")
	}
	if _, _, ok := m.answer(id+1, t0.Add(ms)); ok {
		t.Fatal("answer with another id taken")
	}
	if lag, _, ok := m.answer(id, t0.Add(ms)); !ok || lag != 4*ms {
		t.Fatalf("answer: lag %v ok %v, want 4ms true", lag, ok)
	}
	if _, _, ok := m.answer(id, t0.Add(2*ms)); ok {
		t.Fatal("second answer to one probe taken")
	}
	if _, ok := m.probe(t0, t0.Add(50*ms)); ok {
		t.Fatal("probe due 50ms after the last, want 100ms")
	}
	// A probe lost with its connection, then a slow one.
	if _, ok := m.probe(t0.Add(100*ms), t0.Add(100*ms)); !ok {
		t.Fatal("probe not due after 100ms")
	}
	m.forget()
	id, ok = m.probe(t0.Add(200*ms), t0.Add(200*ms))
	if !ok {
		t.Fatal("probe not due after forget")
	}
	lag, warn, ok := m.answer(id, t0.Add(200*ms+3*time.Second))
	if !ok || lag != 3*time.Second || !warn {
		t.Fatalf("slow answer: lag %v warn %v ok %v, want 3s true true", lag, warn, ok)
	}

	var st SenderStats
	m.stats(&st, t0.Add(10*time.Second))
	if st.LagSamples != 2 || st.LagSum != 3*time.Second+4*ms || st.LagLast != 3*time.Second || st.LagMax != 3*time.Second {
		t.Errorf("stats %+v", st)
	}
	// 4ms falls in the 5ms bucket (index 3), 3s in the 5s one (index 12).
	want := []uint64{0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2}
	if !slices.Equal(st.LagBuckets, want) {
		t.Errorf("buckets %v, want %v", st.LagBuckets, want)
	}
	m.stats(&st, t0.Add(2*time.Minute))
	if st.LagMax != 0 || st.LagSamples != 2 {
		t.Errorf("two minutes on: max %v samples %d, want 0 and 2", st.LagMax, st.LagSamples)
	}
}

// TestLagMeasured: over a real connection, the Sender's lag samples cover the time the
// standby's table takes to hold a change.
func TestLagMeasured(t *testing.T) {
	checkGoroutines(t)
	const slow = 40 * time.Millisecond
	tr, table, r, s := syncedPair(t, 10)
	if st := s.Stats(); st.LagSamples != 0 {
		t.Fatalf("%d lag samples before any change: a full sync alone is no sample", st.LagSamples)
	}

	// Injects become slow: the next sample must include the delay.
	table.mu.Lock()
	table.fail = func(Flow) error { time.Sleep(slow); return nil }
	table.mu.Unlock()
	tr.upsert(s, testFlow(100))
	waitFor(t, testTimeout, func() bool { return s.Stats().LagSamples >= 1 },
		func() string { return "no lag sample after a change" })
	st := s.Stats()
	if st.LagLast < slow || st.LagLast > testTimeout || st.LagMax < st.LagLast {
		t.Errorf("lag last %v max %v with a %v inject: want at least %v", st.LagLast, st.LagMax, slow, slow)
	}
	if got := st.LagBuckets[len(st.LagBuckets)-1]; got != st.LagSamples {
		t.Errorf("last cumulative bucket %d, want every sample (%d)", got, st.LagSamples)
	}

	// A stream of changes for half a second: about one sample per 100ms, never more.
	table.mu.Lock()
	table.fail = nil
	table.mu.Unlock()
	before := s.Stats().LagSamples
	start := time.Now()
	for i := 0; time.Since(start) < 500*time.Millisecond; i++ {
		tr.upsert(s, testFlow(200+i%50))
		time.Sleep(time.Millisecond)
	}
	waitConverged(t, tr, table, r)
	elapsed := time.Since(start)
	got := s.Stats().LagSamples - before
	if maxN := uint64(elapsed/lagProbeEvery) + 1; got == 0 || got > maxN {
		t.Errorf("%d samples in %v of changes, want 1 to %d", got, elapsed, maxN)
	}
	t.Logf("%d samples in %v; last %v", got, elapsed.Round(time.Millisecond), s.Stats().LagLast)
}
