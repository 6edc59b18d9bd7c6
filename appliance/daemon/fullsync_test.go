package daemon

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openappliance/appliance/ha/mirror"
	"github.com/openappliance/appliance/kernel/conntrack"
	"golang.org/x/sys/unix"
)

// BenchmarkStandbyFullSync measures a full sync as the standby of two machines takes it: a
// Sender streams b.N NATed TCP flows over loopback TCP to a Receiver that writes them, as
// applianced does (flowWriter, standbyFlow), into the kernel of a fresh namespace with
// net.netfilter.nf_conntrack_events=1, as applianced sets it. The Sender's snapshot is made
// up: the active's kernel dump runs on the active's own machine. An op is one flow; it
// reports flows/s, the seconds a million would take at that rate, and the process's CPU
// time per flow (both ends, and the kernel's work in their system calls).
//
// "alone": no conntrack event listener on the machine, as on a standby of two machines.
// "listener-elsewhere": one in another namespace, as in the lab (tests/cmd/bench), whose
// two devices share a kernel and whose active listens. The kernel asks whether anyone
// listens per netlink protocol, machine-wide (netlink_has_listeners), so there every
// injected entry has its event built, and broadcast to nobody in its own namespace.
//
// Run it with -benchtime=200000x: a namespace holds at most net.netfilter.nf_conntrack_max
// entries (262144 by default, machine-wide), which the benchmark leaves alone.
func BenchmarkStandbyFullSync(b *testing.B) {
	for _, mode := range []string{"alone", "listener-elsewhere"} {
		b.Run(mode, func(b *testing.B) {
			ns := newTestNS(b, "sby")
			// A deleted namespace's entries are freed in the background, into the next
			// run: flush them first.
			b.Cleanup(func() { ns.run(b, "conntrack", "-F") })
			ns.run(b, "sysctl", "-q", "-w", "net.netfilter.nf_conntrack_events=1")
			if mode == "listener-elsewhere" {
				other := newTestNS(b, "act")
				other.do(b, func() error {
					l, err := conntrack.NewListener(1 << 20)
					if err != nil {
						return err
					}
					b.Cleanup(func() { l.Close() })
					return nil
				})
			}
			d := &Daemon{logger: slog.New(slog.DiscardHandler), timeouts: map[[2]uint8]uint32{}}
			ns.do(b, func() (err error) {
				d.injTable, err = conntrack.Open()
				return err
			})
			b.Cleanup(func() { d.injTable.Close() })

			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			b.Cleanup(func() {
				cancel()
				wg.Wait()
			})
			r := mirror.NewReceiver(mirror.ReceiverConfig{Listen: []netip.AddrPort{loopbackPort(b)}, Table: flowWriter{d}})
			wg.Go(func() { r.Run(ctx) })
			waitUntil(b, 10*time.Second, "receiver listening", func() bool { return len(r.Addrs()) == 1 })

			n := b.N
			if max := conntrackMax(b); n > max {
				b.Fatalf("%d flows do not fit: net.netfilter.nf_conntrack_max is %d (run with -benchtime=200000x, or raise it)", n, max)
			}
			snapshot := func(ctx context.Context, fn func(mirror.Flow) error) error {
				for i := range n {
					if err := fn(syncFlow(i)); err != nil {
						return err
					}
				}
				return nil
			}
			s := mirror.NewSender(mirror.SenderConfig{Device: "bench", Peers: r.Addrs(), Snapshot: snapshot, DigestInterval: -1})
			cpu0 := processCPU(b)
			b.ResetTimer()
			wg.Go(func() { s.Run(ctx) })
			waitUntil(b, 10*time.Minute, "full sync received", func() bool { return r.Stats().Syncs == 1 })
			b.StopTimer()
			cpu := processCPU(b) - cpu0

			if st := r.Stats(); st.InjectErrors != 0 || r.Flows() != n {
				b.Fatalf("receiver holds %d flows, %d inject errors; want %d, 0", r.Flows(), st.InjectErrors, n)
			}
			if held := ns.count(b); held != n {
				b.Fatalf("the namespace's kernel holds %d entries, want %d", held, n)
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "flows/s")
			b.ReportMetric(b.Elapsed().Seconds()*1e6/float64(n), "s/1M-flows")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(n), "cpu-ns/flow")
		})
	}
}

// syncFlow is the i-th of a set of distinct established TCP flows through one virtual,
// DNATed to one of 256 members and SNATed to one of a few SNAT addresses (60000 ports each).
func syncFlow(i int) mirror.Flow {
	n := i / 60000
	port := uint16(1024 + i%60000)
	return mirror.Flow{
		Proto: unix.IPPROTO_TCP, TCPState: conntrack.TCPStateEstablished, Timeout: 7200,
		Orig: mirror.Tuple{
			Src: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 2, byte(i >> 16), byte(i >> 8)}), uint16(1024+i%256)),
			Dst: netip.MustParseAddrPort("10.0.0.10:3306"),
		},
		Reply: mirror.Tuple{
			Src: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), 3306),
			Dst: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 3, 0, byte(n)}), port),
		},
	}
}

// count returns how many conntrack entries the namespace holds.
func (ns testNS) count(t testing.TB) int {
	t.Helper()
	out := ns.run(t, "conntrack", "-C")
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("conntrack -C printed %q", out)
	}
	return n
}

// conntrackMax returns net.netfilter.nf_conntrack_max, the most entries a namespace holds.
func conntrackMax(t testing.TB) int {
	t.Helper()
	data, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// loopbackPort returns a TCP port of 127.0.0.1 that was free a moment ago.
func loopbackPort(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func waitUntil(t testing.TB, bound time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, bound)
		}
		time.Sleep(time.Millisecond)
	}
}

// processCPU returns the user+system CPU time of the process.
func processCPU(t testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
