package mirror

import (
	"sync"
	"time"
)

// Mirror lag is measured by the Sender, on its own clock (the devices' clocks are not
// compared): at most once per lagProbeEvery, after writing a batch of changes, it writes a
// LagProbe; the Receiver answers with a LagAck once every change before the probe is in its
// kernel (the probe ends a run of changes, which is written first). A sample is the time from
// the queueing of the batch's oldest change (right after the active's daemon read its event)
// to the answer: the lag of the slowest change of that batch, plus the answer's way back
// (one trip over the HA link), so it errs on the high side. An answer that never comes
// yields no sample, but a late one counts in full: a standby that stalls shows as lag.

// lagProbeEvery is the least time between two probes: about ten samples a second under
// load, none when nothing changes.
const lagProbeEvery = 100 * time.Millisecond

// lagWarn is the lag above which the Sender logs a warning, at most once a minute.
const lagWarn = time.Second

// LagBounds returns the upper bounds of the lag histogram's buckets (SenderStats.LagBuckets),
// from half a millisecond to ten seconds.
func LagBounds() []time.Duration {
	ms := time.Millisecond
	return []time.Duration{ms / 2, ms, 2 * ms, 5 * ms, 10 * ms, 25 * ms, 50 * ms, 100 * ms,
		250 * ms, 500 * ms, time.Second, 2500 * ms, 5 * time.Second, 10 * time.Second}
}

// lagWindow is how far back SenderStats.LagMax looks, in seconds.
const lagWindow = 60

// lagMeter holds the probe in flight and the samples. Safe for concurrent use: the stream's
// writer sends probes, the back-channel reader takes the answers.
type lagMeter struct {
	mu       sync.Mutex
	bounds   []time.Duration
	every    time.Duration
	lastSent time.Time // when the last probe was written
	lastID   uint32    // ids increase across connections, so a stale answer matches nothing
	inFlight bool      // a probe is waiting for its answer
	since    time.Time // when the probed batch's oldest change was queued
	lastWarn time.Time

	count   uint64
	sum     time.Duration
	last    time.Duration
	buckets []uint64 // samples per bucket (not cumulative); the last is above every bound
	// The highest sample of each of the last lagWindow seconds, by second mod lagWindow.
	maxima [lagWindow]struct {
		sec int64
		max time.Duration
	}
}

func newLagMeter(every time.Duration) *lagMeter {
	b := LagBounds()
	return &lagMeter{bounds: b, every: every, buckets: make([]uint64, len(b)+1)}
}

// probe returns the id of a probe to write now, after a batch whose oldest change was queued
// at since, or false when one is in flight or the last went out less than every ago.
func (m *lagMeter) probe(since, now time.Time) (uint32, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.inFlight || now.Sub(m.lastSent) < m.every || since.IsZero() {
		return 0, false
	}
	m.lastID++
	m.inFlight, m.since, m.lastSent = true, since, now
	return m.lastID, true
}

// forget drops the probe in flight: its connection has ended.
func (m *lagMeter) forget() {
	m.mu.Lock()
	m.inFlight = false
	m.mu.Unlock()
}

// answer records the sample that the answer to probe id makes, and returns it; false for an
// answer to no probe in flight (a stale one).
func (m *lagMeter) answer(id uint32, now time.Time) (lag time.Duration, warn, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.inFlight || id != m.lastID {
		return 0, false, false
	}
	m.inFlight = false
	lag = max(now.Sub(m.since), 0)
	m.count++
	m.sum += lag
	m.last = lag
	i := 0
	for i < len(m.bounds) && lag > m.bounds[i] {
		i++
	}
	m.buckets[i]++
	sec := now.Unix()
	slot := &m.maxima[sec%lagWindow]
	if slot.sec != sec {
		slot.sec, slot.max = sec, 0
	}
	slot.max = max(slot.max, lag)
	if lag > lagWarn && now.Sub(m.lastWarn) >= time.Minute {
		m.lastWarn, warn = now, true
	}
	return lag, warn, true
}

// stats fills st's lag fields as of now.
func (m *lagMeter) stats(st *SenderStats, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st.LagSamples, st.LagSum, st.LagLast = m.count, m.sum, m.last
	st.LagMax = 0
	oldest := now.Unix() - lagWindow
	for _, s := range m.maxima {
		if s.sec > oldest {
			st.LagMax = max(st.LagMax, s.max)
		}
	}
	st.LagBuckets = make([]uint64, len(m.bounds))
	var n uint64
	for i := range m.bounds {
		n += m.buckets[i]
		st.LagBuckets[i] = n
	}
}
