package conntrack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestListenerEvents is modelled on ti-mo/conntrack's event test: create, update and
// delete a flow, and expect exactly those events, with the NATed reply tuple.
func TestListenerEvents(t *testing.T) {
	ns := natNS(t, "ctlev")
	tbl := openTable(t, ns)
	events, _ := listen(t, ns, 1<<20)

	for _, f := range []Flow{{
		Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 120, Mark: 5,
		Orig:  tup("10.0.0.1:40000", "10.0.0.10:3306"),
		Reply: tup("10.1.0.100:3306", "10.1.0.10:40000"),
	}, {
		Proto: unix.IPPROTO_UDP, Timeout: 120,
		Orig:  tup("[fd00::1]:5000", "[fd00::10]:53"),
		Reply: tup("[fd01::100]:53", "[fd00::1]:5000"),
	}} {
		t.Run(f.String(), func(t *testing.T) {
			if err := tbl.Inject(f); err != nil {
				t.Fatal(err)
			}
			got := expectEvents(t, events, Event{Type: EventNew, Flow: f})
			if len(got) > 0 {
				checkFlow(t, f, got[0].Flow)
				if got[0].PortID == 0 || got[0].PortID != tbl.PortID() {
					t.Errorf("event port id %d, want the table's %d", got[0].PortID, tbl.PortID())
				}
			}

			f.Timeout = 240
			if err := tbl.Inject(f); err != nil {
				t.Fatal(err)
			}
			got = expectEvents(t, events, Event{Type: EventUpdate, Flow: f})
			if len(got) > 0 {
				checkFlow(t, f, got[0].Flow)
			}

			if err := tbl.Delete(f); err != nil {
				t.Fatal(err)
			}
			got = expectEvents(t, events, Event{Type: EventDestroy, Flow: f})
			if len(got) > 0 && got[0].Flow.Reply != f.Reply {
				t.Errorf("destroy event reply = %v, want %v", got[0].Flow.Reply, f.Reply)
			}
		})
	}
}

// TestEventsOfEntriesInjectedBeforeListener shows why applianced sets
// net.netfilter.nf_conntrack_events to 1: an entry reports its end only if it got the event
// extension at creation. A standby injects its entries with no listener of its own, and
// becomes the one listening only when it takes over. With 1 the entries carry the extension
// whatever listens; with 0 they never do. The kernel's default, 2, adds it only while some
// event listener exists anywhere on the machine (a flag shared by all namespaces): here a
// test of another package may hold one, so that case is not checked.
func TestEventsOfEntriesInjectedBeforeListener(t *testing.T) {
	for _, tc := range []struct {
		sysctl  string
		destroy bool
	}{
		{sysctl: "1", destroy: true},
		{sysctl: "0", destroy: false},
	} {
		t.Run("nf_conntrack_events="+tc.sysctl, func(t *testing.T) {
			ns := natNS(t, "ctlext")
			ns.MustRun("sysctl", "-q", "-w", "net.netfilter.nf_conntrack_events="+tc.sysctl)
			tbl := openTable(t, ns)
			f := Flow{
				Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 120,
				Orig:  tup("10.0.0.1:40000", "10.0.0.10:3306"),
				Reply: tup("10.1.0.100:3306", "10.1.0.10:40000"),
			}
			if err := tbl.Inject(f); err != nil {
				t.Fatal(err)
			}
			events, _ := listen(t, ns, 1<<20)
			if err := tbl.Delete(f); err != nil {
				t.Fatal(err)
			}
			if tc.destroy {
				expectEvents(t, events, Event{Type: EventDestroy, Flow: f})
			} else {
				expectEvents(t, events)
			}
		})
	}
}

// TestListenerOverrun proves that a listener whose socket overflows reports EventOverrun
// and then carries on delivering events.
func TestListenerOverrun(t *testing.T) {
	tbl, l := tinyListener(t, "ctlov")
	if n, err := l.ReadBuffer(); err != nil || n > 8192 {
		t.Fatalf("receive buffer = %d, %v; want the kernel minimum", n, err)
	}

	// Fill the socket before Run reads anything: events queue from NewListener on.
	const burst = 200
	flow := numberedFlow
	for i := range burst {
		if err := tbl.Inject(flow(i)); err != nil {
			t.Fatal(err)
		}
	}

	events := make(chan Event, 2*burst)
	runListener(t, l, func(e Event) { events <- e })

	// The first thing read is the overrun, then what the socket had room for. Once Run
	// has drained the socket the kernel delivers again (it stays "congested", dropping
	// silently, until the queue is empty), so keep adding flows until one is seen.
	var overruns, news int
	next := burst
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(10 * time.Second)
wait:
	for {
		select {
		case e := <-events:
			switch e.Type {
			case EventOverrun:
				overruns++
			case EventNew:
				news++
				if port := e.Flow.Orig.Src.Port(); overruns > 0 && port >= 10000+burst {
					break wait // Run carried on past the overrun
				}
			}
		case <-tick.C:
			if overruns > 0 {
				if err := tbl.Inject(flow(next)); err != nil {
					t.Fatal(err)
				}
				next++
			}
		case <-timeout:
			t.Fatalf("after 10s: %d overruns, %d new events, none after the overrun", overruns, news)
		}
	}
	if news > burst/2 {
		t.Errorf("%d of %d new events delivered: the buffer was not overrun", news, next)
	}
	t.Logf("%d overruns, %d of %d new events delivered", overruns, news, next)
}

// TestListenerClose proves that Close ends Run with nil, that Run runs only once, and
// that a context cancelled before Run makes it return at once, and one cancelled while Run
// waits for events soon after.
func TestListenerClose(t *testing.T) {
	ns := natNS(t, "ctlcl")
	newListener := func() *Listener {
		var l *Listener
		ns.MustDo(func() (err error) {
			l, err = NewListener(0)
			return err
		})
		return l
	}

	l := newListener()
	done := make(chan error, 1)
	go func() { done <- l.Run(context.Background(), func(Event) {}) }()
	time.Sleep(50 * time.Millisecond) // let Run block in receive
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v after Close, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of Close")
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := l.Run(context.Background(), func(Event) {}); !errors.Is(err, ErrListenerRunning) {
		t.Errorf("second Run = %v, want ErrListenerRunning", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := newListener().Run(ctx, func(Event) {}); err != nil {
		t.Errorf("Run with a cancelled context = %v, want nil", err)
	}

	l = newListener()
	defer l.Close()
	ctx, cancel = context.WithCancel(context.Background())
	go func() { done <- l.Run(ctx, func(Event) {}) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v after its context ended, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of its context's end")
	}
}

// TestListenerOutsidePoller: the event socket is blocking, which is how os.NewFile knows to
// leave it out of the runtime's poller, whose thread each arriving event would otherwise
// wake while Run lingers (see Listener).
func TestListenerOutsidePoller(t *testing.T) {
	ns := natNS(t, "ctlpo")
	var l *Listener
	ns.MustDo(func() (err error) {
		l, err = NewListener(0)
		return err
	})
	defer l.Close()
	for _, f := range []*os.File{l.sock, l.wake} {
		rc, err := f.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var flags int
		var ferr error
		if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }); err != nil || ferr != nil {
			t.Fatal(err, ferr)
		}
		if flags&unix.O_NONBLOCK != 0 {
			t.Errorf("%s is non-blocking: the runtime's poller watches it", f.Name())
		}
	}
}

func ExampleListener_Run() {
	l, err := NewListener(8 << 20)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = l.Run(ctx, func(e Event) {
		if e.Type == EventOverrun {
			// events were lost: dump the table again and reconcile
			return
		}
		fmt.Println(e.Type, e.Flow)
	})
}

// TestListenerIgnorePortIDs proves that the events of one Table's changes can be dropped
// in the kernel while those of another Table, and those made after the filter is
// removed, still arrive.
func TestListenerIgnorePortIDs(t *testing.T) {
	ns := natNS(t, "ctlign")
	own, other := openTable(t, ns), openTable(t, ns)
	events, l := listen(t, ns, 1<<20)

	if err := l.SetFilter(EventFilter{IgnorePortIDs: []uint32{0}}); err == nil {
		t.Error("ignoring port id 0 succeeded; the kernel's own events cannot be ignored")
	}
	if err := l.SetFilter(EventFilter{IgnorePortIDs: []uint32{own.PortID(), 123456}}); err != nil {
		t.Fatal(err)
	}
	var batch []Flow
	for i := range 50 {
		batch = append(batch, mixedFlow(i, 100))
	}
	if errs := own.InjectBatch(batch); errs != nil {
		t.Fatal(errors.Join(errs...))
	}
	if err := own.Inject(mixedFlow(50, 100)); err != nil {
		t.Fatal(err)
	}
	f := mixedFlow(51, 100)
	if err := other.Inject(f); err != nil {
		t.Fatal(err)
	}
	if got := expectEvents(t, events, Event{Type: EventNew, Flow: f}); len(got) > 0 && got[0].PortID != other.PortID() {
		t.Errorf("event port id %d, want the other table's %d", got[0].PortID, other.PortID())
	}

	if err := l.SetFilter(EventFilter{}); err != nil {
		t.Fatal(err)
	}
	if err := own.Delete(batch[0]); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, events, Event{Type: EventDestroy, Flow: batch[0]})
	if err := l.SetFilter(EventFilter{}); err != nil {
		t.Errorf("removing no filter: %v", err)
	}
}

// TestReceiveAfterDeadline: a waiting read leaves no deadline behind. Once it had passed, a
// read that does not wait used to fail with "i/o timeout", and so did every batch after
// it: a standby under load stopped injecting for good.
func TestReceiveAfterDeadline(t *testing.T) {
	q, err := dialQuerier()
	if err != nil {
		t.Fatal(err)
	}
	defer q.close()
	q.recvTimeout = 20 * time.Millisecond
	if _, err := q.receive(true, false); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("waiting receive with nothing queued: %v, want a deadline error", err)
	}
	time.Sleep(2 * q.recvTimeout)
	if _, err := q.receive(false, true); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("receive without waiting after the deadline passed: %v, want EAGAIN", err)
	}
}

// TestListenerEstablishedTCP: with EventFilter.EstablishedTCP the kernel delivers a TCP
// entry's events only once it is assured and established (and then its destroy event), and
// every event of UDP. First on entries made through ctnetlink, whose events carry every
// field, then on a real connection over the namespace's loopback: its handshake and
// closing states never reach the listener, its established state does, once.
func TestListenerEstablishedTCP(t *testing.T) {
	ns := natNS(t, "ctlest")
	tbl := openTable(t, ns)
	events, l := listen(t, ns, 1<<20)
	if err := l.SetFilter(EventFilter{EstablishedTCP: true}); err != nil {
		t.Fatal(err)
	}

	assured := StatusAssured | StatusSeenReply
	handshake := Flow{Proto: unix.IPPROTO_TCP, TCPState: TCPStateSynSent, Timeout: 120,
		Orig: tup("10.0.0.1:40001", "10.0.0.10:3306"), Reply: tup("10.1.0.100:3306", "10.1.0.10:40001")}
	established := Flow{Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 120, Status: assured,
		Orig: tup("10.0.0.1:40002", "10.0.0.10:3306"), Reply: tup("10.1.0.100:3306", "10.1.0.10:40002")}
	udp := Flow{Proto: unix.IPPROTO_UDP, Timeout: 30,
		Orig: tup("[fd00::1]:5000", "[fd00::10]:53"), Reply: tup("[fd01::100]:53", "[fd00::1]:5000")}
	for _, f := range []Flow{handshake, established, udp} {
		if err := tbl.Inject(f); err != nil {
			t.Fatal(err)
		}
	}
	expectEvents(t, events, Event{Type: EventNew, Flow: established}, Event{Type: EventNew, Flow: udp})

	closing := established
	closing.TCPState, closing.Timeout = TCPStateTimeWait, 60
	if err := tbl.Inject(closing); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, events) // the closing state is dropped
	for _, f := range []Flow{handshake, established, udp} {
		if err := tbl.Delete(f); err != nil {
			t.Fatal(err)
		}
	}
	expectEvents(t, events, Event{Type: EventDestroy, Flow: established}, Event{Type: EventDestroy, Flow: udp})

	// A real connection: SYN, SYN-ACK, ACK, data both ways, FIN both ways.
	var ln net.Listener
	var conn net.Conn
	ns.MustDo(func() (err error) {
		if ln, err = net.Listen("tcp4", "127.0.0.1:0"); err != nil {
			return err
		}
		conn, err = net.Dial("tcp4", ln.Addr().String())
		return err
	})
	defer ln.Close()
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	echo := func(from, to net.Conn) {
		if _, err := from.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		if _, err := io.ReadFull(to, b[:]); err != nil {
			t.Fatal(err)
		}
	}
	echo(conn, peer)
	echo(peer, conn)
	ev := nextEvent(t, events)
	if ev.Type != EventUpdate || ev.Flow.TCPState != TCPStateEstablished || ev.Flow.Status&StatusAssured == 0 ||
		ev.Flow.Orig.Src.String() != conn.LocalAddr().String() {
		t.Errorf("first event of the connection: %v %+v, want an update to ESTABLISHED, assured, from %v", ev.Type, ev.Flow, conn.LocalAddr())
	}
	conn.Close()
	peer.Close()
	expectEvents(t, events) // FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT: dropped
}

// TestListenerLinger: with a linger, events that come while the reader waits are read in
// one go, and none is lost or reordered.
func TestListenerLinger(t *testing.T) {
	ns := natNS(t, "ctlling")
	tbl := openTable(t, ns)
	var l *Listener
	ns.MustDo(func() (err error) { l, err = NewListener(1 << 20); return err })
	l.SetLinger(5 * time.Millisecond)
	ch := make(chan Event, 1<<12)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx, func(e Event) { ch <- e }) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return within 5s of cancel")
		}
	}()
	var want []Event
	for i := range 200 {
		f := mixedFlow(i, 100)
		if err := tbl.Inject(f); err != nil {
			t.Fatal(err)
		}
		want = append(want, Event{Type: EventNew, Flow: f})
	}
	expectEvents(t, ch, want...)
}

// TestListenerBurstDone: events already waiting in the socket are one burst, done once they
// are all delivered; a burst longer than burstMax is also done at every burstMax events.
func TestListenerBurstDone(t *testing.T) {
	for _, tc := range []struct {
		events, calls int
	}{
		{300, 1},
		{burstMax + 100, 2},
	} {
		t.Run(fmt.Sprint(tc.events), func(t *testing.T) {
			ns := natNS(t, "ctlburst")
			tbl := openTable(t, ns)
			var l *Listener
			ns.MustDo(func() (err error) { l, err = NewListener(16 << 20); return err })
			flows := make([]Flow, tc.events)
			for i := range flows {
				flows[i] = mixedFlow(i, 100)
			}
			for _, err := range tbl.InjectBatch(flows) {
				if err != nil {
					t.Fatal(err)
				}
			}
			var delivered, atLastCall int // Run's goroutine only, until it returns
			var calls []int
			ctx, cancel := context.WithCancel(context.Background())
			l.SetBurstDone(func() {
				calls = append(calls, delivered)
				atLastCall = delivered
				if delivered == tc.events {
					cancel()
				}
			})
			done := make(chan error, 1)
			go func() {
				done <- l.Run(ctx, func(Event) { delivered++ })
			}()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				cancel()
				<-done
			}
			if delivered != tc.events || atLastCall != tc.events || len(calls) != tc.calls {
				t.Errorf("%d events delivered, burst-done calls after %v; want %d events and %d calls, the last after all",
					delivered, calls, tc.events, tc.calls)
			}
		})
	}
}

// FuzzNextMessage: the splitter of received datagrams never panics, and every message it
// returns lies within the input, its header's length covering it.
func FuzzNextMessage(f *testing.F) {
	f.Add([]byte{20, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0})
	f.Add([]byte{16, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		for rest := b; len(rest) > 0; {
			m, next, ok := nextMessage(rest)
			if !ok {
				return
			}
			if int(m.Header.Length) != unix.NLMSG_HDRLEN+len(m.Data) || len(next) >= len(rest) {
				t.Fatalf("message %+v of %d bytes from %d, %d left", m.Header, len(m.Data), len(rest), len(next))
			}
			rest = next
		}
	})
}

// TestBusyMeter: a Listener lingers only while events come faster than lingerBusyRate.
func TestBusyMeter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var m busyMeter
	m.start = t0
	for _, step := range []struct {
		after time.Duration // since t0
		n     int
		busy  bool
	}{
		{10 * time.Millisecond, 150, false},  // the window is not over: no verdict yet
		{100 * time.Millisecond, 100, true},  // 250 in 100ms: 2500/s
		{150 * time.Millisecond, 10, true},   // window not over: the last verdict holds
		{300 * time.Millisecond, 100, false}, // 110 in 200ms: 550/s
		{400 * time.Millisecond, 0, false},
	} {
		m.add(step.n, t0.Add(step.after))
		if m.busy != step.busy {
			t.Errorf("at %v after %d events: busy %v, want %v", step.after, step.n, m.busy, step.busy)
		}
	}
}

// TestListenerOverrunSilentDrops proves that events the kernel drops after reporting an
// overrun, while the socket is still congested, are reported as another overrun: the kernel
// itself reports only the first drop until the socket is read empty.
func TestListenerOverrunSilentDrops(t *testing.T) {
	tbl, l := tinyListener(t, "ctlsd")
	flow := numberedFlow
	const burst, late = 100, 50
	for i := range burst {
		if err := tbl.Inject(flow(i)); err != nil {
			t.Fatal(err)
		}
	}
	events := make(chan Event, 4*(burst+late))
	overruns := 0 // Run's goroutine only
	runListener(t, l, func(e Event) {
		if e.Type == EventOverrun {
			if overruns++; overruns == 1 {
				// The caller's repair (a re-dump) would start now; these entries come
				// after it, and the socket, still full, drops their events.
				for i := burst; i < burst+late; i++ {
					if err := tbl.Inject(flow(i)); err != nil {
						t.Error(err)
					}
				}
			}
		}
		events <- e
	})
	var seenOverruns, lateNews int
	timeout := time.After(10 * time.Second)
	for seenOverruns < 2 && lateNews < late {
		select {
		case e := <-events:
			switch {
			case e.Type == EventOverrun:
				seenOverruns++
			case e.Type == EventNew && e.Flow.Orig.Src.Port() >= 10000+burst:
				lateNews++
			}
		case <-timeout:
			t.Fatalf("after 10s: %d overruns, %d of %d events after the first delivered: the rest were lost unreported",
				seenOverruns, lateNews, late)
		}
	}
	t.Logf("%d overruns, %d of %d events after the first delivered", seenOverruns, lateNews, late)
}

// tinyListener returns a table and a listener, with the smallest receive buffer the kernel
// gives (a few events fill it), in a new NAT namespace.
func tinyListener(t *testing.T, name string) (*Table, *Listener) {
	t.Helper()
	ns := natNS(t, name)
	tbl := openTable(t, ns)
	var l *Listener
	ns.MustDo(func() (err error) {
		l, err = NewListener(1)
		return err
	})
	return tbl, l
}

// numberedFlow returns the i-th of a series of NATed UDP flows, source port 10000+i.
func numberedFlow(i int) Flow {
	return Flow{
		Proto: unix.IPPROTO_UDP, Timeout: 60,
		Orig:  Tuple{Src: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(10000+i)), Dst: ap("10.0.0.10:53")},
		Reply: Tuple{Src: ap("10.1.0.100:53"), Dst: netip.AddrPortFrom(netip.MustParseAddr("10.1.0.10"), uint16(10000+i))},
	}
}
