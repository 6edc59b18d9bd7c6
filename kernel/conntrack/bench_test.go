package conntrack

import (
	"context"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
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
			Dst: ap("10.0.0.10:3306"),
		},
		Reply: Tuple{
			Src: ap("10.1.0.100:3306"),
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

// BenchmarkDump measures Dump over 100k entries: ns/op is per entry.
func BenchmarkDump(b *testing.B) {
	ns := natNS(b, "ctbdump")
	tbl := openTable(b, ns)
	const entries = 100_000
	for i := range entries {
		if err := tbl.Inject(benchFlow(i)); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	n := 0
	for b.Loop() {
		if err := tbl.Dump(context.Background(), func(Flow) error { n++; return nil }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/entry")
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "entries/s")
}
