package mirror

import (
	"context"
	"errors"
	"testing"
	"time"
)

// slowSnapshot is a Snapshot of n flows that works per on each, as a kernel dump does
// (a sleep would take a timer's granularity instead).
func slowSnapshot(n int, per time.Duration) func(context.Context, func(Flow) error) error {
	return func(ctx context.Context, fn func(Flow) error) error {
		for i := range n {
			for start := time.Now(); time.Since(start) < per; {
			}
			if err := fn(Flow{Proto: 6, Timeout: uint32(i)}); err != nil {
				return err
			}
		}
		return ctx.Err()
	}
}

func TestPacedSnapshot(t *testing.T) {
	t.Run("every flow, in order, with rests", func(t *testing.T) {
		const n = 2000
		got := 0
		rested, err := pacedSnapshot(context.Background(), slowSnapshot(n, 20*time.Microsecond), func(f Flow) error {
			if f.Timeout != uint32(got) {
				t.Fatalf("flow %d came as number %d", f.Timeout, got)
			}
			got++
			return nil
		})
		if err != nil || got != n {
			t.Fatalf("pacedSnapshot: %d flows of %d, err %v", got, n, err)
		}
		// At least 40 ms of dumping: a rest after every millisecond of it.
		if rested < dumpRest {
			t.Errorf("rested %v over 2000 slow flows, want at least %v", rested, dumpRest)
		}
	})
	t.Run("fn's error ends it", func(t *testing.T) {
		stop := errors.New("enough")
		n := 0
		_, err := pacedSnapshot(context.Background(), slowSnapshot(100, 0), func(Flow) error {
			if n++; n == 10 {
				return stop
			}
			return nil
		})
		if !errors.Is(err, stop) || n != 10 {
			t.Errorf("pacedSnapshot after fn failed at flow 10: err %v after %d flows", err, n)
		}
	})
	t.Run("a cancel ends a rest", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		n := 0
		// A snapshot that never ends by itself: only the cancel, seen in a rest, stops it.
		_, err := pacedSnapshot(ctx, slowSnapshot(1<<30, 50*time.Microsecond), func(Flow) error {
			if n++; n == 100 {
				cancel()
			}
			return nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("pacedSnapshot after a cancel: %v, want context.Canceled", err)
		}
	})
}
