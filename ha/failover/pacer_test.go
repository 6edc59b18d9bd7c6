package failover

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func udpPair(t *testing.T) (from, to *net.UDPConn) {
	t.Helper()
	var conns [2]*net.UDPConn
	for i := range conns {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns[0], conns[1]
}

// TestMain lets the test binary be the pacer process (procPacer starts os.Args[0]).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == PacerArg {
		if err := RunPacerProcess(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestPacerRepeatsOverdueRounds: when the loop stops sending, the pacer repeats its latest
// round every interval with increasing sequence numbers, and stops when ctx ends; both the
// thread and the process.
func TestPacerRepeatsOverdueRounds(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name string
		make func(t *testing.T) (roundPacer, *atomic.Uint64)
	}{
		{"thread", func(t *testing.T) (roundPacer, *atomic.Uint64) {
			seq := new(atomic.Uint64)
			return &pacer{seq: seq, logger: logger}, seq
		}},
		{"process", func(t *testing.T) (roundPacer, *atomic.Uint64) {
			p, err := newProcPacer(os.Args[0], logger)
			if err != nil {
				t.Fatal(err)
			}
			return p, p.seq()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, seq := tc.make(t)
			testPacerRepeats(t, p, seq, func() {
				if _, ok := p.(*procPacer); ok && os.Geteuid() == 0 {
					checkRealTime(t)
				}
			})
		})
	}
}

// testPacerRepeats runs p; while it runs, after its first rounds, it calls running.
func testPacerRepeats(t *testing.T, p roundPacer, seq *atomic.Uint64, running func()) {
	from, to := udpPair(t)
	seq.Store(41)
	round := &pacedRound{
		hb:       heartbeat{Name: "lb1", State: StateActive, BootID: 7, Payload: []byte("digest")},
		interval: 10 * time.Millisecond,
		sends:    []pacedSend{{conn: from, to: to.LocalAddr().(*net.UDPAddr).AddrPort()}},
	}
	p.publish(round)
	p.sentAt(time.Now())

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { p.run(ctx) })
	defer func() {
		cancel()
		wg.Wait()
	}()

	buf := make([]byte, maxHeartbeatLen)
	last := uint64(41)
	for i := range 5 {
		if err := to.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := to.Read(buf)
		if err != nil {
			t.Fatalf("heartbeat %d: %v", i, err)
		}
		hb, err := decodeHeartbeat(buf[:n])
		if err != nil {
			t.Fatal(err)
		}
		if hb.Name != "lb1" || hb.State != StateActive || hb.BootID != 7 || string(hb.Payload) != "digest" || hb.Seq <= last {
			t.Fatalf("heartbeat %d = %+v, want the round repeated with a sequence number above %d", i, hb, last)
		}
		last = hb.Seq
	}
	if got := p.sentCount(); got < 5 {
		t.Errorf("sent = %d, want at least 5", got)
	}
	running()
}

// TestPacerQuietWhileLoopSends: a round the loop sent less than an interval ago is not repeated.
func TestPacerQuietWhileLoopSends(t *testing.T) {
	from, to := udpPair(t)
	p := &pacer{seq: new(atomic.Uint64), logger: slog.New(slog.DiscardHandler)}
	round := &pacedRound{
		hb:       heartbeat{Name: "lb1", State: StateStandby, BootID: 7},
		interval: time.Hour,
		sends:    []pacedSend{{conn: from, to: to.LocalAddr().(*net.UDPAddr).AddrPort()}},
	}
	p.publish(round)
	p.sentAt(time.Now())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	p.run(ctx) // returns within half an interval of ctx's end
	if got := p.sent.Load(); got != 0 {
		t.Errorf("sent = %d while the loop is on time, want 0", got)
	}
}

// TestDatagramWaiting: the kernel's queue is seen without reading from it.
func TestDatagramWaiting(t *testing.T) {
	from, to := udpPair(t)
	if datagramWaiting(to) {
		t.Fatal("datagram waiting on a fresh socket")
	}
	if _, err := from.WriteToUDPAddrPort([]byte("hb"), to.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !datagramWaiting(to) {
		if time.Now().After(deadline) {
			t.Fatal("datagram sent but not seen waiting")
		}
		time.Sleep(time.Millisecond)
	}
	if datagramWaiting(to) != true {
		t.Fatal("looking consumed the datagram")
	}
	buf := make([]byte, 16)
	if _, _, err := to.ReadFromUDPAddrPort(buf); err != nil {
		t.Fatal(err)
	}
	if datagramWaiting(to) {
		t.Error("datagram still waiting after it was read")
	}
}

// TestPacerSkipsSupersededRound: a round the loop has replaced meanwhile is not sent under
// a newer sequence number (the peer would take its older state for the latest).
func TestPacerSkipsSupersededRound(t *testing.T) {
	from, to := udpPair(t)
	p := &pacer{seq: new(atomic.Uint64), logger: slog.New(slog.DiscardHandler)}
	sends := []pacedSend{{conn: from, to: to.LocalAddr().(*net.UDPAddr).AddrPort()}}
	old := &pacedRound{hb: heartbeat{Name: "lb2", State: StateStandby, BootID: 7}, interval: time.Second, sends: sends}
	p.publish(&pacedRound{hb: heartbeat{Name: "lb2", State: StateActive, BootID: 7}, interval: time.Second, sends: sends})
	p.send(old, nil)
	if got := p.sent.Load(); got != 0 {
		t.Errorf("sent %d heartbeats of a superseded round, want 0", got)
	}
}

// checkRealTime checks, while the pacer process runs, that every one of its threads is
// SCHED_FIFO (policy 1, the 41st field of /proc/PID/task/TID/stat).
func checkRealTime(t *testing.T) {
	t.Helper()
	var pids []string
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: the fields after the last ')'.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(path), "cmdline"))
		if len(f) > 1 && f[1] == fmt.Sprint(os.Getpid()) && strings.Contains(string(cmdline), PacerArg) {
			pids = append(pids, filepath.Base(filepath.Dir(path)))
		}
	}
	if len(pids) != 1 {
		t.Fatalf("pacer processes: %v, want one", pids)
	}
	tasks, _ := filepath.Glob("/proc/" + pids[0] + "/task/*/stat")
	for _, path := range tasks {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		// f[0] is field 3 (state), so field 41 (policy) is f[38].
		if len(f) < 39 || f[38] != "1" {
			t.Errorf("pacer thread %s: policy %v, want 1 (SCHED_FIFO)", path, f[38:39])
		}
	}
	t.Logf("pacer process %s: %d threads, all SCHED_FIFO", pids[0], len(tasks))
}

func TestPaceMemRound(t *testing.T) {
	m := paceMem(make([]byte, memSize))
	var r pacerRound
	if m.readRound(&r) {
		t.Fatal("readRound of an empty page reported a round")
	}
	hb, err := heartbeat{Name: "lb1", State: StateActive, BootID: 9}.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	dests := []pacedDest{
		{sock: 0, to: netip.MustParseAddrPort("192.168.77.3:1026")},
		{sock: 1, to: netip.MustParseAddrPort("[fd77::3]:1026")},
	}
	m.writeRound(5*time.Millisecond, hb, dests)
	if !m.readRound(&r) {
		t.Fatal("readRound after writeRound: no round")
	}
	if r.interval != 5*time.Millisecond || string(r.hb) != string(hb) || !slices.Equal(r.dests, dests) {
		t.Errorf("read %+v, want interval 5ms, %x, %v", r, hb, dests)
	}
	m.word(memVersion).Add(1) // a writer in the middle of a round
	if m.readRound(&r) {
		t.Error("readRound reported a round being written")
	}
}

func FuzzPaceMemRound(f *testing.F) {
	m := paceMem(make([]byte, memSize))
	hb, _ := heartbeat{Name: "lb1", State: StateActive}.AppendBinary(nil)
	m.writeRound(time.Millisecond, hb, []pacedDest{{to: netip.MustParseAddrPort("10.0.0.1:1026")}})
	f.Add([]byte(m))
	f.Fuzz(func(t *testing.T, b []byte) {
		page := paceMem(make([]byte, memSize))
		copy(page, b)
		var r pacerRound
		page.readRound(&r)
	})
}

// TestPacerWait: the pacer process wakes a quarter interval after a round is due, so once
// per round while the loop keeps time.
func TestPacerWait(t *testing.T) {
	ms := time.Millisecond
	for _, tt := range []struct{ interval, since, want time.Duration }{
		{50 * ms, 0, 62500 * time.Microsecond},       // it has just sent
		{50 * ms, 12500 * time.Microsecond, 50 * ms}, // the loop sent on time, a quarter ago
		{50 * ms, 49 * ms, 13500 * time.Microsecond}, // the loop's round is due in 1ms
		{50 * ms, 80 * ms, 12500 * time.Microsecond}, // overdue (the caller sends first)
		{5 * ms, 1250 * time.Microsecond, 5 * ms},    // failover.nettimeout 0.02
	} {
		if got := pacerWait(tt.interval, tt.since); got != tt.want {
			t.Errorf("pacerWait(%v, %v) = %v, want %v", tt.interval, tt.since, got, tt.want)
		}
	}
}

// TestLateAfterStall: a silent peer whose heartbeat waits unread in the socket defers the
// verdict while the silence is under twice the timeout, and after a stall of the loop
// itself whatever its length; otherwise the peer is lost.
func TestLateAfterStall(t *testing.T) {
	const timeout = 20 * time.Millisecond
	now := time.Unix(1000, 0)
	for _, tc := range []struct {
		name            string
		silent, stalled time.Duration // since the peer was heard; since the loop last ran
		waiting         bool          // a datagram waits in the socket
		want            bool
	}{
		{"heard within the timeout", timeout / 2, 0, false, true},
		{"silent, nothing waiting", timeout * 3 / 2, 0, false, false},
		{"silent under twice the timeout, a datagram waiting", timeout * 3 / 2, 0, true, true},
		{"silent for long, a datagram waiting, the loop on time", 10 * timeout, timeout / 4, true, false},
		{"silent for long, a datagram waiting, the loop stalled", 10 * timeout, 10 * timeout, true, true},
		{"silent for long, nothing waiting, the loop stalled", 10 * timeout, 10 * timeout, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from, to := udpPair(t)
			if tc.waiting {
				if _, err := from.WriteToUDPAddrPort([]byte("hb"), to.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "the datagram to wait in the socket", func() bool { return datagramWaiting(to) })
			}
			l := &loop{
				cfg:    Config{Timeout: timeout},
				events: make(chan event),
				conns:  map[netip.AddrPort]*net.UDPConn{{}: to},
				peer:   peerInfo{name: "lb1", lastHeard: now.Add(-tc.silent)},
				turnAt: now.Add(-tc.stalled),
			}
			if got := l.late(now); got != tc.want {
				t.Errorf("late = %v, want %v", got, tc.want)
			}
		})
	}
}
