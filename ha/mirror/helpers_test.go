package mirror

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// checkGoroutines fails the test if, once its other cleanups have run, a goroutine of this
// package is still alive (goleak-style, without the module). Call it first in a test so that its
// cleanup runs last.
func checkGoroutines(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			leaked := leakedGoroutines()
			if len(leaked) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines left running:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// leakedGoroutines returns the stacks of goroutines running this package's code, other than the
// current one and test goroutines.
func leakedGoroutines() []string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 || strings.Contains(g, "testing.tRunner(") {
			continue
		}
		if strings.Contains(g, "openappliance/appliance/ha/mirror.") {
			out = append(out, g)
		}
	}
	return out
}

// goRun runs fn in a goroutine; stop cancels its context and waits for it (at most 10s), and
// runs at cleanup if the test has not called it.
func goRun(t testing.TB, fn func(ctx context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var (
		once sync.Once
		err  error
	)
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				err = fmt.Errorf("did not return within 10s of cancellation")
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return stop
}

// waitFor polls cond until it holds, failing the test after timeout with the message that
// describe returns then.
func waitFor(t testing.TB, timeout time.Duration, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: %s", timeout, describe())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// freePort returns a TCP port that was free on ip a moment ago.
func freePort(t testing.TB, ip string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// fakeTable is an in-memory FlowWriter: the transport is real, the kernel is faked (the
// real-kernel proof lives with the kernel package).
type fakeTable struct {
	mu      sync.Mutex
	flows   map[Key]Flow
	injects map[Key]int // Inject calls per key
	fail    func(Flow) error
	// failDelete, if set, makes Delete fail for the flows it returns an error for.
	failDelete func(Flow) error
}

func newFakeTable() *fakeTable {
	return &fakeTable{flows: make(map[Key]Flow), injects: make(map[Key]int)}
}

func (ft *fakeTable) Inject(f Flow) error {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.injects[f.Key()]++
	if ft.fail != nil {
		if err := ft.fail(f); err != nil {
			return err
		}
	}
	ft.flows[f.Key()] = f
	return nil
}

func (ft *fakeTable) Delete(f Flow) error {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	if ft.failDelete != nil {
		if err := ft.failDelete(f); err != nil {
			return err
		}
	}
	delete(ft.flows, f.Key())
	return nil
}

func (ft *fakeTable) snapshot() map[Key]Flow {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return maps.Clone(ft.flows)
}

func (ft *fakeTable) injectCount(k Key) int {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return ft.injects[k]
}

// truth is the active's table as the test drives it: a change is applied here and queued on the
// Sender under one lock, as kernel events arrive in the kernel's order.
type truth struct {
	mu        sync.Mutex
	flows     map[Key]Flow
	snapshots int
	hook      func(n int) // called (unlocked) before each snapshot flow, with its index
}

func newTruth(flows ...Flow) *truth {
	tr := &truth{flows: make(map[Key]Flow)}
	for _, f := range flows {
		tr.flows[f.Key()] = f
	}
	return tr
}

func (tr *truth) upsert(s *Sender, f Flow) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.flows[f.Key()] = f
	s.Upsert(f)
}

func (tr *truth) delete(s *Sender, f Flow) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	delete(tr.flows, f.Key())
	s.Delete(f)
}

// remove changes the truth without telling the Sender (an entry that vanished while the
// stream was down and whose event was lost).
func (tr *truth) remove(k Key) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	delete(tr.flows, k)
}

func (tr *truth) get() map[Key]Flow {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return maps.Clone(tr.flows)
}

// Snapshot is a SenderConfig.Snapshot: like a kernel dump, it reads the table as it is when
// it starts and does not hold it while the flows are sent.
func (tr *truth) Snapshot(ctx context.Context, fn func(Flow) error) error {
	tr.mu.Lock()
	tr.snapshots++
	flows := make([]Flow, 0, len(tr.flows))
	for _, f := range tr.flows {
		flows = append(flows, f)
	}
	hook := tr.hook
	tr.mu.Unlock()
	for i, f := range flows {
		if err := ctx.Err(); err != nil {
			return err
		}
		if hook != nil {
			hook(i)
		}
		if err := fn(f); err != nil {
			return fmt.Errorf("dump: %w", err)
		}
	}
	return nil
}

func (tr *truth) snapshotCount() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.snapshots
}

var addrPortComparer = cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })

// flowsDiff returns a "-want +got" diff of two flow sets.
func flowsDiff(want, got map[Key]Flow) string {
	if maps.Equal(want, got) {
		return ""
	}
	// Compare by readable keys so that cmp can print them.
	s := func(m map[Key]Flow) map[string]Flow {
		out := make(map[string]Flow, len(m))
		for k, f := range m {
			out[fmt.Sprintf("%d %v->%v", k.Proto, k.Orig.Src, k.Orig.Dst)] = f
		}
		return out
	}
	return cmp.Diff(s(want), s(got), addrPortComparer)
}

// testFlow returns a distinct valid flow for each i: IPv4 for even i, IPv6 for odd i.
func testFlow(i int) Flow {
	port := uint16(1024 + i%60000)
	hi, lo := byte(i>>16), byte(i>>8)
	if i%2 == 0 {
		return Flow{
			Proto:    6,
			Orig:     Tuple{ap4(10, hi, lo, byte(i), port), ap4(192, 0, 2, 10, 443)},
			Reply:    Tuple{ap4(172, 16, 0, byte(i%7+1), 8443), ap4(172, 16, 255, 254, port)},
			TCPState: 3,
			Timeout:  uint32(i),
			Mark:     0x100,
		}
	}
	return Flow{
		Proto:    17,
		Orig:     Tuple{ap6(0x2001, 0xdb8, 1, i, port), ap6(0x2001, 0xdb8, 0xffff, 10, 53)},
		Reply:    Tuple{ap6(0xfd00, 0, 0, i%7+1, 5353), ap6(0xfd00, 0, 0xffff, 1, port)},
		Timeout:  uint32(i),
		TCPState: 0,
	}
}

func ap4(a, b, c, d byte, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{a, b, c, d}), port)
}

func ap6(a, b, c uint16, id int, port uint16) netip.AddrPort {
	var x [16]byte
	x[0], x[1], x[2], x[3], x[4], x[5] = byte(a>>8), byte(a), byte(b>>8), byte(b), byte(c>>8), byte(c)
	x[12], x[13], x[14], x[15] = byte(id>>24), byte(id>>16), byte(id>>8), byte(id)
	return netip.AddrPortFrom(netip.AddrFrom16(x), port)
}

// Snapshot is a ReceiverConfig.Snapshot over the fake kernel: the standby's own view.
func (ft *fakeTable) Snapshot(ctx context.Context, fn func(Flow) error) error {
	for _, f := range ft.snapshot() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

// drop deletes an entry behind the Receiver's back (expired, or deleted by an operator).
func (ft *fakeTable) drop(k Key) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	delete(ft.flows, k)
}

// put writes an entry behind the Receiver's back.
func (ft *fakeTable) put(f Flow) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.flows[f.Key()] = f
}

// batchTable is a fakeTable with InjectBatch; it records the size of every batch.
type batchTable struct {
	*fakeTable
	mu      sync.Mutex
	batches []int
	calls   []string // "upsert KEY" per flow and "delete KEY", in call order
	log     bool

	gate        chan struct{} // if set, each InjectBatch waits for a value from it
	inFlight    int           // InjectBatch calls under way
	maxInFlight int
}

func newBatchTable() *batchTable { return &batchTable{fakeTable: newFakeTable()} }

func (bt *batchTable) InjectBatch(flows []Flow) []error {
	bt.mu.Lock()
	bt.inFlight++
	bt.maxInFlight = max(bt.maxInFlight, bt.inFlight)
	bt.batches = append(bt.batches, len(flows))
	gate := bt.gate
	bt.mu.Unlock()
	if gate != nil {
		<-gate
	}
	defer func() {
		bt.mu.Lock()
		bt.inFlight--
		bt.mu.Unlock()
	}()
	bt.mu.Lock()
	if bt.log {
		for _, f := range flows {
			bt.calls = append(bt.calls, fmt.Sprintf("upsert %v/%d", f.Orig.Src, f.Timeout))
		}
	}
	bt.mu.Unlock()
	var errs []error
	for i, f := range flows {
		if err := bt.fakeTable.Inject(f); err != nil {
			if errs == nil {
				errs = make([]error, len(flows))
			}
			errs[i] = err
		}
	}
	return errs
}

// DeleteBatch logs "deletes N" and then each flow's delete.
func (bt *batchTable) DeleteBatch(flows []Flow) []error {
	bt.mu.Lock()
	if bt.log {
		bt.calls = append(bt.calls, fmt.Sprintf("deletes %d", len(flows)))
	}
	bt.mu.Unlock()
	var errs []error
	for i, f := range flows {
		if err := bt.Delete(f); err != nil {
			if errs == nil {
				errs = make([]error, len(flows))
			}
			errs[i] = err
		}
	}
	return errs
}

func (bt *batchTable) Delete(f Flow) error {
	bt.mu.Lock()
	if bt.log {
		bt.calls = append(bt.calls, fmt.Sprintf("delete %v", f.Orig.Src))
	}
	bt.mu.Unlock()
	return bt.fakeTable.Delete(f)
}

func (bt *batchTable) batchSizes() []int {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	return slices.Clone(bt.batches)
}

func (bt *batchTable) callLog() []string {
	bt.mu.Lock()
	defer bt.mu.Unlock()
	return slices.Clone(bt.calls)
}

// add changes the truth without telling the Sender: a flow whose event was lost.
func (tr *truth) add(f Flow) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.flows[f.Key()] = f
}
