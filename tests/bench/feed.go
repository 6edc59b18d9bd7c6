package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/openappliance/appliance/kernel/conntrack"
	"github.com/openappliance/appliance/tests/labnet"
)

// feedLifetime is how long a fed entry lives before the kernel expires it, which makes its
// destroy event: the one other event a real connection gives the active's daemon once its
// kernel filter has dropped the handshake and closing states.
const feedLifetime = 1 // seconds

// FeedOnce measures the daemons' own ceiling, without the lab's traffic generator between:
// established TCP entries of the virtual server are created in the active's kernel through
// ctnetlink, target a second (0: as fast as one netlink socket goes) for dur, starting at
// synthetic flow first. The active's daemon sees each as a real connection's event, mirrors
// it, and the standby injects it; each entry then expires on the active after
// feedLifetime, and the run ends once the destroys have emptied both tables, so the CPU
// times cover a flow's whole life.
func FeedOnce(ctx context.Context, sys System, target int, dur time.Duration, first int) (RateRun, error) {
	gen := func(ctx context.Context, active *labnet.Device) (int, int, time.Duration) {
		return FeedKernel(ctx, active.NS, first, target, dur)
	}
	settle := func(ctx context.Context, active, standby *labnet.Device) {
		_ = poll(ctx, time.Minute, 50*time.Millisecond, "fed entries expired and deleted", func() (bool, error) {
			for _, d := range []*labnet.Device{active, standby} {
				n, err := ctCount(d.NS)
				if err != nil || n > 16 { // the HA link's own few entries remain
					return false, err
				}
			}
			return true, nil
		})
	}
	return burstOnce(ctx, sys, 6, target, gen, settle)
}

// FeedKernel is FeedOnce's generator (and lab feed's): each millisecond it creates, in one netlink batch, the
// entries due by then.
func FeedKernel(ctx context.Context, ns string, first, target int, dur time.Duration) (done, failed int, elapsed time.Duration) {
	var t *conntrack.Table
	if err := labnet.Do(ns, func() (err error) { t, err = conntrack.Open(); return err }); err != nil {
		return 0, 1, 0
	}
	defer t.Close()
	ctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	batch := make([]conntrack.Flow, 0, 256)
	start := time.Now()
	next := first
	for ctx.Err() == nil {
		due := next - first + cap(batch)
		if target > 0 {
			select {
			case <-ctx.Done():
				continue
			case <-tick.C:
			}
			due = int(float64(target) * time.Since(start).Seconds())
		}
		for next-first < due {
			batch = batch[:0]
			for ; next-first < due && len(batch) < cap(batch); next++ {
				f := syntheticFlow(next)
				f.Timeout = feedLifetime
				batch = append(batch, f)
			}
			errs := t.InjectBatch(batch)
			failed += countErrors(errs)
			done += len(batch) - countErrors(errs)
		}
	}
	return done, failed, time.Since(start)
}

func countErrors(errs []error) int {
	n := 0
	for _, err := range errs {
		if err != nil {
			n++
		}
	}
	return n
}

// FeedKey names the figures of the daemon's own ceiling, as RateKey does for bursts.
func FeedKey(target int, what string) string { return fmt.Sprintf("feed/%d/%s", target, what) }
