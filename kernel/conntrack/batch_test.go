package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// mixedFlow returns the i-th of a set of distinct flows of every shape: TCP and UDP, IPv4
// and IPv6, DNAT and SNAT together or alone, and no NAT. member moves the DNAT target
// (another pool member) for the flows that have one.
func mixedFlow(i int, member byte) Flow {
	port := uint16(10000 + i)
	v4 := func(a, b, c, d byte, p uint16) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{a, b, c, d}), p)
	}
	v6 := func(last byte, p uint16) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0: 0xfd, 15: last}), p)
	}
	v6b := func(last byte, p uint16) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0: 0xfd, 1: 1, 15: last}), p)
	}
	tcp := Flow{Proto: unix.IPPROTO_TCP, TCPState: TCPStateEstablished, Timeout: 300, Mark: uint32(i)}
	udp := Flow{Proto: unix.IPPROTO_UDP, Timeout: 120, Mark: uint32(i)}
	switch i % 6 {
	case 0: // TCP, DNAT and SNAT
		f := tcp
		f.Status = StatusAssured | StatusSeenReply
		f.Orig = Tuple{v4(10, 0, 0, 1, port), v4(10, 0, 0, 10, 80)}
		f.Reply = Tuple{v4(10, 1, 0, member, 8080), v4(10, 1, 0, 10, port)}
		return f
	case 1: // TCP, DNAT only
		f := tcp
		f.Orig = Tuple{v4(10, 0, 1, 1, port), v4(10, 0, 0, 10, 80)}
		f.Reply = Tuple{v4(10, 1, 0, member, 80), v4(10, 0, 1, 1, port)}
		return f
	case 2: // UDP, DNAT and SNAT
		f := udp
		f.Orig = Tuple{v4(10, 0, 2, 1, port), v4(10, 0, 0, 10, 53)}
		f.Reply = Tuple{v4(10, 1, 0, member, 53), v4(10, 1, 0, 11, port)}
		return f
	case 3: // TCP, no NAT
		f := tcp
		f.Orig = Tuple{v4(10, 0, 3, 1, port), v4(10, 1, 0, 103, 22)}
		f.Reply = f.Orig.inverse()
		return f
	case 4: // IPv6 TCP, DNAT and SNAT
		f := tcp
		f.Orig = Tuple{v6(1, port), v6(0x10, 443)}
		f.Reply = Tuple{v6b(member, 8443), v6b(0x10, port)}
		return f
	default: // IPv6 UDP, DNAT only
		f := udp
		f.Orig = Tuple{v6(2, port), v6(0x10, 53)}
		f.Reply = Tuple{v6b(member, 53), v6(2, port)}
		return f
	}
}

// TestInjectBatchMixed injects 1000 flows of every shape in one call and reads each back:
// the kernel computed the NATed reply tuple of each from the NAT attributes.
func TestInjectBatchMixed(t *testing.T) {
	ns := natNS(t, "ctbmix")
	tbl := openTable(t, ns)
	flows := injectMixed(t, tbl, 1000)
	for i, f := range flows {
		got := mustGet(t, tbl, f)
		checkFlow(t, f, got)
		var want uint32
		if _, ok := f.DNAT(); ok {
			want |= StatusDstNAT | StatusDstNATDone
		}
		if _, ok := f.SNAT(); ok {
			want |= StatusSrcNAT | StatusSrcNATDone
		}
		if got.Status&want != want {
			t.Errorf("flow %d %v: status %#x lacks the NAT bits %#x", i, f, got.Status, want)
		}
		if f.Proto == unix.IPPROTO_TCP && i%50 == 0 {
			tcp := rawGet(t, tbl, f).ProtoInfo.TCP
			if tcp == nil || tcp.OriginalFlags>>8&tcpFlagBeLiberal == 0 || tcp.ReplyFlags>>8&tcpFlagBeLiberal == 0 {
				t.Errorf("flow %d: TCP protoinfo %+v lacks BE_LIBERAL in both directions", i, tcp)
			}
		}
	}
	if got := dumpAll(t, tbl); len(got) != len(flows) {
		t.Errorf("dump has %d entries, want %d", len(got), len(flows))
	}
}

// TestDeleteBatch deletes, in one call, half the entries of a table of 3000 (more than a
// group), flows that have no entry, and an invalid flow: only the invalid one fails, and
// exactly the other half remains.
func TestDeleteBatch(t *testing.T) {
	ns := natNS(t, "ctbdel")
	tbl := openTable(t, ns)
	flows := injectMixed(t, tbl, 3000)
	var del []Flow
	keep := map[flowKey]bool{}
	for i, f := range flows {
		if i%2 == 0 {
			del = append(del, Flow{Proto: f.Proto, Orig: f.Orig}) // the rest of f is not needed
		} else {
			keep[flowKey{f.Proto, f.Orig}] = true
		}
	}
	for i := range 10 {
		del = append(del, mixedFlow(5000+i, 100)) // no such entry
	}
	del = append(del, Flow{Proto: unix.IPPROTO_TCP}) // no tuple
	errs := tbl.DeleteBatch(del)
	if len(errs) != len(del) {
		t.Fatalf("DeleteBatch returned %d errors for %d flows, want one per flow (the invalid one failing)", len(errs), len(del))
	}
	for i, err := range errs {
		if (err != nil) != (i == len(del)-1) {
			t.Errorf("flow %d %v: error %v", i, del[i], err)
		}
	}
	got := dumpAll(t, tbl)
	if len(got) != len(keep) {
		t.Errorf("%d entries remain, want %d", len(got), len(keep))
	}
	for k := range got {
		if !keep[k] {
			t.Errorf("entry %v was to be deleted", k)
		}
	}
}

// injectMixed injects mixedFlow 0 to n-1 with InjectBatch and returns them.
func injectMixed(t *testing.T, tbl *Table, n int) []Flow {
	t.Helper()
	var flows []Flow
	for i := range n {
		flows = append(flows, mixedFlow(i, 100))
	}
	if errs := tbl.InjectBatch(flows); errs != nil {
		t.Fatalf("InjectBatch: %v", errors.Join(errs...))
	}
	return flows
}

// dumpAll returns the table's entries by original tuple.
func dumpAll(t *testing.T, tbl *Table) map[flowKey]Flow {
	t.Helper()
	got := map[flowKey]Flow{}
	if err := tbl.Dump(context.Background(), func(f Flow) error {
		got[flowKey{f.Proto, f.Orig}] = f
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestInjectBatchLikeInject applies one batch with InjectBatch in one namespace and with
// Inject, flow by flow, in another, both starting from the same entries: the errors and
// the tables must come out the same. The batch has entries that exist with the same
// binding (state, timeout, mark and status change, and a status that would clear bits),
// that exist with another binding or without SNAT, new ones, one original tuple twice,
// a reply tuple that another entry holds, a flow the kernel refuses, both new and
// existing, and an invalid one. Both ways InjectBatch starts a group are tried.
func TestInjectBatchLikeInject(t *testing.T) {
	for _, probe := range []bool{false, true} {
		t.Run(fmt.Sprintf("probe first %v", probe), func(t *testing.T) {
			nsA, nsB := natNS(t, "ctblia"), natNS(t, "ctblib")
			batchTbl, injectTbl := openTable(t, nsA), openTable(t, nsB)

			for i := range 100 {
				f := mixedFlow(i, 100)
				for _, tbl := range []*Table{batchTbl, injectTbl} {
					if err := tbl.Inject(f); err != nil {
						t.Fatal(err)
					}
				}
			}
			var batch []Flow
			for i := range 20 { // same binding, new state
				f := mixedFlow(i, 100)
				f.Timeout, f.Mark = 500, 1000+uint32(i)
				if f.Proto == unix.IPPROTO_TCP {
					f.TCPState = TCPStateFinWait
				}
				if i%2 == 0 {
					f.Status ^= StatusAssured // adds it, or asks to clear it
				}
				batch = append(batch, f)
			}
			for i := 20; i < 40; i++ { // another pool member
				batch = append(batch, mixedFlow(i, 101))
			}
			for i := 40; i < 46; i++ { // no SNAT any more
				f := mixedFlow(i, 100)
				f.Reply.Dst = f.Orig.Src
				batch = append(batch, f)
			}
			for i := 100; i < 150; i++ { // new
				batch = append(batch, mixedFlow(i, 100))
			}
			batch = append(batch,
				mixedFlow(150, 100), mixedFlow(150, 101), // new, then rebound
				mixedFlow(50, 102), mixedFlow(50, 100), // rebound, then back
			)
			clash := mixedFlow(0, 100) // another client, the reply tuple of flow 0
			clash.Orig.Src = netip.AddrPortFrom(netip.MustParseAddr("10.0.0.99"), clash.Orig.Src.Port())
			batch = append(batch, clash)
			badNew, badOld := mixedFlow(151, 100), mixedFlow(60, 100)
			badNew.TCPState, badOld.TCPState = 42, 42 // >= TCP_CONNTRACK_MAX: ERANGE (the policy)
			batch = append(batch, badNew, badOld)
			batch = append(batch, Flow{Proto: unix.IPPROTO_ICMP, Orig: tup("10.0.0.1:0", "10.0.0.2:0")})
			for i := 152; i < 160; i++ { // more new ones after the failures
				batch = append(batch, mixedFlow(i, 100))
			}

			batchTbl.mu.Lock()
			batchTbl.batch.probe = probe
			batchTbl.mu.Unlock()
			errs := batchTbl.InjectBatch(batch)
			if errs == nil {
				errs = make([]error, len(batch))
			}
			if len(errs) != len(batch) {
				t.Fatalf("InjectBatch returned %d errors for %d flows", len(errs), len(batch))
			}
			failed := 0
			for i, f := range batch {
				want := injectTbl.Inject(f)
				if fmt.Sprint(errs[i]) != fmt.Sprint(want) {
					t.Errorf("flow %d %v:\n InjectBatch: %v\n      Inject: %v", i, f, errs[i], want)
				}
				if want != nil {
					failed++
				}
			}
			if failed != 4 {
				t.Errorf("%d flows failed, want 4 (clash, two refused, one invalid)", failed)
			}
			if !errors.Is(errs[len(batch)-12], unix.EEXIST) || !errors.Is(errs[len(batch)-9], ErrInvalidFlow) {
				t.Errorf("clash: %v; invalid: %v", errs[len(batch)-12], errs[len(batch)-9])
			}

			got, want := dumpAll(t, batchTbl), dumpAll(t, injectTbl)
			brief := func(m map[flowKey]Flow) map[string]string {
				out := map[string]string{}
				for k, f := range m {
					out[protoName(k.proto)+" "+k.orig.String()] = fmt.Sprintf("%v state %d mark %d status %#x",
						f.Reply, f.TCPState, f.Mark, f.Status)
				}
				return out
			}
			if diff := cmp.Diff(brief(want), brief(got)); diff != "" {
				t.Errorf("table after InjectBatch (+) and after Inject (-):\n%s", diff)
			}
			for k, f := range got {
				if w := want[k]; f.Timeout+3 < w.Timeout || w.Timeout+3 < f.Timeout {
					t.Errorf("%v: timeout %d after InjectBatch, %d after Inject", k.orig, f.Timeout, w.Timeout)
				}
			}
		})
	}
}

// TestInjectBatchErrors proves that failing flows report their error at their index and
// do not keep the others from being injected, wherever they are in the batch.
func TestInjectBatchErrors(t *testing.T) {
	ns := natNS(t, "ctberr")
	tbl := openTable(t, ns)

	var flows []Flow
	for i := range 300 {
		flows = append(flows, mixedFlow(i, 100))
	}
	bad := map[int]error{0: unix.ERANGE, 7: ErrInvalidFlow, 150: unix.ERANGE, 299: ErrInvalidFlow}
	for i, want := range bad {
		if want == ErrInvalidFlow {
			flows[i].Proto = unix.IPPROTO_SCTP
		} else {
			flows[i].Proto, flows[i].TCPState = unix.IPPROTO_TCP, 42
		}
	}
	errs := tbl.InjectBatch(flows)
	if len(errs) != len(flows) {
		t.Fatalf("InjectBatch returned %d errors for %d flows", len(errs), len(flows))
	}
	for i, f := range flows {
		want, isBad := bad[i]
		switch {
		case isBad && !errors.Is(errs[i], want):
			t.Errorf("flow %d: %v, want %v", i, errs[i], want)
		case !isBad && errs[i] != nil:
			t.Errorf("flow %d: %v", i, errs[i])
		case !isBad:
			checkFlow(t, f, mustGet(t, tbl, f))
		}
	}
	if got := len(dumpAll(t, tbl)); got != len(flows)-len(bad) {
		t.Errorf("dump has %d entries, want %d", got, len(flows)-len(bad))
	}
	if errs := tbl.InjectBatch(nil); errs != nil {
		t.Errorf("InjectBatch(nil) = %v", errs)
	}
}

// TestInjectBatchDroppedAnswers shrinks the socket's receive buffer far below what a batch
// of answers needs: the kernel drops answers (ENOBUFS), InjectBatch sends those steps
// again in smaller sendmsgs, and every flow still ends as asked.
func TestInjectBatchDroppedAnswers(t *testing.T) {
	ns := natNS(t, "ctbdrop")
	tbl := openTable(t, ns)

	var flows []Flow
	for i := range 3000 {
		flows = append(flows, mixedFlow(i, 100))
	}
	if errs := tbl.InjectBatch(flows); errs != nil {
		t.Fatalf("InjectBatch: %v", errors.Join(errs...))
	}
	var serr error
	if err := tbl.q.raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<10)
	}); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	// Every create now answers EEXIST, every get with its entry: far more answers
	// than 32 KiB of receive buffer hold.
	tbl.mu.Lock()
	tbl.batch.probe = false
	tbl.mu.Unlock()
	for i := range flows {
		flows[i].Mark = 77
		flows[i].Timeout = 900
	}
	if errs := tbl.InjectBatch(flows); errs != nil {
		t.Fatalf("InjectBatch with a small receive buffer: %v", errors.Join(errs...))
	}
	tbl.mu.Lock()
	limit, most := tbl.batch.limit, tbl.batch.maxReqs
	tbl.mu.Unlock()
	if limit >= most {
		t.Errorf("requests per sendmsg still %d of %d: no answer was dropped?", limit, most)
	}
	for i, f := range flows {
		if i%10 == 0 {
			checkFlow(t, f, mustGet(t, tbl, f))
		}
	}
}

// TestInjectBatchEvents proves that the changes InjectBatch makes carry the Table's
// PortID, so that a standby can tell them from the kernel's own.
func TestInjectBatchEvents(t *testing.T) {
	ns := natNS(t, "ctbev")
	tbl := openTable(t, ns)
	events, _ := listen(t, ns, 1<<20)

	var batch []Flow
	var want []Event
	for i := range 10 {
		batch = append(batch, mixedFlow(i, 100))
		want = append(want, Event{Type: EventNew, Flow: batch[i]})
	}
	if errs := tbl.InjectBatch(batch); errs != nil {
		t.Fatal(errors.Join(errs...))
	}
	for _, e := range expectEvents(t, events, want...) {
		if e.PortID != tbl.PortID() {
			t.Errorf("event %v %v has port id %d, want the table's %d", e.Type, e.Flow.Orig, e.PortID, tbl.PortID())
		}
	}
}

// TestInjectBatchConcurrent runs InjectBatch calls that fight over the same entries with
// Injects, Deletes, Gets and a Dump whose callback deletes (run with -race), then settles
// every entry with one more InjectBatch and checks it.
func TestInjectBatchConcurrent(t *testing.T) {
	ns := natNS(t, "ctbcon")
	tbl := openTable(t, ns)

	const flows = 600
	batchOf := func(member byte) []Flow {
		var b []Flow
		for i := range flows {
			b = append(b, mixedFlow(i, member))
		}
		return b
	}
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				for i, err := range tbl.InjectBatch(batchOf(byte(100 + w))) {
					// Another writer may take a flow's reply tuple for a moment.
					if err != nil && !errors.Is(err, unix.EEXIST) {
						errc <- fmt.Errorf("flow %d: %w", i, err)
						return
					}
				}
			}
		}()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range flows {
			f := mixedFlow(i, 103)
			var err error
			switch i % 3 {
			case 0:
				err = tbl.Delete(f)
			case 1:
				_, _, err = tbl.Get(f.Proto, f.Orig)
			default:
				if err = tbl.Inject(f); errors.Is(err, unix.EEXIST) {
					err = nil
				}
			}
			if err != nil {
				errc <- err
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		errc <- tbl.Dump(context.Background(), func(f Flow) error {
			if f.Orig.Src.Port()%7 == 0 {
				return tbl.Delete(f)
			}
			return nil
		})
	}()
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Error(err)
		}
	}

	final := batchOf(101)
	if errs := tbl.InjectBatch(final); errs != nil {
		t.Fatal(errors.Join(errs...))
	}
	for _, f := range final {
		checkFlow(t, f, mustGet(t, tbl, f))
	}
}

// TestDumpAbandoned proves that a dump stopped early returns without reading the rest of
// the kernel's answer (a million entries take seconds), and that the socket is still in
// step for the next request, which skips that rest.
func TestDumpAbandoned(t *testing.T) {
	ns := natNS(t, "ctabn")
	tbl := openTable(t, ns)
	const n = 3000 // about 30 datagrams of a dump
	flows := injectMixed(t, tbl, n)

	stop := errors.New("stop")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		fn   func(int) error
		want error
	}{
		{"callback error", context.Background(), func(int) error { return stop }, stop},
		{"cancelled", ctx, func(int) error { cancel(); return nil }, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seen := 0
			err := tbl.Dump(tc.ctx, func(Flow) error { seen++; return tc.fn(seen) })
			if !errors.Is(err, tc.want) {
				t.Fatalf("Dump = %v, want %v", err, tc.want)
			}
			if tbl.dq.unfinished == 0 {
				t.Errorf("the dump was read to its end after %d entries (want it left to the next request)", seen)
			}
			if got := dumpAll(t, tbl); len(got) != n {
				t.Errorf("next dump: %d entries, want %d", len(got), n)
			}
			if tbl.dq.unfinished != 0 {
				t.Errorf("the next dump left answer %d unfinished", tbl.dq.unfinished)
			}
			if _, ok, err := tbl.Get(flows[0].Proto, flows[0].Orig); err != nil || !ok {
				t.Errorf("Get after the dumps: ok=%v err=%v", ok, err)
			}
		})
	}
}
