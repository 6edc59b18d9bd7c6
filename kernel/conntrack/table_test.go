package conntrack

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

const natBits = StatusSrcNAT | StatusDstNAT | StatusSrcNATDone | StatusDstNATDone

// TestInjectNAT proves that Inject builds the NAT attributes right: the kernel computes
// the NATed reply tuple from them and sets the NAT status bits itself.
func TestInjectNAT(t *testing.T) {
	ns := natNS(t, "ctinj")
	tbl := openTable(t, ns)

	tests := []struct {
		name    string
		flow    Flow
		wantNAT uint32 // the NAT bits expected of the four in natBits (a NAT in one
		// direction gives the other a null binding, which sets its DONE bit too)
		wantTCP  bool
		wantFlag uint32 // other status bits that must be set
	}{{
		name: "tcp dnat and snat",
		flow: Flow{
			Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 300, Mark: 7,
			Status: StatusAssured | StatusSeenReply,
			Orig:   tup("10.0.0.1:40000", "10.0.0.10:3306"),
			Reply:  tup("10.1.0.100:3306", "10.1.0.10:40000"),
		},
		wantNAT:  natBits,
		wantTCP:  true,
		wantFlag: StatusAssured | StatusSeenReply | StatusConfirmed,
	}, {
		name: "tcp dnat with port translation only",
		flow: Flow{
			Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 300,
			Orig:  tup("10.0.0.2:40001", "10.0.0.10:80"),
			Reply: tup("10.1.0.100:8080", "10.0.0.2:40001"),
		},
		wantNAT:  StatusDstNAT | StatusDstNATDone | StatusSrcNATDone,
		wantTCP:  true,
		wantFlag: StatusConfirmed,
	}, {
		name: "udp dnat only",
		flow: Flow{
			Proto: unix.IPPROTO_UDP, Timeout: 120,
			Orig:  tup("10.0.0.3:5000", "10.0.0.10:53"),
			Reply: tup("10.1.0.100:53", "10.0.0.3:5000"),
		},
		wantNAT:  StatusDstNAT | StatusDstNATDone | StatusSrcNATDone,
		wantFlag: StatusConfirmed,
	}, {
		name: "udp snat only",
		flow: Flow{
			Proto: unix.IPPROTO_UDP, Timeout: 120,
			Orig:  tup("10.1.0.100:6000", "192.0.2.1:53"),
			Reply: tup("192.0.2.1:53", "10.0.0.10:6000"),
		},
		wantNAT:  StatusSrcNAT | StatusSrcNATDone | StatusDstNATDone,
		wantFlag: StatusConfirmed,
	}, {
		name: "tcp no nat",
		flow: Flow{
			Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 300,
			Orig:  tup("10.0.0.4:40000", "10.1.0.100:22"),
			Reply: tup("10.1.0.100:22", "10.0.0.4:40000"),
		},
		wantTCP:  true,
		wantFlag: StatusConfirmed,
	}, {
		name: "tcp ipv6 dnat and snat with port translation",
		flow: Flow{
			Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 300,
			Orig:  tup("[fd00::1]:40000", "[fd00::10]:443"),
			Reply: tup("[fd01::100]:8443", "[fd01::10]:40000"),
		},
		wantNAT:  natBits,
		wantTCP:  true,
		wantFlag: StatusConfirmed,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tbl.Inject(tt.flow); err != nil {
				t.Fatal(err)
			}
			got := mustGet(t, tbl, tt.flow)
			checkFlow(t, tt.flow, got)
			if n := got.Status & natBits; n != tt.wantNAT {
				t.Errorf("NAT status bits = %#x, want %#x (status %#x)", n, tt.wantNAT, got.Status)
			}
			if got.Status&tt.wantFlag != tt.wantFlag {
				t.Errorf("status %#x lacks %#x", got.Status, tt.wantFlag)
			}

			// The same entry, as Dump shows it.
			var dumped []Flow
			if err := tbl.Dump(context.Background(), func(f Flow) error {
				if f.Orig == tt.flow.Orig {
					dumped = append(dumped, f)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if len(dumped) != 1 {
				t.Fatalf("dump has %d entries for %v, want 1", len(dumped), tt.flow.Orig)
			}
			checkFlow(t, tt.flow, dumped[0])

			if tt.wantTCP {
				// Be liberal in both directions (DESIGN fact 6). The kernel reports
				// struct nf_ct_tcp_flags as {flags, mask=0}: the flag byte comes first.
				tcp := rawGet(t, tbl, tt.flow).ProtoInfo.TCP
				if tcp == nil || tcp.OriginalFlags>>8&tcpFlagBeLiberal == 0 || tcp.ReplyFlags>>8&tcpFlagBeLiberal == 0 {
					t.Errorf("TCP protoinfo %+v lacks BE_LIBERAL in both directions", tcp)
				}
			}
		})
	}

	// The conntrack CLI, a second decoder, sees the first flow NATed too.
	out := ns.MustRun("conntrack", "-L", "-p", "tcp", "--orig-src", "10.0.0.1", "--orig-port-src", "40000")
	for _, want := range []string{"src=10.1.0.100 dst=10.1.0.10 sport=3306 dport=40000", "[ASSURED]", "mark=7", "ESTABLISHED"} {
		if !strings.Contains(out, want) {
			t.Errorf("conntrack -L lacks %q:\n%s", want, out)
		}
	}
}

// checkFlow compares what the kernel holds with what was injected.
func checkFlow(t *testing.T, want, got Flow) {
	t.Helper()
	if got.Proto != want.Proto || got.Orig != want.Orig || got.Reply != want.Reply {
		t.Errorf("kernel holds %v, want %v", got, want)
	}
	if got.TCPState != want.TCPState || got.Mark != want.Mark {
		t.Errorf("state/mark = %d/%d, want %d/%d", got.TCPState, got.Mark, want.TCPState, want.Mark)
	}
	if got.Timeout > want.Timeout || got.Timeout+5 < want.Timeout {
		t.Errorf("timeout = %d, want about %d", got.Timeout, want.Timeout)
	}
	if got.ID == 0 {
		t.Errorf("entry id is 0")
	}
}

// rawGet returns the entry as ti-mo/conntrack decodes it, with all its attributes.
func rawGet(t *testing.T, tbl *Table, f Flow) *ct.Flow {
	t.Helper()
	var got *ct.Flow
	err := tbl.query(func() (netlink.Message, error) { return getMessage(f.Proto, f.Orig) },
		func(m netlink.Message) error {
			m.Header.Type = netlink.HeaderType(uint16(netfilter.NFSubsysCTNetlink)<<8 | msgCTNew)
			var ev ct.Event
			if err := ev.Unmarshal(m); err != nil {
				return err
			}
			got = ev.Flow
			return nil
		})
	if err != nil || got == nil {
		t.Fatalf("get %v: %v, %v", f, got, err)
	}
	return got
}

// TestInjectUpdate proves that injecting an entry again with the same NAT binding updates
// it in place (update events only; kernel ids cannot tell, since a recreated entry often
// reuses the freed one's memory and so its id) and that status bits the kernel refuses to
// clear do not make a later Inject fail.
func TestInjectUpdate(t *testing.T) {
	ns := natNS(t, "ctupd")
	tbl := openTable(t, ns)
	events, _ := listen(t, ns, 0)

	f := Flow{
		Proto: unix.IPPROTO_TCP, TCPState: TCPStateSynRecv, Timeout: 100, Mark: 1,
		Orig:  tup("10.0.0.1:40000", "10.0.0.10:3306"),
		Reply: tup("10.1.0.100:3306", "10.1.0.10:40000"),
	}
	if err := tbl.Inject(f); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, events, Event{Type: EventNew, Flow: f})
	if got := mustGet(t, tbl, f); got.Status&StatusAssured != 0 {
		t.Fatalf("status %#x: ASSURED set without being asked", got.Status)
	}

	f.TCPState, f.Timeout, f.Mark, f.Status = TCPStateEstablished, 500, 2, StatusAssured|StatusSeenReply
	if err := tbl.Inject(f); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, events, Event{Type: EventUpdate, Flow: f})
	got := mustGet(t, tbl, f)
	checkFlow(t, f, got)
	if want := StatusAssured | StatusSeenReply | natBits; got.Status&want != want {
		t.Errorf("status = %#x after update, want %#x set", got.Status, want)
	}

	// ASSURED cannot be cleared: a mirror that sends it without must still succeed.
	f.Status, f.Mark, f.Timeout = 0, 0, 200
	if err := tbl.Inject(f); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, events, Event{Type: EventUpdate, Flow: f})
	checkFlow(t, f, mustGet(t, tbl, f))

	// The same flow again changes nothing but the timeout.
	if err := tbl.Inject(f); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, events, Event{Type: EventUpdate, Flow: f})
	checkFlow(t, f, mustGet(t, tbl, f))
}

// TestInjectChangedNAT proves that a changed NAT binding replaces the entry (the kernel
// cannot change NAT in place): destroy and new events, and the new reply tuple.
func TestInjectChangedNAT(t *testing.T) {
	ns := natNS(t, "ctchg")
	tbl := openTable(t, ns)
	events, _ := listen(t, ns, 0)

	f := Flow{
		Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 300,
		Orig:  tup("10.0.0.1:40000", "10.0.0.10:3306"),
		Reply: tup("10.1.0.100:3306", "10.1.0.10:40000"),
	}
	if err := tbl.Inject(f); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, events, Event{Type: EventNew, Flow: f})

	for _, reply := range []Tuple{
		tup("10.1.0.101:3306", "10.1.0.10:40000"), // another pool member
		tup("10.1.0.101:3306", "10.1.0.11:40000"), // another SNAT address
		tup("10.1.0.101:3306", "10.0.0.1:40000"),  // SNAT dropped
		tup("10.0.0.10:3306", "10.0.0.1:40000"),   // no NAT at all
		tup("10.1.0.100:3306", "10.1.0.10:40000"), // back to the first binding
	} {
		f.Reply = reply
		if err := tbl.Inject(f); err != nil {
			t.Fatal(err)
		}
		got := expectEvents(t, events, Event{Type: EventDestroy, Flow: f}, Event{Type: EventNew, Flow: f})
		if len(got) == 2 && got[1].Flow.Reply != reply {
			t.Errorf("new event has reply %v, want %v", got[1].Flow.Reply, reply)
		}
		checkFlow(t, f, mustGet(t, tbl, f))
	}
}

func TestDeleteAndGet(t *testing.T) {
	ns := natNS(t, "ctdel")
	tbl := openTable(t, ns)

	f := Flow{
		Proto: unix.IPPROTO_UDP, Timeout: 60,
		Orig:  tup("[fd00::1]:5000", "[fd00::10]:53"),
		Reply: tup("[fd01::100]:53", "[fd01::10]:5000"),
	}
	if _, ok, err := tbl.Get(f.Proto, f.Orig); err != nil || ok {
		t.Fatalf("Get before inject = ok %v, err %v; want none", ok, err)
	}
	if err := tbl.Inject(f); err != nil {
		t.Fatal(err)
	}
	checkFlow(t, f, mustGet(t, tbl, f))
	for range 2 { // the second delete finds nothing, which is not an error
		if err := tbl.Delete(f); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, err := tbl.Get(f.Proto, f.Orig); err != nil || ok {
		t.Fatalf("Get after delete = ok %v, err %v; want none", ok, err)
	}
}

func TestInvalidFlow(t *testing.T) {
	ns := natNS(t, "ctinv")
	tbl := openTable(t, ns)
	for _, c := range []struct {
		flow    Flow
		badOrig bool // Delete and Get look at Proto and Orig only
	}{
		{Flow{Proto: unix.IPPROTO_ICMP, Orig: tup("10.0.0.1:0", "10.0.0.2:0")}, true},
		{Flow{Proto: unix.IPPROTO_TCP, Orig: Tuple{Src: ap("10.0.0.1:1")}}, true},
		{Flow{Proto: unix.IPPROTO_TCP, Orig: tup("10.0.0.1:1", "[fd00::1]:2")}, true},
		{Flow{Proto: unix.IPPROTO_TCP, Orig: tup("10.0.0.1:1", "10.0.0.2:2"), Reply: tup("[fd00::1]:2", "10.0.0.1:1")}, false},
	} {
		if err := tbl.Inject(c.flow); !errors.Is(err, ErrInvalidFlow) {
			t.Errorf("Inject(%v) = %v, want ErrInvalidFlow", c.flow, err)
		}
		if !c.badOrig {
			continue
		}
		if err := tbl.Delete(c.flow); !errors.Is(err, ErrInvalidFlow) {
			t.Errorf("Delete(%v) = %v, want ErrInvalidFlow", c.flow, err)
		}
		if _, _, err := tbl.Get(c.flow.Proto, c.flow.Orig); !errors.Is(err, ErrInvalidFlow) {
			t.Errorf("Get(%v) = %v, want ErrInvalidFlow", c.flow, err)
		}
	}
}

// TestDump proves that Dump returns the TCP/UDP entries of both families, skips other
// protocols, stops at fn's error and honours a cancelled context.
func TestDump(t *testing.T) {
	ns := natNS(t, "ctdmp")
	tbl := openTable(t, ns)

	flows := []Flow{
		{Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 300,
			Orig: tup("10.0.0.1:40000", "10.0.0.10:80"), Reply: tup("10.1.0.100:80", "10.1.0.10:40000")},
		{Proto: unix.IPPROTO_UDP, Timeout: 300,
			Orig: tup("10.0.0.1:40000", "10.0.0.10:53"), Reply: tup("10.1.0.100:53", "10.1.0.10:40000")},
		{Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 300,
			Orig: tup("[fd00::1]:40000", "[fd00::10]:80"), Reply: tup("[fd01::100]:80", "[fd01::10]:40000")},
	}
	for _, f := range flows {
		if err := tbl.Inject(f); err != nil {
			t.Fatal(err)
		}
	}
	// An SCTP entry, which Dump must leave out.
	sctp := ct.NewFlow(unix.IPPROTO_SCTP, 0, netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.10"), 1, 2, 300, 0)
	ns.MustDo(func() error {
		c, err := ct.Dial(nil)
		if err != nil {
			return err
		}
		defer c.Close()
		return c.Create(sctp)
	})

	got := map[Tuple]Tuple{}
	if err := tbl.Dump(context.Background(), func(f Flow) error {
		got[f.Orig] = f.Reply
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := map[Tuple]Tuple{}
	for _, f := range flows {
		want[f.Orig] = f.Reply
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("dump (-want +got):\n%s", diff)
	}

	stop := errors.New("stop")
	calls := 0
	if err := tbl.Dump(context.Background(), func(Flow) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Errorf("Dump with failing fn = %v after %d calls, want stop after 1", err, calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := tbl.Dump(ctx, func(Flow) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Dump with cancelled ctx = %v", err)
	}
}

// TestDefaultTimeout proves that the timeouts are read from the namespace of the caller.
func TestDefaultTimeout(t *testing.T) {
	ns := natNS(t, "cttmo")
	ns.MustRun("sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_established=4321",
		"net.netfilter.nf_conntrack_udp_timeout_stream=99")
	ns.MustDo(func() error {
		for _, c := range []struct {
			proto, state uint8
			want         uint32
		}{
			{unix.IPPROTO_TCP, TCPStateEstablished, 4321},
			{unix.IPPROTO_UDP, 0, 99},
		} {
			got, err := DefaultTimeout(c.proto, c.state)
			if err != nil {
				return err
			}
			if got != c.want {
				t.Errorf("DefaultTimeout(%d, %d) = %d in the namespace, want %d", c.proto, c.state, got, c.want)
			}
		}
		for state := TCPStateSynSent; state <= TCPStateSynSent2; state++ {
			if got, err := DefaultTimeout(unix.IPPROTO_TCP, state); err != nil || got == 0 {
				t.Errorf("DefaultTimeout(tcp, %d) = %d, %v", state, got, err)
			}
		}
		return nil
	})
	if got, err := DefaultTimeout(unix.IPPROTO_TCP, TCPStateEstablished); err != nil || got == 4321 {
		t.Errorf("DefaultTimeout outside the namespace = %d, %v; want the host's value", got, err)
	}
	for _, c := range [][2]uint8{{unix.IPPROTO_ICMP, 0}, {unix.IPPROTO_TCP, TCPStateNone}, {unix.IPPROTO_TCP, 42}} {
		if _, err := DefaultTimeout(c[0], c[1]); !errors.Is(err, ErrUnsupported) {
			t.Errorf("DefaultTimeout(%d, %d) = %v, want ErrUnsupported", c[0], c[1], err)
		}
	}
}

// TestInjectReplyClash proves that a NAT binding whose reply tuple another entry already
// holds is refused with EEXIST, and leaves the other entry alone.
func TestInjectReplyClash(t *testing.T) {
	ns := natNS(t, "ctcla")
	tbl := openTable(t, ns)

	a := Flow{
		Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 300,
		Orig:  tup("10.0.0.1:40000", "10.0.0.10:3306"),
		Reply: tup("10.1.0.100:3306", "10.1.0.10:40000"),
	}
	b := a
	b.Orig = tup("10.0.0.2:40000", "10.0.0.10:3306") // another client, same SNAT port
	if err := tbl.Inject(a); err != nil {
		t.Fatal(err)
	}
	if err := tbl.Inject(b); !errors.Is(err, unix.EEXIST) {
		t.Errorf("Inject of a clashing reply tuple = %v, want EEXIST", err)
	}
	checkFlow(t, a, mustGet(t, tbl, a))
	if got, ok, err := tbl.Get(b.Proto, b.Orig); err != nil || ok {
		t.Errorf("clashing flow: Get = %v, %v, %v; want none", got, ok, err)
	}
}

// TestConcurrent runs Injects, Deletes, Gets and a Dump whose callback deletes, all at
// once (run with -race), and checks that the table ends as the last writer left it.
func TestConcurrent(t *testing.T) {
	ns := natNS(t, "ctcon")
	tbl := openTable(t, ns)

	flow := func(i int, member byte) Flow {
		port := uint16(20000 + i)
		return Flow{
			Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 300,
			Orig: Tuple{Src: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port), Dst: ap("10.0.0.10:80")},
			Reply: Tuple{
				Src: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, member}), 80),
				Dst: netip.AddrPortFrom(netip.MustParseAddr("10.1.0.10"), port),
			},
		}
	}
	const flows, workers = 50, 8
	errs := make(chan error, workers+1)
	for w := range workers {
		go func() {
			for i := range flows {
				f := flow(i, byte(100+w%2)) // two bindings fight over each entry
				var err error
				switch {
				case w == 0 && i%5 == 0:
					err = tbl.Delete(f)
				case w == 1:
					_, _, err = tbl.Get(f.Proto, f.Orig)
				default:
					err = tbl.Inject(f)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	go func() {
		errs <- tbl.Dump(context.Background(), func(f Flow) error {
			if f.Orig.Src.Port()%7 == 0 {
				return tbl.Delete(f)
			}
			return nil
		})
	}()
	for range workers + 1 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}

	// Settle every entry on one binding and check it.
	for i := range flows {
		f := flow(i, 101)
		if err := tbl.Inject(f); err != nil {
			t.Fatal(err)
		}
		checkFlow(t, f, mustGet(t, tbl, f))
	}
}

// TestInjectUnknownState: a TCP flow without a state (an update event for a status change
// carries none) keeps the state of the entry it updates, and creates a missing entry
// ESTABLISHED; through Inject and through InjectBatch alike.
func TestInjectUnknownState(t *testing.T) {
	ns := natNS(t, "ctnone")
	tbl := openTable(t, ns)
	inject := map[string]func(Flow) error{
		"Inject": tbl.Inject,
		"InjectBatch": func(f Flow) error {
			return errors.Join(tbl.InjectBatch([]Flow{f})...)
		},
	}
	port := uint16(41000)
	for name, in := range inject {
		t.Run(name, func(t *testing.T) {
			port++
			f := Flow{
				Proto: unix.IPPROTO_TCP, TCPState: TCPStateFinWait, Timeout: 100,
				Orig:  Tuple{Src: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), port), Dst: ap("10.0.0.10:3306")},
				Reply: Tuple{Src: ap("10.1.0.100:3306"), Dst: netip.AddrPortFrom(netip.MustParseAddr("10.1.0.10"), port)},
			}
			if err := in(f); err != nil {
				t.Fatal(err)
			}
			update := f
			update.TCPState, update.Status, update.Timeout = TCPStateNone, StatusAssured|StatusSeenReply, 200
			if err := in(update); err != nil {
				t.Fatal(err)
			}
			got := mustGet(t, tbl, f)
			if got.TCPState != TCPStateFinWait || got.Status&StatusAssured == 0 {
				t.Errorf("after an update without state: state %d status %#x, want %d with ASSURED", got.TCPState, got.Status, TCPStateFinWait)
			}
			if err := tbl.Delete(f); err != nil {
				t.Fatal(err)
			}
			if err := in(update); err != nil {
				t.Fatal(err)
			}
			if got := mustGet(t, tbl, f); got.TCPState != TCPStateEstablished {
				t.Errorf("created without state: state %d, want ESTABLISHED (%d)", got.TCPState, TCPStateEstablished)
			}
		})
	}
}
