package conntrack

import (
	"context"
	"net/netip"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/openappliance/appliance/kernel/internal/nstest"
	"golang.org/x/sys/unix"
)

var (
	benchVIP    = netip.MustParseAddrPort("10.0.0.10:3306")
	benchMember = netip.MustParseAddrPort("10.1.0.100:3306")
)

// benchFlow returns the i-th of a set of distinct DNAT+SNAT TCP flows; reply tuples are
// distinct too (60000 SNAT ports per SNAT address).
func benchFlow(i int) Flow {
	n := uint32(i / 60000)
	port := uint16(1024 + i%60000)
	addr := func(base [4]byte) netip.Addr {
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		v += n
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	return Flow{
		Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 600,
		Status: StatusAssured | StatusSeenReply,
		Orig: Tuple{
			Src: netip.AddrPortFrom(addr([4]byte{10, 2, 0, 1}), port),
			Dst: benchVIP,
		},
		Reply: Tuple{
			Src: benchMember,
			Dst: netip.AddrPortFrom(addr([4]byte{10, 3, 0, 1}), port),
		},
	}
}

// BenchmarkInject measures Inject in a namespace: "new" creates a distinct NATed flow per
// op, "update" re-injects flows that exist with the same binding.
func BenchmarkInject(b *testing.B) {
	ns := natNS(b, "ctbench")
	tbl := openTable(b, ns)

	var created int
	b.Run("new", func(b *testing.B) {
		for b.Loop() {
			if err := tbl.Inject(benchFlow(created)); err != nil {
				b.Fatal(err)
			}
			created++
		}
	})
	if created == 0 {
		return
	}
	b.Run("update", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if err := tbl.Inject(benchFlow(i % created)); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkDump measures Dump over a table of 100k NATed TCP entries; an op is one dump of
// the whole table, and the metrics are per entry: ns, entries/s, CPU time (user+system)
// and allocations.
func BenchmarkDump(b *testing.B) {
	ns := natNS(b, "ctbdump")
	tbl := openTable(b, ns)
	const entries = 100_000
	flows := make([]Flow, 0, 1024)
	for start := 0; start < entries; start += 1024 {
		flows = flows[:0]
		for i := start; i < min(start+1024, entries); i++ {
			flows = append(flows, benchFlow(i))
		}
		mustInjectBatch(b, tbl, flows)
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0 := cpuTime(b)
	n := 0
	for b.Loop() {
		if err := tbl.Dump(context.Background(), func(Flow) error { n++; return nil }); err != nil {
			b.Fatal(err)
		}
	}
	cpu := cpuTime(b) - cpu0
	runtime.ReadMemStats(&m1)
	if n != b.N*entries {
		b.Fatalf("dumped %d entries in %d dumps of %d", n, b.N, entries)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/entry")
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(n), "cpu-ns/entry")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/float64(n), "allocs/entry")
}

// BenchmarkInjectBatch measures InjectBatch in batches of 8 (a steady load's burst), 64,
// 256 and 1024 flows; an op is one flow. "new" creates distinct NATed flows; "existing"
// re-injects flows that exist with the same binding (the steady state of a full sync onto
// a standby that has them); "changed" re-injects them with another pool member, so each
// one is replaced. Each run starts from a flushed table in a namespace of its own (the
// kernel frees the entries of a deleted namespace in the background, which would skew the
// next run). Besides ns/op it reports entries/s and the process's CPU time (user+system,
// which includes the kernel's work in sendmsg) per flow.
func BenchmarkInjectBatch(b *testing.B) {
	for _, mode := range []string{"new", "existing", "changed"} {
		b.Run(mode, func(b *testing.B) {
			ns := natNS(b, "ctbbat")
			tbl := openTable(b, ns)
			for _, size := range []int{8, 64, 256, 1024} {
				b.Run(strconv.Itoa(size), func(b *testing.B) {
					benchInjectBatch(b, ns, tbl, mode, size)
				})
			}
		})
	}
}

func benchInjectBatch(b *testing.B, ns *nstest.NS, tbl *Table, mode string, size int) {
	ns.MustRun("conntrack", "-F")
	const pool = 50_000 // existing entries cycled through
	flows := make([]Flow, 0, size)
	if mode != "new" {
		for start := 0; start < pool; start += 1024 {
			flows = flows[:0]
			for i := start; i < min(start+1024, pool); i++ {
				flows = append(flows, benchFlow(i))
			}
			mustInjectBatch(b, tbl, flows)
		}
	}
	member := byte(100)
	var flushed time.Duration // CPU time of the flushes, not counted
	cpu0 := cpuTime(b)
	b.ResetTimer()
	for done := 0; done < b.N; {
		if mode == "new" && done > 0 && done%newPerTable == 0 {
			// Stay below nf_conntrack_max (262144 by default), where creates fail.
			b.StopTimer()
			c := cpuTime(b)
			ns.MustRun("conntrack", "-F")
			flushed += cpuTime(b) - c
			b.StartTimer()
		}
		flows = flows[:0]
		for range min(size, b.N-done, newPerTable-done%newPerTable) {
			var f Flow
			switch mode {
			case "new":
				f = benchFlow(done % newPerTable)
			default:
				f = benchFlow(done % pool)
				if mode == "changed" && done%pool == 0 {
					member ^= 1 // 100 and 101 in turn, so every pass changes it
				}
				f.Reply.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, member}), f.Reply.Src.Port())
			}
			flows = append(flows, f)
			done++
		}
		mustInjectBatch(b, tbl, flows)
	}
	b.StopTimer()
	reportPerFlow(b, cpuTime(b)-cpu0-flushed)
}

// newPerTable is how many entries the "new" runs create before they flush the table.
const newPerTable = 200_000

func mustInjectBatch(b *testing.B, tbl *Table, flows []Flow) {
	b.Helper()
	for i, err := range tbl.InjectBatch(flows) {
		if err != nil {
			b.Fatalf("flow %d: %v", i, err)
		}
	}
}

// cpuTime returns the user+system CPU time of the process.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportPerFlow(b *testing.B, cpu time.Duration) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/flow")
}

// BenchmarkInjectStandby measures the standby's kernel work per entry of a full sync: new
// NATed flows in batches of 256, with net.netfilter.nf_conntrack_events=1 as applianced sets
// it (every entry carries the event extension). "alone": no conntrack event listener on
// the machine, as on the standby of a pair of two machines. "listener-elsewhere": one in
// another namespace, as in the lab, whose two devices share a kernel and whose active
// listens. The kernel asks whether anyone listens per netlink protocol, machine-wide
// (netlink_has_listeners), so there every injected entry has its event built and broadcast
// in its own namespace, to nobody.
func BenchmarkInjectStandby(b *testing.B) {
	for _, mode := range []string{"alone", "listener-elsewhere"} {
		b.Run(mode, func(b *testing.B) {
			ns := natNS(b, "ctbsby")
			ns.MustRun("sysctl", "-q", "-w", "net.netfilter.nf_conntrack_events=1")
			if mode == "listener-elsewhere" {
				other := nstest.New(b, "ctbact")
				var l *Listener
				other.MustDo(func() (err error) {
					l, err = NewListener(1 << 20)
					return err
				})
				b.Cleanup(func() { l.Close() })
			}
			tbl := openTable(b, ns)
			benchInjectBatch(b, ns, tbl, "new", 256)
		})
	}
}

// BenchmarkAppendCreate measures the encoding of one NATed create request, the user-space
// part of an injection that the kernel waits for in a full sync.
func BenchmarkAppendCreate(b *testing.B) {
	f, err := benchFlow(7).normalize()
	if err != nil {
		b.Fatal(err)
	}
	var e encoder
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i%256 == 0 {
			e.reset()
		}
		appendCreate(&e, f, uint32(i))
	}
}
