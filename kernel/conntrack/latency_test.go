package conntrack

import (
	"slices"
	"testing"
	"time"
)

// BenchmarkListenerLatency measures how long an event takes from the change that makes it
// to the Listener's callback, one change at a time (the kernel queues the event during the
// change's system call, so what is measured is the reader's wake-up): an op is one change,
// a millisecond apart. It reports the p50 and p99 in microseconds: the part of the
// mirror's lag that the event reader's wake-up adds on the active (its linger aside).
func BenchmarkListenerLatency(b *testing.B) {
	ns := natNS(b, "ctllat")
	tbl := openTable(b, ns)
	var l *Listener
	ns.MustDo(func() (err error) { l, err = NewListenerOf(1<<20, EventNew); return err })
	got := make(chan time.Time, 1)
	runListener(b, l, func(e Event) {
		if e.Type == EventNew {
			got <- time.Now()
		}
	})
	var lags []time.Duration
	i := 0
	for b.Loop() {
		time.Sleep(time.Millisecond)
		f := numberedFlow(i % 50000)
		i++
		start := time.Now()
		if err := tbl.Inject(f); err != nil {
			b.Fatal(err)
		}
		select {
		case at := <-got:
			lags = append(lags, at.Sub(start))
		case <-time.After(5 * time.Second):
			b.Fatal("no event within 5s")
		}
		if err := tbl.Delete(f); err != nil {
			b.Fatal(err)
		}
	}
	slices.Sort(lags)
	b.ReportMetric(float64(lags[len(lags)/2].Microseconds()), "lag-us-p50")
	b.ReportMetric(float64(lags[len(lags)*99/100].Microseconds()), "lag-us-p99")
}
