package mirror

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkEncodeDecode: the codec's cost per flow, one FlowUpsert encoded and decoded.
func BenchmarkEncodeDecode(b *testing.B) {
	for name, f := range map[string]Flow{"ipv4": testFlow(2), "ipv6": testFlow(3)} {
		b.Run(name, func(b *testing.B) {
			var buf [lenPrefix + maxBodyLen]byte
			var fr frame
			b.ReportAllocs()
			enc, _ := appendUpsert(buf[:0], &f)
			b.SetBytes(int64(len(enc)))
			for b.Loop() {
				enc, err := appendUpsert(buf[:0], &f)
				if err != nil {
					b.Fatal(err)
				}
				if err := decodeBody(enc[lenPrefix:], &fr); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type noopTable struct{}

func (noopTable) Inject(Flow) error { return nil }
func (noopTable) Delete(Flow) error { return nil }

// benchFlow returns a distinct IPv4 flow for every i below 2^24.
func benchFlow(i int) Flow {
	f := testFlow(0)
	f.Orig.Src = ap4(10, byte(i>>16), byte(i>>8), byte(i), 40000)
	f.Reply.Dst = ap4(172, 16, 255, 254, uint16(i))
	f.Timeout = uint32(i)
	return f
}

func benchPair(b *testing.B, snapshot func(context.Context, func(Flow) error) error, maxQueue int) (*Sender, *Receiver) {
	r := NewReceiver(ReceiverConfig{Listen: []netip.AddrPort{freePort(b, "127.0.0.1")}, Table: noopTable{}})
	startReceiver(b, r)
	s := NewSender(SenderConfig{Peers: r.Addrs(), Snapshot: snapshot, RetryInterval: 10 * time.Millisecond, MaxQueue: maxQueue})
	goRun(b, s.Run)
	return s, r
}

func waitUpserts(b *testing.B, r *Receiver, n uint64) {
	for r.Stats().Upserts < n {
		time.Sleep(200 * time.Microsecond)
	}
	if st := r.Stats(); st.Upserts != n || st.InjectErrors != 0 {
		b.Fatalf("receiver %+v, want %d upserts", st, n)
	}
}

// BenchmarkEndToEnd measures flows/s over loopback into a no-op table: "stream" queues b.N
// distinct flows (as conntrack events would) on a synced connection, "fullsync" sends a
// b.N-flow snapshot.
func BenchmarkEndToEnd(b *testing.B) {
	b.Run("stream", func(b *testing.B) {
		empty := func(context.Context, func(Flow) error) error { return nil }
		s, r := benchPair(b, empty, max(b.N+1, 1<<20))
		waitFor(b, testTimeout, func() bool { return r.Stats().Syncs == 1 }, func() string { return "no sync" })
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			s.Upsert(benchFlow(i))
		}
		waitUpserts(b, r, uint64(b.N))
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "flows/s")
		if st := s.Stats(); st.Overflows != 0 {
			b.Fatalf("sender %+v: overflowed", st)
		}
	})
	b.Run("fullsync", func(b *testing.B) {
		n := b.N
		snapshot := func(ctx context.Context, fn func(Flow) error) error {
			for i := range n {
				if err := fn(benchFlow(i)); err != nil {
					return err
				}
			}
			return nil
		}
		b.ReportAllocs()
		b.ResetTimer()
		_, r := benchPair(b, snapshot, 0)
		waitFor(b, 10*time.Minute, func() bool { return r.Stats().Syncs == 1 }, func() string { return fmt.Sprintf("%+v", r.Stats()) })
		b.StopTimer()
		waitUpserts(b, r, uint64(n))
		if r.Flows() != n {
			b.Fatalf("receiver holds %d flows, want %d", r.Flows(), n)
		}
		b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "flows/s")
	})
}
