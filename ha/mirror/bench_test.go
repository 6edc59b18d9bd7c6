package mirror

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
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

// noopBatchTable is a no-op BatchWriter.
type noopBatchTable struct{ noopTable }

func (noopBatchTable) InjectBatch([]Flow) []error { return nil }
func (noopBatchTable) DeleteBatch([]Flow) []error { return nil }

var benchTables = []struct {
	name  string
	table FlowWriter
}{{"inject", noopTable{}}, {"batch", noopBatchTable{}}}

// benchFlow returns a distinct IPv4 flow for every i below 2^24.
func benchFlow(i int) Flow {
	f := testFlow(0)
	f.Orig.Src = ap4(10, byte(i>>16), byte(i>>8), byte(i), 40000)
	f.Reply.Dst = ap4(172, 16, 255, 254, uint16(i))
	f.Timeout = uint32(i)
	return f
}

func benchPair(b *testing.B, table FlowWriter, snapshot func(context.Context, func(Flow) error) error, maxQueue int) (*Sender, *Receiver) {
	r := NewReceiver(ReceiverConfig{Listen: []netip.AddrPort{freePort(b, "127.0.0.1")}, Table: table})
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

// BenchmarkEndToEnd measures flows/s over loopback into a no-op table, written flow by flow
// ("inject") or in batches ("batch", a BatchWriter): "stream" queues b.N distinct flows (as
// conntrack events would) on a synced connection, "fullsync" sends a b.N-flow snapshot.
func BenchmarkEndToEnd(b *testing.B) {
	for _, tb := range benchTables {
		b.Run("stream/"+tb.name, func(b *testing.B) {
			empty := func(context.Context, func(Flow) error) error { return nil }
			s, r := benchPair(b, tb.table, empty, max(b.N+1, 1<<20))
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
	}
	for _, tb := range benchTables {
		b.Run("fullsync/"+tb.name, func(b *testing.B) {
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
			_, r := benchPair(b, tb.table, snapshot, 0)
			waitFor(b, 10*time.Minute, func() bool { return r.Stats().Syncs == 1 }, func() string { return fmt.Sprintf("%+v", r.Stats()) })
			b.StopTimer()
			waitUpserts(b, r, uint64(n))
			if r.Flows() != n {
				b.Fatalf("receiver holds %d flows, want %d", r.Flows(), n)
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "flows/s")
		})
	}
}

// BenchmarkReceiver measures the standby's own cost per mirrored flow: a full sync of b.N
// flows, encoded beforehand and written by a raw client in large writes, decoded, remembered
// and handed to a no-op table. cpu-ns/flow is the process's CPU time (user and system, the
// writer's few system calls included) per flow.
func BenchmarkReceiver(b *testing.B) {
	for _, tb := range benchTables {
		b.Run(tb.name, func(b *testing.B) {
			var stream []byte
			var err error
			if stream, err = appendHello(stream, hello{version: protocolVersion, device: "bench"}); err != nil {
				b.Fatal(err)
			}
			stream = appendSyncBegin(stream, 1)
			for i := range b.N {
				f := benchFlow(i)
				if stream, err = appendUpsert(stream, &f); err != nil {
					b.Fatal(err)
				}
			}
			stream = appendSyncEnd(stream, 1, uint64(b.N))
			r := NewReceiver(ReceiverConfig{Listen: []netip.AddrPort{freePort(b, "127.0.0.1")}, Table: tb.table})
			startReceiver(b, r)
			c := dialRaw(b, r.Addrs()[0])
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for rest := stream; len(rest) > 0; {
				n := min(len(rest), 1<<20)
				if _, err := c.Write(rest[:n]); err != nil {
					b.Fatal(err)
				}
				rest = rest[n:]
			}
			for r.Stats().Syncs < 1 {
				time.Sleep(100 * time.Microsecond)
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/flow")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "flows/s")
			if r.Flows() != b.N {
				b.Fatalf("receiver holds %d flows, want %d", r.Flows(), b.N)
			}
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHeldMemory reports the standby's memory per remembered flow (the key set with its
// hashes): heap bytes per flow after b.N distinct flows (run with -benchtime=1000000x for a
// million).
func BenchmarkHeldMemory(b *testing.B) {
	r := NewReceiver(ReceiverConfig{Table: noopBatchTable{}})
	var ub changeBatch
	ub.init()
	apply := func() {
		r.bookBatch(&ub)
		r.writeBooked(&ub)
		ub.reset()
	}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	b.ResetTimer()
	for i := range b.N {
		f := benchFlow(i)
		ub.add(&f)
		if ub.full() {
			apply()
		}
	}
	apply()
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&m1)
	if r.Flows() != b.N {
		b.Fatalf("holds %d, want %d", r.Flows(), b.N)
	}
	b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/float64(b.N), "B/flow")
	runtime.KeepAlive(r)
}
